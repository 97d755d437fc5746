"""`packages ha sync and-reload` when a secondary cannot reload (fault `ha-sync-reload-fails`,
INVENTED: NSO's own output for it is unknown): the action fails, the primary does not
reload and is left read-write whatever it was before, as upstream documents."""

from __future__ import annotations

import shutil

from tests.support.sim_hosts import sim


def _version(node, package: str) -> str:
    return node.cli(f"show packages package {package} package-version")[0].strip()


def test_a_secondary_that_fails_its_reload_fails_the_sync_and_leaves_the_primary_writable(
    make_cluster, artifacts
):
    n1, n2 = make_cluster("6.2")
    n2.wait_for("show high-availability status mode", "secondary")
    sim("fault", "set", "--root", str(n2.root), "ha-sync-reload-fails", "schema mismatch", "--once")
    shutil.copy(artifacts.service("6.2", "1.1"), n1.path("/opt/ncs/packages"))
    assert n1.cli("software packages install package l3vpn-1.1 replace-existing")[1] == 0
    n1.cli("high-availability read-only mode true")

    out, status = n1.cli("packages ha sync and-reload { wait-commit-queue-empty }")

    assert status == 1, out
    assert "sync-result {\n    node n2\n    result true\n}" in out  # the files got there
    assert "Error: reload on n2 failed: schema mismatch" in out
    assert n1.cli("show high-availability status read-only-mode")[0].strip().endswith("false")
    assert _version(n1, "l3vpn") == _version(n2, "l3vpn") == "package-version 1.0"
    # The fault fired once: the same action now reloads both members.
    out, status = n1.cli("packages ha sync and-reload { wait-commit-queue-empty }")
    assert status == 0, out
    assert _version(n1, "l3vpn") == _version(n2, "l3vpn") == "package-version 1.1"
