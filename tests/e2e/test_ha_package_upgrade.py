"""Package upgrades on an HA group end to end: a real server, a real agent on each member
of a simulated HA pair, `packages ha sync` on the primary (docs/ha-upgrades.md, "Package
upgrades on an HA group")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_until

from .conftest import Node, running_config
from .ha_groups import Group, ha_mode, make_group, read_only

RELOAD_FAILS = "schema upgrade failed"


@pytest.fixture
def pair(shared_server, make_cluster, make_agent, builds) -> Group:
    return make_group(shared_server, make_cluster, make_agent, builds, 2, "6.2")


def _upload(group: Group, path: Path) -> str:
    with path.open("rb") as fh:
        answer = group.server.http.put(f"{group.server.url}/api/v1/artifacts/{path.name}", data=fh)
    assert answer.status_code in (200, 201), answer.text
    return path.name


def _start(group: Group, *packages: str) -> int:
    answer = group.server.api(
        "POST", f"/groups/{group.name}/package-upgrade", json={"packages": list(packages)}
    )
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


def _loads(node: Node, package: str) -> str:
    """`package-version V, oper-status S` of ``package`` on the member, as its CLI says."""
    version = node.host.cli(f"show packages package {package} package-version")[0].split()
    status = node.host.cli(f"show packages package {package} oper-status")[0].split()
    return f"{version[-1] if version else '-'} {status[-1] if status else '-'}"


def _reported(group: Group, package: str, version: str) -> None:
    """Wait until every member's heartbeat reports ``package`` at ``version``, up: what the
    next plan reads."""
    for node in group.nodes:

        def shows(node: Node = node) -> bool:
            found = (node.info().get("inventory") or {}).get("packages") or []
            return any(
                (p["name"], p["version"], p.get("oper_status")) == (package, version, "up")
                for p in found
            )

        wait_until(shows, 30, 0.2, message=f"{node.name} never reported {package} {version}")
        # And sent since the job's last step ended: a plan refuses an older inventory.
        node.wait_reported()


def _load_paths(node: Node, count: int) -> None:
    def shows() -> bool:
        return len((node.info().get("inventory") or {}).get("load_paths") or []) == count

    wait_until(shows, 30, 0.2, message=f"{node.name} never reported {count} load paths")


def test_packages_reach_every_member_and_the_primary_stays_writable(pair, artifacts) -> None:
    primary, secondary = pair.nodes
    router = _upload(pair, artifacts.ned("6.2", "1.0.1"))
    # Load paths that differ: NSO would refuse the sync, so the plan refuses and nothing starts.
    conf = secondary.host.path("/etc/ncs/ncs.conf")
    kept = conf.read_text()
    conf.write_text(kept.replace("</load-path>", "  <dir>/opt/extra</dir>\n</load-path>"))
    _load_paths(secondary, 3)
    answer = pair.server.api(
        "POST", f"/groups/{pair.name}/package-upgrade", json={"packages": [router]}
    )
    assert answer.status_code == 422, answer.text
    assert "load paths" in answer.json()["error"]["message"]
    assert pair.server.api("GET", "/jobs", params={"node": primary.name}).json() == []
    conf.write_text(kept)
    _load_paths(secondary, 2)

    # A new NED only: packages ha sync and-add.
    ned = _upload(pair, artifacts.package("switch-nc", "1.0", "6.2", "--ned-id", "switch-nc-1.0"))
    plan = pair.server.api(
        "GET", f"/groups/{pair.name}/package-plan", params={"packages": [ned]}
    ).json()
    assert plan["ok"] and plan["sync"] == "and-add", plan
    added = primary.wait_job(_start(pair, ned), timeout=120)
    assert added["state"] == "succeeded", added.get("error")
    assert _loads(primary, "switch-nc") == _loads(secondary, "switch-nc") == "1.0 up"

    # A NED replaced: and-reload, on both members.
    _reported(pair, "switch-nc", "1.0")
    job = primary.wait_job(_start(pair, router), timeout=120)
    assert job["state"] == "succeeded", job.get("error")
    assert job["plan"]["sync"] == "and-reload"
    for node in pair.nodes:
        assert _loads(node, "router-nc") == "1.0.1 up", node.name
        assert _loads(node, "l3vpn") == "1.0 up", node.name
    assert read_only(primary) is False
    out, status = primary.host.cli("config\ndevices device after-1 address 192.0.2.9\ncommit")
    assert status == 0 and "Commit complete." in out, out
    wait_until(
        lambda: re.search(r"^devices device after-1$", running_config(secondary.host), re.M),
        20,
        0.2,
        message="a write on the primary never reached the secondary",
    )


def _fails_on_the_secondary(pair: Group, router: str) -> dict[str, Any]:
    primary, secondary = pair.nodes
    secondary.fault("ha-sync-reload-fails", RELOAD_FAILS, "--once")
    job = primary.wait_job(_start(pair, router), timeout=120)
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention"), job
    for node in pair.nodes:  # nobody reloaded: the primary waits for its secondaries
        assert _loads(node, "router-nc") == "1.0 up", node.name
    return job


def test_a_reload_that_fails_on_the_secondary_puts_read_only_back(pair, artifacts) -> None:
    primary, secondary = pair.nodes
    router = _upload(pair, artifacts.ned("6.2", "1.0.1"))

    job = _fails_on_the_secondary(pair, router)
    assert read_only(primary) is False
    error = job["error"]
    assert f"reload on n2 failed: {RELOAD_FAILS}" in error  # NSO's words
    assert "This primary did not reload: it loads router-nc 1.0" in error
    assert "Read-only mode is back to false" in error
    assert f"{primary.name} (primary) did not reload: it loads router-nc 1.0, read-only " in error
    assert "false, as before the job" in error
    assert f"{secondary.name} did not reload: it loads router-nc 1.0" in error
    assert f"'nso-repo job rollback {job['id']}'" in error
    assert "Proven backups (ncs-backup, read back): " in error

    # The way back the job named: every member on the builds it had, links and all.
    answer = pair.server.api("POST", f"/jobs/{job['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    back = primary.wait_job(int(answer.json()["id"]), timeout=120)
    assert back["state"] == "succeeded", back.get("error")
    linked = [p.resolve().name for p in primary.host.path("/var/opt/ncs/packages").iterdir()]
    assert sorted(linked) == ["ncs-6.2-l3vpn-1.0.tar.gz", "ncs-6.2-router-nc-1.0.tar.gz"]
    _reported(pair, "router-nc", "1.0")

    # An operator holds the cluster read-only: a failed sync leaves it read-only again.
    primary.host.cli("high-availability read-only mode true")
    job = _fails_on_the_secondary(pair, router)
    assert read_only(primary) is True
    assert "Read-only mode is back to true" in job["error"]
    assert "read-only true, as before the job" in job["error"]


def _fresh(node: Node) -> Node:
    """``node`` with its CLI sessions dropped: its NSO restarted under them."""
    for client in node.host.clients:
        client.close()
    node.host.clients.clear()
    return node


def test_a_failover_during_the_sync_is_said_and_read_only_is_not_set_on_a_secondary(
    pair, artifacts
) -> None:
    """The operator holds the cluster read-only; the primary's NSO restarts in the middle of
    the sync and comes back as the secondary of the failover node. The agent does not set
    read-only on that secondary as if it were the writer, and the job says the roles moved
    and that the node serving writes now is read-write where the primary was read-only."""
    primary, secondary = pair.nodes
    router = _upload(pair, artifacts.ned("6.2", "1.0.1"))
    primary.host.cli("high-availability read-only mode true")
    primary.fault("ha-sync-cli-lost", "300", "--once")  # a sync that lasts a few seconds
    job_id = _start(pair, router)
    primary.wait_step(job_id, "ha_sync_packages", ("running",), timeout=120)
    primary.host.stop()
    primary.host.start()
    job = primary.wait_job(job_id, timeout=900)
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention"), job
    assert ha_mode(_fresh(primary)) == "secondary" and ha_mode(secondary) == "primary"
    error = job["error"]
    assert "Read-only mode was NOT touched: this node is no longer the HA primary" in error
    assert f"{primary.name} (primary) " in error
    assert "HA mode secondary where the group makes it primary" in error
    assert "HA mode primary where the group makes it secondary" in error
    writer = f"read-only {str(read_only(secondary)).lower()} (before the job: true;"
    assert read_only(secondary) is False and writer in error


def test_a_removed_ned_leaves_every_member_and_the_rollback_brings_it_back(pair, artifacts) -> None:
    primary, secondary = pair.nodes
    ned = _upload(pair, artifacts.package("switch-nc", "1.0", "6.2", "--ned-id", "switch-nc-1.0"))
    added = primary.wait_job(_start(pair, ned), timeout=120)
    assert added["state"] == "succeeded", added.get("error")
    _reported(pair, "switch-nc", "1.0")

    answer = pair.server.api(
        "POST", f"/groups/{pair.name}/package-upgrade", json={"remove": ["switch-nc"]}
    )
    assert answer.status_code == 202, answer.text
    job = primary.wait_job(int(answer.json()["id"]), timeout=120)
    assert job["state"] == "succeeded", job.get("error")
    assert job["plan"]["sync"] == "and-reload"
    for node in pair.nodes:
        shown = node.host.cli("show packages package switch-nc")[0]
        assert shown.strip() == "% No entries found.", (node.name, shown)
        assert _loads(node, "router-nc") == "1.0 up", node.name
    assert read_only(primary) is False

    answer = pair.server.api("POST", f"/jobs/{job['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    back = primary.wait_job(int(answer.json()["id"]), timeout=120)
    assert back["state"] == "succeeded", back.get("error")
    assert _loads(primary, "switch-nc") == _loads(secondary, "switch-nc") == "1.0 up"


def test_a_rollback_nso_refuses_leaves_the_load_path_linking_what_nso_loads(
    pair, artifacts
) -> None:
    """The rollback of a NED's addition once a device uses it: NSO refuses the sync (it
    would delete the NED's namespace), so every member still loads the NED. The step had
    put the saved links back first; they go out again, or the primary's load path (and the
    heartbeat every later plan reads) would leave the NED out, and the next package
    upgrade would plan it away unasked."""
    primary, secondary = pair.nodes
    ned = _upload(pair, artifacts.package("switch-nc", "1.0", "6.2", "--ned-id", "switch-nc-1.0"))
    added = primary.wait_job(_start(pair, ned), timeout=120)
    assert added["state"] == "succeeded", added.get("error")
    _reported(pair, "switch-nc", "1.0")
    linked = sorted(p.name for p in primary.host.path("/var/opt/ncs/packages").iterdir())
    out, status = primary.host.cli(
        "config\n"
        "devices device sw-1 address 192.0.2.7 port 830 device-type netconf ned-id switch-nc-1.0\n"
        "devices device sw-1 config hostname sw-1\n"
        "commit"
    )
    assert status == 0, out

    answer = pair.server.api("POST", f"/jobs/{added['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    back = primary.wait_job(int(answer.json()["id"]), timeout=180)

    assert (back["state"], back["outcome"]) == ("failed", "needs_attention"), back
    assert "namespaces will be deleted" in back["error"]
    assert "NSO reloaded nothing: the links this step had put in" in back["error"]
    assert _loads(primary, "switch-nc") == _loads(secondary, "switch-nc") == "1.0 up"
    assert sorted(p.name for p in primary.host.path("/var/opt/ncs/packages").iterdir()) == linked
    assert read_only(primary) is False
    _reported(pair, "switch-nc", "1.0")  # the heartbeat still says the NED is there
