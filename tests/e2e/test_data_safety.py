"""Issue 7 end to end (server, agent and simulated host as real processes): findings that
need the whole chain to show."""

from __future__ import annotations

import os

import pytest

from .conftest import assert_node_on, running_config


def test_an_unusable_backup_fails_the_job_before_nso_is_stopped(shared_server, make_node, builds):
    """Finding 2: ncs-backup exits 0 with a truncated archive (fault backup-corrupt)."""
    node = make_node(shared_server, "6.1")
    before = running_config(node.host)
    node.fault("backup-corrupt", "--once")
    job = node.wait_job(node.upgrade("6.2"))
    assert (job["state"], job["outcome"]) == ("failed", "unchanged"), job
    assert "does not read back whole" in job["error"] and "NSO was not stopped" in job["error"]
    states = {s["name"]: s["state"] for s in job["steps"]}
    assert states["backup"] == "failed" and states["stop"] == "skipped"
    assert_node_on(node, "6.1", [p.name for p in builds.packages("6.1")], before)


@pytest.mark.parametrize("fails", [False, True], ids=["upgraded", "rolled-back"])
def test_a_load_path_linked_to_another_volume_stays_a_link(fails, shared_server, make_node, builds):
    """Finding 3: /var/opt/ncs/packages -> /srv/ncs-packages. The exchange used to swap the
    link itself for a plain folder, then fail to remove the link, leaving a staging folder."""
    node = make_node(shared_server, "6.1", extra=("--packages-dir-link", "/srv/ncs-packages"))
    load_path = node.host.path("/var/opt/ncs/packages")
    link = os.readlink(load_path)
    before = running_config(node.host)
    if fails:
        node.fault("start-exit", "13", "--once")
    job = node.wait_job(node.upgrade("6.2"))
    expected = ("failed", "rolled_back") if fails else ("succeeded", None)
    assert (job["state"], job["outcome"]) == expected, job
    assert load_path.is_symlink() and os.readlink(load_path) == link
    version = "6.1" if fails else "6.2"
    assert_node_on(node, version, [p.name for p in builds.packages(version)], before)
    for folder in (load_path.parent, node.host.path("/srv")):
        leftovers = [p.name for p in folder.iterdir() if ".new-" in p.name or ".old-" in p.name]
        assert leftovers == [], folder
