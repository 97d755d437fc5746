"""Emergency patches end to end: `nso-repo patch rollout` against a real server, real agents
on simulated NSO hosts waiting on the long-poll, NSO's own listing checked over SSH. Each
test prints its trigger-to-done figure (`-s | grep PATCH-LATENCY`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.sim_hosts import SimHost, sim
from tests.support.waiting import wait_until

from .ha_groups import make_group
from .test_ha_groups import nso_repo

PATCHES = "/opt/ncs/current/lib/ncs/patches"


def upload_bundle(server: Any, folder: Path, vsn: str, patch_id: str, *modules: str) -> str:
    args = [a for m in modules for a in ("--module", m)]
    sim("make-patch", vsn, patch_id, *args, "--out", str(folder))
    name = f"nso-{vsn}-patch-{patch_id}.tar.gz"
    uploaded = nso_repo(server, "upload", str(folder / name))
    assert uploaded.returncode == 0, uploaded.stderr
    return name


def folder_state(host: SimHost) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in host.path(PATCHES).iterdir()}


def loaded(host: SimHost) -> list[list[str]]:
    """(module, release, patch id) of each row of `show ncs-state patches`."""
    out, _ = host.cli("show ncs-state patches")
    return [line.split()[:3] for line in out.splitlines()[2:] if line.strip()]


def roll_out(server: Any, *args: str) -> tuple[dict[str, Any], float]:
    """`nso-repo patch rollout ... --watch`; the rollout as the server shows it at the end
    and the seconds from the trigger to the last node's report, by the server's clock."""
    done = nso_repo(server, "patch", "rollout", *args, "--watch")
    assert done.returncode == 0, done.stdout + done.stderr
    rollout_id = done.stdout.split()[0]
    answer = server.api("GET", f"/patch-rollouts/{rollout_id}")
    assert answer.status_code == 200, answer.text
    rollout = dict(answer.json())
    began = datetime.fromisoformat(rollout["created_at"])
    last = max(datetime.fromisoformat(n["finished_at"]) for n in rollout["nodes"])
    return rollout, (last - began).total_seconds()


def test_all_affected_patches_only_the_nodes_on_its_release(
    own_server, make_node, tmp_path
) -> None:
    patched = [make_node(own_server, "6.2") for _ in range(2)]
    spared = make_node(own_server, "6.1")
    bundle = upload_bundle(own_server, tmp_path, "6.2", "CSCfix1", "ncs_fix1", "ncs_fix2")
    untouched = folder_state(spared.host)

    rollout, took = roll_out(own_server, bundle, "--all-affected")
    print(f"PATCH-LATENCY all-affected 2 nodes: {took:.2f} s (trigger to last report)")
    assert sorted(n["node"] for n in rollout["nodes"]) == sorted(n.name for n in patched)
    assert rollout["state"] == "succeeded"
    for node in patched:
        assert loaded(node.host) == [
            ["ncs_fix1", "6.2", "CSCfix1"],
            ["ncs_fix2", "6.2", "CSCfix1"],
        ]
        assert {"ncs_fix1.beam", "ncs_fix2.beam"} <= set(folder_state(node.host))
    # The 6.1 node: no job, its folder and NSO as they were.
    assert own_server.api("GET", "/jobs", params={"node": spared.name}).json() == []
    assert folder_state(spared.host) == untouched
    assert loaded(spared.host) == []

    # Its agent reports what NSO has loaded, not only the files.
    def reported() -> Any:
        patches = (patched[0].info().get("inventory") or {}).get("patches") or []
        return [p for p in patches if p.get("loaded") and p.get("patch_id") == "CSCfix1"]

    assert len(wait_until(reported, 30, 0.2, message="the inventory never showed the patch")) == 2

    # Again: nothing changes, not one file is rewritten.
    before = {n.name: folder_state(n.host) for n in patched}
    again, _ = roll_out(own_server, bundle, "--all-affected")
    assert {n["result"]["changed"] for n in again["nodes"]} == {False}
    assert {n.name: folder_state(n.host) for n in patched} == before

    removed, _ = roll_out(own_server, bundle, "--all-affected", "--remove")
    assert {n["state"] for n in removed["nodes"]} == {"succeeded"}
    for node in patched:
        assert loaded(node.host) == []
        assert not {"ncs_fix1.beam", "ncs_fix2.beam"} & set(folder_state(node.host))
    assert folder_state(spared.host) == untouched


def test_an_ha_group_is_patched_on_every_member_secondary_first(
    shared_server, make_cluster, make_agent, builds, tmp_path
) -> None:
    group = make_group(shared_server, make_cluster, make_agent, builds, 2, "6.1")
    primary, secondary = group.nodes
    bundle = upload_bundle(shared_server, tmp_path, "6.1", f"HA{group.name}", "ncs_hafix")

    rollout, took = roll_out(shared_server, bundle, "--group", group.name)
    print(f"PATCH-LATENCY group of 2: {took:.2f} s (trigger to last report)")
    [job_id] = {n["job_id"] for n in rollout["nodes"]}
    job = shared_server.job(job_id)
    assert job["state"] == "succeeded", job.get("error")
    first, second = job["steps"]
    assert (first["node"], second["node"]) == (secondary.name, primary.name)
    assert first["finished_at"] <= second["started_at"]
    for node in group.nodes:
        assert loaded(node.host) == [["ncs_hafix", "6.1", f"HA{group.name}"]]
    # Patching touched no member's role: the cluster is as it was.
    primary.host.wait_for("show high-availability status mode", "primary")
    out, _ = primary.host.cli("show high-availability")
    assert "n2" in out
