"""Registering HA groups against what the members' agents report, and what a group's
membership refuses: real server, real agents, simulated clusters."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO, clean_env
from tests.support.waiting import wait_until

from .conftest import branch
from .ha_groups import ROLES, make_group


def nso_repo(server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "repo_server.cli",
            *args,
            "--url",
            server.url,
            "--token",
            server.admin,
        ],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO)),
        timeout=120,
    )


def test_a_group_that_contradicts_the_heartbeats_is_refused(
    shared_server, make_cluster, make_agent, builds
):
    hosts = make_cluster("6.1", ROLES[2], packages=builds.packages(branch("6.1")))
    hosts[1].wait_for("show high-availability status mode", "secondary")
    a, b = (make_agent(shared_server, h) for h in hosts)

    def whole() -> bool:
        ha = (a.info().get("inventory") or {}).get("ha") or {}
        return "n2" in (ha.get("connected_secondaries") or [])

    wait_until(whole, 30, 0.2, message="the primary never reported n2 connected")

    def add(*members: str) -> subprocess.CompletedProcess[str]:
        args = [f"--member={m}" for m in members]
        return nso_repo(shared_server, "group", "add", f"g-{a.name}", *args)

    swapped = add(f"{a.name}=n1:secondary", f"{b.name}=n2:primary")
    assert swapped.returncode == 1
    assert f"{a.name} is in HA mode 'primary', but the group names it the nominal secondary" in (
        swapped.stderr
    )
    wrong_id = add(f"{a.name}=n1:primary", f"{b.name}=n3:secondary")
    assert f"{b.name} is HA node 'n2', not 'n3'" in wrong_id.stderr
    assert "no connected secondary n3" in wrong_id.stderr
    two_primaries = add(f"{a.name}=n1:primary", f"{b.name}=n2:primary")
    assert "exactly one nominal primary, not 2" in two_primaries.stderr
    garbled = add(f"{a.name}=n1", f"{b.name}=n2:secondary")
    assert garbled.returncode != 0 and "NODE=HA_ID:primary" in garbled.stderr
    assert shared_server.api("GET", f"/groups/g-{a.name}").status_code == 404  # nothing kept

    added = add(f"{a.name}=n1:primary", f"{b.name}=n2:secondary")
    assert added.returncode == 0, added.stderr
    assert "(failover)" in added.stdout  # the only secondary takes over
    again = nso_repo(
        shared_server,
        "group",
        "add",
        f"h-{a.name}",
        f"--member={a.name}=n1:primary",
        f"--member={b.name}=n2:secondary",
    )
    assert again.returncode == 1 and f"member of group g-{a.name} already" in again.stderr
    audit = shared_server.api("GET", "/audit", params={"action": "group.add"}).json()
    assert any(e["target"] == f"group:g-{a.name}" for e in audit)


def test_a_member_is_upgraded_only_with_its_group(shared_server, make_cluster, make_agent, builds):
    group = make_group(shared_server, make_cluster, make_agent, builds, 3)
    primary, _, third = group.nodes
    single = shared_server.api("POST", f"/nodes/{third.name}/upgrade", json={"to": "6.2"})
    assert single.status_code == 422, single.text
    codes = [r["code"] for r in single.json()["error"]["details"]["reasons"]]
    assert "group_member" in codes

    plan = nso_repo(shared_server, "group", "plan", group.name, "--to", "6.2")
    assert plan.returncode == 0, plan.stderr
    out = plan.stdout
    assert f"group {group.name} -> 6.2, write policy safe: may proceed" in out
    # Pre-staging on every member comes before the primary is made read-only, the third
    # node is stopped (never HA-disabled) before the primary leaves, and the primary starts
    # read-only under the safe policy.
    first_read_only = out.index("<- writes stop")
    for node in group.nodes:
        assert out.index(f"&{node.name:<16} prestage") < first_read_only  # all at once
    assert out.index(f"{third.name:<16} stop") < out.index(f" {primary.name:<16} stop")
    assert "high-availability disable" not in out
    assert "read-only before anything can write" in out
    assert out.index("<- protected") < out.index("<- writes resume")

    available = shared_server.api(
        "GET", f"/groups/{group.name}/plan", params={"to": "6.2", "write_policy": "available"}
    ).json()
    marks = available["marks"]
    assert marks["writes_resume"] < marks["protected"]  # writes before the secondary is back
    bad = shared_server.api(
        "GET", f"/groups/{group.name}/plan", params={"to": "6.2", "write_policy": "fast"}
    )
    assert bad.status_code == 422

    # A read-only primary means someone else is at work: the plan refuses.
    assert primary.host.cli("high-availability read-only mode true")[1] == 0
    wait_until(
        lambda: ((primary.info().get("inventory") or {}).get("ha") or {}).get("read_only"),
        30,
        0.2,
        message="the heartbeat never showed read-only",
    )
    refused = shared_server.api("POST", f"/groups/{group.name}/upgrade", json={"to": "6.2"})
    assert refused.status_code == 422
    assert "read-only already" in refused.json()["error"]["message"]
    assert primary.host.cli("high-availability read-only mode false")[1] == 0
