"""A patch reaching a fleet at once, against a real gunicorn on SQLite and on PostgreSQL
with two processes: the woken polls claim and the reports settle in batches
(fleet/agent_lane.py), and every node still gets its step once, its job ends, and each
change in the audit names the node's own agent."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from nso_sim import beam
from tests.support.light_agents import (
    LightAgent,
    all_reported,
    beat_all,
    enroll_many,
    serving,
)
from tests.support.nso_repo import RepoServer
from tests.support.processes import REPO, clean_env
from tests.upgrades.builders import healthy_inventory

AGENTS = 80
THREADS = "8"  # batches of up to 8 per process: they form with tens of agents


def _batches(text: str, kind: str) -> tuple[float, float]:
    """(batches, requests in them) of nso_repo_agent_batch_size{kind}."""

    def value(series: str) -> float:
        pattern = rf'^nso_repo_agent_batch_size_{series}\{{kind="{kind}"\}} (\S+)$'
        found = re.search(pattern, text, re.MULTILINE)
        return float(found[1]) if found else 0.0

    return value("count"), value("sum")


@pytest.mark.parametrize("shape", ["sqlite", "postgresql"])
def test_a_fleet_patched_at_once_is_served_in_batches_each_change_its_own_agents(
    tmp_path: Path, request: pytest.FixtureRequest, shape: str
) -> None:
    env = {"PYTHONPATH": str(REPO), "NSO_REPO_THREADS": THREADS}
    workers = 1
    if shape == "postgresql":
        env["NSO_REPO_DATABASE_URL"] = request.getfixturevalue("postgres_server").create_database()
        workers = 2
    server = RepoServer(tmp_path / "data", env=clean_env(**env), workers=workers)
    server.start()
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {server.admin}"
    bundle = beam.make_patch("6.2.3", "CSCbatch2", ["ncs_batch"], tmp_path)[0]
    put = admin.put(f"{server.url}/api/v1/artifacts/{bundle.name}", data=bundle.read_bytes())
    assert put.status_code == 201, put.text

    async def applied(agent: LightAgent, step: dict[str, Any], blobs: Any) -> dict[str, Any]:
        assert blobs, "the bundle came with the step"
        return {"modules": ["ncs_batch"], "changed": True}

    async def scenario() -> tuple[list[LightAgent], dict[str, Any]]:
        names = [f"batch-{i:02d}" for i in range(AGENTS)]
        agents = await enroll_many(server.url, server.admin, names)
        await beat_all(agents, healthy_inventory("6.2.3"))
        async with serving(agents, applied) as began:
            await asyncio.sleep(2)  # every agent waits, parked
            began[0] = time.monotonic()
            started = await asyncio.to_thread(
                admin.post,
                f"{server.url}/api/v1/patch-rollouts",
                json={"patch": bundle.name, "all_affected": True},
            )
            assert started.status_code == 201, started.text
            await all_reported(agents, began, within=60)
            await asyncio.sleep(1)  # the agents are back to waiting
        await asyncio.gather(*(a.close() for a in agents))
        return agents, started.json()

    try:
        agents, started = asyncio.run(scenario())
        rollout = admin.get(f"{server.url}/api/v1/patch-rollouts/{started['id']}").json()
        audit = admin.get(f"{server.url}/api/v1/audit", params={"limit": 1000}).json()
        metrics = admin.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert sorted(name for a in agents for name, *_ in a.done) == ["apply_patch"] * AGENTS
    assert {n["state"] for n in rollout["nodes"]} == {"succeeded"}, rollout["nodes"]
    # Each node's step was handed out once, and each change names that node's agent.
    for action in ("step.dispatched", "step.succeeded", "job.succeeded"):
        events = [e for e in audit if e["action"] == action]
        assert len(events) == AGENTS, (action, len(events))
        for event in events:
            assert event["actor"] == f"agent:node:{event['details']['node']}", event
        assert len({e["details"]["node"] for e in events}) == AGENTS
    assert {e["details"]["attempt"] for e in audit if e["action"] == "step.dispatched"} == {1}
    # Served together: fewer batches than requests, every claim and report in one.
    for kind in ("claim", "report"):
        batches, served = _batches(metrics, kind)
        assert served >= AGENTS and batches < served, (kind, batches, served)
