"""HA-coordinated group upgrades end to end: a real server, a real agent on each simulated
member, and a writer committing to whichever member takes writes every ~50 ms through the
whole upgrade. The invariant across the group: every acknowledged commit is on every member
at the end. Each test prints one line of figures (`-s | grep HA-INVARIANT`)."""

from __future__ import annotations

import time

import pytest

from .ha_groups import Group, assert_group_on, lost_on, make_group, report


@pytest.fixture
def group_of(shared_server, make_cluster, make_agent, builds):
    def factory(size: int = 2, version: str = "6.1") -> Group:
        return make_group(shared_server, make_cluster, make_agent, builds, size, version)

    return factory


def upgrade_with_writer(group: Group, to: str, policy: str) -> tuple[dict, object]:
    writer = group.writer()
    writer.start()
    time.sleep(0.5)  # writes acknowledged before the job exists count too
    try:
        job_id = group.upgrade(to, policy)
        job = group.nodes[0].wait_job(job_id, timeout=240)
        time.sleep(1.0)  # and so do writes after it
    finally:
        writer.stop()
    return job, writer


@pytest.mark.parametrize(
    "size,source,target,policy",
    [
        (2, "6.1", "6.2", "safe"),
        (2, "6.1", "6.2", "available"),
        (3, "6.1", "6.2", "safe"),
        (3, "6.1", "6.1.2", "available"),
    ],
    ids=[
        "2-node-major-safe",
        "2-node-major-available",
        "3-node-major-safe",
        "3-node-maint-available",
    ],
)
def test_group_upgrade_loses_no_acknowledged_write(group_of, builds, size, source, target, policy):
    group = group_of(size, source)
    job, writer = upgrade_with_writer(group, target, policy)
    lost = lost_on(group, writer)
    report(f"{size}-node-{source}-{target}-{policy}", job, writer, lost)
    assert job["state"] == "succeeded", job.get("error")
    assert lost == {}
    assert len(writer.acknowledged) >= 20  # the writer wrote before, during and after
    # No secondary ever took a write: not the failover secondary while it served read-only
    # or stood alone (stage 6), not the third node (the guide's trap).
    assert {a.member for a in writer.acknowledged} == {0}
    assert_group_on(group, target, builds)
    windows = job["windows"]
    assert windows["write_policy"] == policy
    assert windows["write_unavailable_s"] > 0
    if policy == "safe":
        assert windows["unprotected_s"] == 0
    else:
        assert windows["unprotected_s"] > 0
    # Every member got its own steps, and every member was held by the job.
    assert {s["node"] for s in job["steps"]} == {n.name for n in group.nodes}
    assert sorted(job["nodes"]) == sorted(n.name for n in group.nodes)
