"""The invariant of issue 7, end to end: no write NSO acknowledged is ever lost.

A writer commits a unique device over the NSO CLI (real SSH) every ~50 ms, from before the
job starts until it has ended, and records every commit NSO acknowledged with
`Commit complete.`. After the job, every acknowledged device must be in
`show running-config`. Run for a successful major upgrade, a start failure that is rolled
back, and the agent SIGKILLed at each step (then restarted). Each test prints one line of
figures (`pytest tests/e2e/test_write_invariant.py -s -p no:randomly | grep INVARIANT`).
"""

from __future__ import annotations

import re
import time
from typing import Optional

import pytest

from tests.support.group_writer import GroupWriter
from tests.support.processes import log_tail

from .conftest import (
    FINISHED,
    KillProxy,
    KillRule,
    Node,
    assert_node_on,
    running_config,
)


def lost_writes(node: Node, writer: GroupWriter) -> list[str]:
    present = set(re.findall(r"^devices device (inv-\d+)$", running_config(node.host), re.M))
    return [name for name in writer.names if name not in present]


def run_with_writer(
    node: Node, to: str, proxy: Optional[KillProxy] = None
) -> tuple[dict, GroupWriter]:
    """Upgrade ``node`` while a writer commits; with ``proxy`` armed, restart the agent the
    proxy killed."""
    writer = GroupWriter([(node.host.address, node.host.cli_port)])  # one member: the node
    writer.start()
    time.sleep(0.5)  # writes acknowledged before the job exists count too
    try:
        job_id = node.upgrade(to)
        if proxy is not None:
            assert proxy.fired.wait(60), f"never killed:\n{log_tail(node.agent.log)}"
            node.agent.start()
        job = node.wait_job(job_id, timeout=180)
        time.sleep(0.5)  # and so do writes after it
    finally:
        writer.stop()
    return job, writer


def report(scenario: str, job: dict, writer: GroupWriter, lost: list[str]) -> None:
    print(
        f"INVARIANT {scenario}: job {job['state']}"
        + (f" ({job['outcome']})" if job.get("outcome") else "")
        + f", acknowledged {len(writer.acknowledged)}, lost {len(lost)},"
        f" refused {writer.refused}, unreachable {writer.unreachable}"
    )


def test_no_acknowledged_write_is_lost_in_a_successful_major_upgrade(
    shared_server, make_node, builds
):
    node = make_node(shared_server, "6.1")
    job, writer = run_with_writer(node, "6.2")
    lost = lost_writes(node, writer)
    report("major-upgrade", job, writer, lost)
    assert job["state"] == "succeeded", job
    assert lost == []
    assert len(writer.acknowledged) >= 10  # the writer really wrote, before and after
    verify = job["steps"][-1]
    assert verify["result"]["data_changed"] is True  # writes came in: not a failure


def test_no_acknowledged_write_is_lost_when_a_failed_start_is_rolled_back(
    shared_server, make_node, builds
):
    node = make_node(shared_server, "6.1")
    node.fault("start-exit", "13", "--once")
    job, writer = run_with_writer(node, "6.2")
    lost = lost_writes(node, writer)
    report("start-fails-rolled-back", job, writer, lost)
    assert (job["state"], job["outcome"]) == ("failed", "rolled_back"), job
    assert lost == []
    assert len(writer.acknowledged) >= 10  # the writer really wrote, around a long downtime


def test_no_acknowledged_write_is_lost_when_the_upgrade_rewrites_data(
    shared_server, make_node, builds, artifacts
):
    """The 6.3 build of l3vpn carries an upgrade component that rewrites every service
    instance when it replaces the 6.1 build: the data after the upgrade differs from the data
    before it by design, and that is neither a verify failure nor a reason to restore."""
    rewriting = artifacts.package("l3vpn", "1.0", "6.3", "--upgrade-set", "schema=v63")
    shared_server.publish("6.3", builds.installer("6.3"), [builds.artifacts.ned("6.3"), rewriting])
    node = make_node(shared_server, "6.1")
    assert not re.search(r"schema +v63", running_config(node.host))
    job, writer = run_with_writer(node, "6.3")
    lost = lost_writes(node, writer)
    report("major-upgrade-rewriting-data", job, writer, lost)
    assert job["state"] == "succeeded", job
    assert lost == []
    after = running_config(node.host)
    assert len(re.findall(r"^ schema +v63$", after, re.M)) == 3  # the host's 3 instances
    assert job["steps"][-1]["result"]["data_changed"] is True


KILLS = [
    KillRule("prestage", "running"),
    KillRule("backup", "running"),
    KillRule("backup", "copying the package links"),
    KillRule("stop", "running"),
    KillRule("restore_point", "running"),
    KillRule("compact", "running"),
    KillRule("switch_current", "running"),
    KillRule("relink_packages", "running"),
    KillRule("start", "running"),
    KillRule("verify", "running"),
]


@pytest.mark.parametrize("rule", KILLS, ids=lambda r: f"{r.step}-{r.point.split()[0]}")
def test_no_acknowledged_write_is_lost_when_the_agent_is_killed(
    rule, shared_server, kill_proxy, make_node, builds
):
    node = make_node(shared_server, "6.1", via=kill_proxy.url)
    before_files = [p.name for p in builds.packages("6.1")]
    kill_proxy.arm(rule, node.agent.kill)
    job, writer = run_with_writer(node, "6.2", kill_proxy)
    lost = lost_writes(node, writer)
    report(f"agent-killed-at-{rule.step}-{rule.point.split()[0]}", job, writer, lost)
    assert job["state"] in FINISHED
    assert job["state"] == "succeeded" or job["outcome"] == "rolled_back", job
    assert lost == []
    version = "6.2" if job["state"] == "succeeded" else "6.1"
    files = [p.name for p in builds.packages("6.2")] if version == "6.2" else before_files
    assert_node_on(node, version, files, running_config(node.host))
