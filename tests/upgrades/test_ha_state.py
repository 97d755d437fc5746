"""What a stopped HA group upgrade says about each member, built from the steps that
succeeded (repo_server/upgrades/ha_state.py), for failures that no end-to-end test reaches:
a step of the way back itself, and a secondary that started but never joined."""

from __future__ import annotations

from repo_server.fleet.models import Node
from repo_server.upgrades import ha_recovery
from repo_server.upgrades.models import Job, Step

P, S, T = 1, 2, 3


def _job(steps: list[tuple[int, str, str, dict]], planned: int) -> Job:
    job = Job(
        kind="ha_upgrade",
        source_version="6.1",
        target_version="6.2",
        options={
            "primary": P,
            "failover": S,
            "others": [T],
            "write_policy": "safe",
            "ha_ids": {"1": "n1", "2": "n2", "3": "n3"},
        },
        plan={"step_count": planned},
        context={},
        created_by="t",
    )
    nodes = {
        i: Node(id=i, name=f"nso-{c}", created_by="t") for i, c in ((P, "a"), (S, "b"), (T, "c"))
    }
    job.nodes = list(nodes.values())
    job.steps = [
        Step(
            seq=i,
            node_id=node,
            node=nodes[node],
            name=name,
            state=state,
            params=params,
            attempt=0 if state in ("pending", "skipped") else 1,
        )
        for i, (node, name, state, params) in enumerate(steps, start=1)
    ]
    return job


def test_a_failed_step_of_the_way_back_describes_the_group_as_it_is() -> None:
    job = _job(
        [
            (P, "prestage", "succeeded", {}),
            (P, "ha_read_only", "succeeded", {"mode": True}),
            (S, "ha_read_only", "succeeded", {"mode": True}),
            (T, "backup", "succeeded", {}),
            (T, "stop", "succeeded", {}),
            (P, "backup", "failed", {}),
            (P, "stop", "skipped", {}),
            # the way back
            (P, "ha_read_only", "succeeded", {"mode": False}),
            (S, "ha_read_only", "succeeded", {"mode": False}),
            (T, "start", "succeeded", {"read_only": True}),
            (T, "ha_enable", "failed", {"mode": "secondary"}),
        ],
        planned=7,
    )
    job.steps[-1].message = "n3 did not join within 600 s"
    back = ha_recovery.way_back(job, job.steps[-1])
    assert back.outcome == "needs_attention" and not back.steps
    error = back.error
    assert "while putting the group back" in error
    assert "mixed versions" not in error and "6.2" not in error  # nothing was upgraded
    assert "nso-a runs NSO 6.1 as primary" in error
    assert "nso-c runs NSO 6.1, without its HA role, read-only" in error
    assert "on nso-c: 'high-availability enable' (it joins the primary)" in error
    assert "nso-a takes writes" in error


def test_a_secondary_that_started_but_never_joined_is_not_called_stopped() -> None:
    job = _job(
        [
            (P, "ha_read_only", "succeeded", {"mode": True}),
            (P, "stop", "succeeded", {}),
            (P, "switch_current", "succeeded", {}),
            (P, "start", "succeeded", {"read_only": True}),
            (S, "stop", "succeeded", {}),
            (P, "ha_enable", "succeeded", {"mode": "primary"}),
            (S, "switch_current", "succeeded", {}),
            (S, "start", "succeeded", {"read_only": True}),
            (S, "ha_enable", "failed", {"mode": "secondary"}),
            (T, "switch_current", "succeeded", {}),
            (T, "start", "running", {"read_only": True}),
        ],
        planned=11,
    )
    back = ha_recovery.way_back(job, job.steps[8])
    assert back.outcome == "needs_attention"
    error = back.error
    assert "nso-a runs NSO 6.2 as primary, read-only" in error
    assert "nso-b runs NSO 6.2, without its HA role, read-only" in error
    assert "nso-c" in error and "step start was under way" in error
    assert "no member takes writes" in error
    assert "on nso-b: 'high-availability enable'" in error
    assert "on nso-a, once 'show high-availability' lists every secondary" in error
