"""The server SIGKILLed mid-job and restarted on the same port with the same data: the agent
keeps retrying, and the job completes."""

from __future__ import annotations

import time

import requests

from tests.support.waiting import wait_until

from .conftest import Node, assert_node_on, running_config


def nso_status(node: Node) -> str:
    out = node.host.sh(node.host.ncs, "--status")
    return out.stdout + out.stderr


def test_server_killed_mid_job_the_agent_retries_and_the_job_completes(
    own_server, make_node, builds
):
    node = make_node(own_server, "6.1")
    before = running_config(node.host)
    node.fault("start-slow", "300", "--once")  # NSO takes 3 s: the server dies meanwhile
    job_id = node.upgrade("6.2")
    node.wait_step(job_id, "start", ("running",))
    # Kill it once NSO is starting: the agent is then past its progress reports and waits
    # on NSO alone (a progress report to a dead server would hold the step in retries).
    wait_until(
        lambda: "status: starting" in nso_status(node) or "status: phase" in nso_status(node),
        30,
        0.05,
        message="NSO never reported a start-up phase",
        details=lambda: nso_status(node),
    )
    own_server.kill()
    first_pid = node.agent.process.pid
    try:
        requests.get(f"{own_server.url}/api/v1/health", timeout=1)
        raise AssertionError("the server still answers")
    except requests.ConnectionError:
        pass
    # NSO finishes starting while the server is down: the agent's report must wait.
    wait_until(
        lambda: "status: started" in nso_status(node),
        20,
        0.1,
        message="NSO never finished starting",
        details=lambda: nso_status(node),
    )
    time.sleep(1.5)
    own_server.start()
    job = node.wait_job(job_id)
    assert job["state"] == "succeeded", job
    assert node.agent.alive() and node.agent.process.pid == first_pid
    start = next(s for s in job["steps"] if s["name"] == "start")
    assert start["attempt"] == 1, start  # its report was retried, the step not run again
    assert own_server.starts == 2
    assert_node_on(node, "6.2", [p.name for p in builds.packages("6.2")], before)
    assert node.wait_heartbeat()["running_version"] == "6.2"
