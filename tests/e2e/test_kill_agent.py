"""The agent SIGKILLed during each step of an upgrade, then restarted: the job still ends
with the node on the target release or back on its original one, healthy, data intact, and
the job's state saying which.

The agent talks to the server through a forwarding proxy (conftest ``KillProxy``) that kills
it at an exact point: when the server hands the step out, when the agent announces it, at
one of its progress reports (after part of the work), or while NSO is half started.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.support.processes import log_tail
from tests.support.waiting import wait_until

from .conftest import FINISHED, KillRule, Node, assert_node_on, running_config


def nso_status(node: Node) -> str:
    out = node.host.sh(node.host.ncs, "--status")
    return out.stdout + out.stderr


def kill_while_nso_starts(node: Node) -> None:
    """Kill the agent once NSO reports a start-up phase (the slow-start fault makes it last)."""
    # Killed even if NSO never got there: this runs in the proxy's timer thread, and the test
    # checks NSO's status itself.
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: "status: starting" in nso_status(node) or "status: phase" in nso_status(node),
            20,
            0.05,
        )
    node.agent.kill()


KILLS = [
    KillRule("prestage", "dispatched"),
    KillRule("prestage", "installing NSO"),  # packages staged, installer not run yet
    KillRule("backup", "reading"),  # ncs-backup done, not yet proven
    KillRule("backup", "copying the package links"),  # ncs-backup proven, its extras not
    KillRule("stop", "running"),
    KillRule("stop", "dispatched"),
    KillRule("restore_point", "running"),
    KillRule("restore_point", "copying"),  # NSO stopped, the copy about to start
    KillRule("compact", "running"),
    KillRule("switch_current", "running"),
    KillRule("relink_packages", "running"),
    KillRule("start", "running"),
    KillRule("start", "starting NSO", delay=0.01),  # NSO half started (see below)
    KillRule("verify", "running"),
]


@pytest.mark.parametrize("rule", KILLS, ids=lambda r: f"{r.step}-{r.point.split()[0]}")
def test_agent_killed_during_a_step_resumes_after_restart(
    rule, shared_server, kill_proxy, make_node, builds
):
    node = make_node(shared_server, "6.1", via=kill_proxy.url)
    before = running_config(node.host)
    if rule.delay:
        node.fault("start-slow", "300", "--once")  # 3 s of real time at the suite's scale
    kill_proxy.arm(rule, (lambda: kill_while_nso_starts(node)) if rule.delay else node.agent.kill)
    job_id = node.upgrade("6.2")
    assert kill_proxy.fired.wait(60), f"never killed:\n{log_tail(node.agent.log)}"
    assert not node.agent.alive()

    # Killed during the step: the server still has it handed out, not finished.
    job = shared_server.job(job_id)
    step = next(s for s in job["steps"] if s["name"] == rule.step)
    assert step["state"] in ("dispatched", "running"), json.dumps(job, indent=1)
    assert job["state"] == "running"
    if rule.delay:
        status = nso_status(node)
        assert "status: starting" in status or "status: phase" in status, status

    node.agent.start()
    job = node.wait_job(job_id)
    assert job["state"] in FINISHED
    if job["state"] == "succeeded":
        target, branch = "6.2", "6.2"
        assert all(s["state"] == "succeeded" for s in job["steps"]), job["steps"]
    else:
        assert (job["state"], job["outcome"]) == ("failed", "rolled_back"), job
        assert job["steps"][-1]["name"] == "recover"
        target, branch = "6.1", "6.1"
    resumed = next(s for s in job["steps"] if s["name"] == rule.step)
    assert resumed["attempt"] >= 2, resumed  # handed out again to the restarted agent
    assert_node_on(node, target, [p.name for p in builds.packages(branch)], before)
    inventory = node.wait_heartbeat()
    assert inventory["running_version"] == target and inventory["status"] == "started"
    print(f"{rule}: job {job['state']} {job.get('outcome')}")
