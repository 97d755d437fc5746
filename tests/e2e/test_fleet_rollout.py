"""A fleet rollout end to end: `nso-repo rollout create` against a real server (gunicorn,
SQLite) with real agents on six simulated nodes and a two-node HA group. A node whose
installer fails pushes its wave over the error threshold and the rollout pauses, with the
wave after it untouched; retry and resume finish it, through a SIGKILL of the server in the
middle of the second wave."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

from tests.support.nso_repo import RepoServer
from tests.support.processes import REPO, clean_env, log_tail
from tests.support.sim_hosts import sim
from tests.support.waiting import wait_until

from .conftest import Builds, Node, assert_node_on, running_config
from .ha_groups import assert_group_on, make_group
from .test_ha_groups import nso_repo


def rollout_state(server: RepoServer, rollout_id: int) -> dict[str, Any]:
    answer = server.api("GET", f"/rollouts/{rollout_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_rollout(
    server: RepoServer, rollout_id: int, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> Optional[dict[str, Any]]:
        nonlocal seen
        seen = rollout_state(server, rollout_id)
        return seen if done(seen) else None

    return wait_until(
        reached,
        timeout,
        0.3,
        message=f"rollout {rollout_id} never reached the state awaited",
        details=lambda: json.dumps(seen, indent=1, default=str) + "\n" + log_tail(server.log),
        ignoring=(requests.RequestException,),  # the server is being restarted
    )


@pytest.fixture
def ticking_server(tmp_path: Path, builds: Builds) -> Iterator[RepoServer]:
    """Two workers whose rollout driver ticks every second, release 6.2 published. Set up
    before the nodes, so it stops after their agents (an agent whose server is gone only
    retries until it is killed)."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = RepoServer(
        folder / "data",
        env=clean_env(PYTHONPATH=str(REPO), NSO_REPO_ROLLOUT_TICK="1"),
        workers=2,
    )
    server.start()
    try:
        server.publish("6.2", builds.installer("6.2"), builds.packages("6.2"))
        yield server
    finally:
        server.stop()


def test_a_rollout_in_waves_pauses_on_errors_and_finishes_after_retry_and_a_server_kill(
    ticking_server: RepoServer, make_node, make_cluster, make_agent, builds: Builds
) -> None:
    _run(ticking_server, make_node, make_cluster, make_agent, builds)


def _run(server: RepoServer, make_node, make_cluster, make_agent, builds: Builds) -> None:
    nodes: list[Node] = [make_node(server, "6.1") for _ in range(6)]
    group = make_group(server, make_cluster, make_agent, builds, 2)
    before = {n.name: running_config(n.host) for n in nodes}
    request = (
        "--release", "6.2", "--select", f"node:{nodes[0].name}", "--select", "all",
        "--canary", "1", "--waves", "50%,100%", "--concurrency", "3",
        "--error-threshold", "10%", "--json",
    )  # fmt: skip
    planned = nso_repo(server, "rollout", "plan", *request)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    waves = {t["name"]: t["wave"] for t in json.loads(planned.stdout)["targets"]}
    assert waves[nodes[0].name] == 0  # the named node is the canary
    assert waves[group.name] in (1, 2) and len(waves) == 7  # the group is one target
    second = {name for name, wave in waves.items() if wave == 2}
    broken = next(n for n in nodes if waves[n.name] == 1)
    broken.fault("installer-fail", "injected by the test")

    created = nso_repo(server, "rollout", "create", *request)
    assert created.returncode == 0, created.stdout + created.stderr
    rid = json.loads(created.stdout)["id"]

    paused = wait_rollout(server, rid, lambda r: r["state"] == "paused", 240)
    assert "above the error threshold of 10%" in paused["reason"], paused
    by_name = {t["name"]: t for t in paused["targets"]}
    assert by_name[nodes[0].name]["state"] == "succeeded"
    assert by_name[broken.name]["state"] == "failed"
    # Nothing of the next wave started; the broken node was left running on 6.1.
    assert all(by_name[name]["state"] == "pending" for name in second), paused
    wait_rollout(server, rid, lambda r: r["counts"]["running"] == 0, 240)
    assert broken.wait_heartbeat()["running_version"] == "6.1"
    assert "status: started" in broken.host.sh(broken.host.ncs, "--status").stdout
    shown = nso_repo(server, "node", "ls")
    assert f"assigned 6.2: failed: job {by_name[broken.name]['job_id']} failed" in shown.stdout

    # The operator fixes the host, retries the failed target and resumes.
    sim("fault", "clear", "--root", str(broken.host.root), "installer-fail")
    assert nso_repo(server, "rollout", "retry", str(rid)).returncode == 0
    assert nso_repo(server, "rollout", "resume", str(rid)).returncode == 0
    # Kill the server while the second wave runs; the rollout carries on after the restart.
    wait_rollout(
        server,
        rid,
        lambda r: any(t["state"] == "running" and t["wave"] == 2 for t in r["targets"]),
        240,
    )
    server.kill()
    time.sleep(1)
    server.start()
    done = wait_rollout(server, rid, lambda r: r["state"] not in ("running", "paused"), 400)
    assert done["state"] == "succeeded", json.dumps(done, indent=1, default=str)
    assert server.starts == 2
    for node in nodes:
        assert_node_on(node, "6.2", [p.name for p in builds.packages("6.2")], before[node.name])
        assert node.wait_heartbeat()["running_version"] == "6.2"
    assert_group_on(group, "6.2", builds)
    listed = server.api("GET", "/nodes", params={"per_page": 500}).json()["items"]
    mine = {n.name for n in nodes} | {n.name for n in group.nodes}
    assert {(n["assigned_version"], n["rollout"]["why"]) for n in listed if n["name"] in mine} == {
        ("6.2", "runs the assigned release")
    }
