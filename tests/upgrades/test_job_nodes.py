"""A job over a set of nodes it holds exclusively, steps bound to a node, and the job state
machine: its table, and the database's own refusals (docs/upgrades.md, "Jobs")."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from repo_server.upgrades.job_states import (
    JOB_TRANSITIONS,
    STEP_TRANSITIONS,
    IllegalTransition,
    transition,
)
from repo_server.upgrades.models import Job, NodeHold, Step
from tests.upgrades.builders import agent_result, enroll_node, healthy_inventory, start_upgrade


def _span(app_state, job_id: int, node_name: str, from_seq: int) -> None:
    """Make the job span ``node_name`` too, its steps from ``from_seq`` on bound to it: what
    an HA upgrade will plan. No API creates such a job yet."""
    from repo_server.fleet.models import Node

    with app_state.sessions() as session:
        job = session.get(Job, job_id)
        other = session.scalars(select(Node).where(Node.name == node_name)).one()
        job.nodes.append(other)
        job.holds.append(NodeHold(node_id=other.id))
        for step in job.steps:
            if step.seq >= from_seq:
                step.node_id = other.id
        session.commit()


def test_a_job_over_two_nodes_runs_its_steps_in_order_each_on_its_node(
    live, enrolled, releases, app_state
) -> None:
    other = enroll_node(live, "edge-2")
    other.heartbeat(healthy_inventory("6.1"))
    job = start_upgrade(live, enrolled)
    assert (job["node"], job["nodes"]) == ("edge-1", ["edge-1"])
    _span(app_state, job["id"], "edge-2", from_seq=2)

    # The node is held: another job for it is refused as it always was.
    refused = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-2/upgrade", json={"to": "6.2"}
    )
    assert refused.status_code == 422, refused.text
    assert "job_active" in [r["code"] for r in refused.json()["error"]["details"]["reasons"]]

    # Step 1 is edge-1's: edge-2 waits for it, and may neither report it nor fetch its blobs.
    assert other.next() is None
    first = enrolled.next()
    assert first is not None and first["seq"] == 1
    assert other.report(first["id"], "succeeded").status_code == 404
    installer = first["params"]["installer"]["sha256"]
    blob = other.http.get(f"{live.url}/api/v1/blobs/{installer}", allow_redirects=False)
    assert blob.status_code == 404
    assert enrolled.report(first["id"], "succeeded", result=agent_result(first)).ok

    # Step 2 on is edge-2's, in seq order across the job.
    assert enrolled.next() is None
    second = other.next()
    assert second is not None and second["seq"] == 2
    shown = live.session("operator").get(f"{live.url}/api/v1/jobs/{job['id']}").json()
    assert shown["nodes"] == ["edge-1", "edge-2"]
    assert [s["node"] for s in shown["steps"][:3]] == ["edge-1", "edge-2", "edge-2"]

    # A failure ends the job and lets both nodes go.
    assert other.report(second["id"], "failed", message="disk full").ok
    with app_state.sessions() as session:
        assert session.scalars(select(NodeHold)).all() == []
    assert start_upgrade(live, other, node="edge-2")["nodes"] == ["edge-2"]


def test_the_database_holds_a_node_for_one_job_only(live, enrolled, releases, app_state) -> None:
    job = start_upgrade(live, enrolled)
    with app_state.sessions() as session:
        held = session.scalars(select(NodeHold)).one()
        assert held.job_id == job["id"]
        node_id = held.node_id
        # Not through the session's identity map, which would refuse it before the database.
        session.expunge_all()
        session.add(Job(kind="upgrade", created_by="test", holds=[NodeHold(node_id=node_id)]))
        with pytest.raises(IntegrityError):
            session.flush()


@pytest.mark.parametrize("table", [Job, Step])
def test_the_database_refuses_a_state_the_machine_does_not_know(
    live, enrolled, releases, app_state, table
) -> None:
    job = start_upgrade(live, enrolled)
    with app_state.sessions() as session:
        row = session.get(Job, job["id"]) if table is Job else session.get(Job, job["id"]).steps[0]
        row.state = "paused"
        with pytest.raises(IntegrityError):
            session.flush()


def test_every_state_change_follows_the_table() -> None:
    assert set(JOB_TRANSITIONS["running"]) == {"succeeded", "failed", "cancelled"}
    step = Step(id=1, state="pending")
    transition(step, "dispatched")
    transition(step, "running")
    transition(step, "running")  # a repeated progress report: no move
    transition(step, "succeeded")
    assert step.state == "succeeded"
    with pytest.raises(IllegalTransition) as refused:
        transition(step, "running")
    assert refused.value.status == 409
    assert refused.value.details == {"kind": "step", "id": 1, "state": "succeeded", "to": "running"}
    for finished in ("succeeded", "failed", "skipped"):
        assert STEP_TRANSITIONS[finished] == frozenset()

    job = Job(id=2, state="queued", holds=[NodeHold(node_id=7)])
    with pytest.raises(IllegalTransition):
        transition(job, "succeeded")  # a job runs before it succeeds
    transition(job, "running")
    assert len(job.holds) == 1
    transition(job, "succeeded")
    assert job.holds == []


def test_the_steps_of_a_batch_run_at_the_same_time_each_node_in_order(
    live, enrolled, releases, app_state
) -> None:
    """Steps 1-2 on edge-1 and 3 on edge-2 form one batch: both nodes work at once, edge-1
    its two steps in order; step 4 (edge-2, no batch) waits for the whole batch."""
    other = enroll_node(live, "edge-2")
    other.heartbeat(healthy_inventory("6.1"))
    job = start_upgrade(live, enrolled)
    _span(app_state, job["id"], "edge-2", from_seq=3)
    with app_state.sessions() as session:
        for step in session.get(Job, job["id"]).steps:
            step.batch = 7 if step.seq <= 3 else None
        session.commit()

    first, third = enrolled.next(), other.next()
    assert (first["seq"], third["seq"]) == (1, 3)  # both handed out at once
    # edge-1's second step of the batch waits for its first; nothing skips ahead.
    early = enrolled.report(first["id"] + 1, "succeeded", result={})
    assert early.status_code == 409, early.text
    assert other.report(third["id"], "succeeded", result=agent_result(third)).ok
    assert other.next() is None  # step 4 waits for the batch: edge-1 is still at work
    assert enrolled.report(first["id"], "succeeded", result=agent_result(first)).ok
    second = enrolled.next()
    assert second["seq"] == 2
    assert other.next() is None
    assert enrolled.report(second["id"], "succeeded", result=agent_result(second)).ok
    fourth = other.next()
    assert fourth is not None and fourth["seq"] == 4
    shown = live.session("operator").get(f"{live.url}/api/v1/jobs/{job['id']}").json()
    assert [s["batch"] for s in shown["steps"][:4]] == [7, 7, 7, None]
