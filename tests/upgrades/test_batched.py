"""Many agents' claims and reports in one transaction (upgrades/batched.py), on SQLite and
PostgreSQL: the same rules and answers as one agent's, each change audited with its own
agent, and anything the batch should not decide left to the full path, with nothing
changed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from repo_server.auth.models import AuditEvent
from repo_server.auth.service import hash_token
from repo_server.fleet.models import Node
from repo_server.fleet.schemas import StepReportSchema
from repo_server.group_commit import ALONE
from repo_server.upgrades.batched import Report, Served, claim_many, report_many
from repo_server.upgrades.jobs import JobService
from repo_server.upgrades.models import Job, NodeHold, Step, StepReport
from repo_server.upgrades.step_payloads import artifact_refs
from tests.upgrades.builders import (
    Agent,
    agent_result,
    enroll_node,
    healthy_inventory,
    start_patch_rollout,
    start_upgrade,
)

NAMES = ("b-1", "b-2", "b-3")
STEP_KEYS = (
    *("seq", "name", "state", "attempt", "progress", "message"),
    *("log_tail", "result", "nso_seconds", "params"),
)
DONE = {"modules": ["ncs_batch"], "changed": True}


@pytest.fixture
def fleet(live, tmp_path: Path) -> dict[str, Agent]:
    """Three nodes on NSO 6.2, each with a patch job waiting for its agent."""
    agents = {name: enroll_node(live, name) for name in NAMES}
    for agent in agents.values():
        assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    start_patch_rollout(live, tmp_path, list(NAMES), "CSCbatch1", ("ncs_batch",))
    return agents


def claim(app_state, *agents: Agent) -> list[object]:
    with app_state.sessions() as session:
        return claim_many(
            session, app_state.notifier, app_state.storage, [hash_token(a.token) for a in agents]
        )


def report(app_state, *items: tuple[Agent, int, dict[str, Any]]) -> list[object]:
    made = [
        Report(hash_token(agent.token), step_id, StepReportSchema().load(body))
        for agent, step_id, body in items
    ]
    with app_state.sessions() as session:
        return report_many(session, app_state.notifier, made)


def succeeded(report_id: str = "") -> dict[str, Any]:
    return {"report_id": report_id or uuid.uuid4().hex, "state": "succeeded", "result": DONE}


def audit(live, action: str) -> list[dict[str, Any]]:
    answer = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": action, "limit": 100}
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_each_node_claims_its_own_step_once_and_each_change_names_its_agent(
    live, app_state, fleet
) -> None:
    one, two, three = fleet.values()
    answers = claim(app_state, one, two, two, Agent(live.url, "nsr_" + "x" * 43))
    first, second, again, unknown = answers
    assert isinstance(first, Served) and isinstance(second, Served)
    assert {first.actor, second.actor} == {"agent:node:b-1", "agent:node:b-2"}
    first, second = first.answer, second.answer
    assert {first["step"]["name"], second["step"]["name"]} == {"apply_patch"}
    assert first["step"]["attempt"] == second["step"]["attempt"] == 1
    assert first["step"]["job"]["id"] != second["step"]["job"]["id"]
    # The bundle rides in the step, as on the full path (inline_blobs.py).
    (bundle,) = artifact_refs(first["step"]["params"])
    assert bundle["content_base64"]
    assert again is ALONE and unknown is ALONE  # a node's second poll, a stranger's
    assert three.next() is not None  # the third node's step is still there for it
    dispatched = audit(live, "step.dispatched")
    assert sorted(e["details"]["node"] for e in dispatched) == sorted(NAMES)
    for event in dispatched:
        assert event["actor"] == f"agent:node:{event['details']['node']}", event


def test_reports_of_many_nodes_end_their_jobs_and_free_the_nodes(live, app_state, fleet) -> None:
    steps = {name: agent.next() for name, agent in fleet.items()}
    answers = report(
        app_state, *((fleet[name], step["id"], succeeded()) for name, step in steps.items())
    )
    for served, step in zip(answers, steps.values()):
        assert isinstance(served, Served), served
        answer = served.answer
        assert answer["step"] == {**answer["step"], "id": step["id"], "state": "succeeded"}
        assert answer["job"]["state"] == "succeeded"
    for agent in fleet.values():
        assert agent.next() is None  # the job ended and let go of the node
    ended = audit(live, "job.succeeded")
    assert sorted(e["details"]["node"] for e in ended) == sorted(NAMES)
    for event in ended:
        assert event["actor"] == f"agent:node:{event['details']['node']}", event


def test_a_refused_report_changes_nothing_and_goes_to_the_full_path_the_rest_settles(
    live, app_state, fleet
) -> None:
    one, two, three = fleet.values()
    first, second, third = one.next(), two.next(), three.next()
    assert first is not None and second is not None and third is not None
    bad = {**succeeded(), "result": {"modules": ["ncs_batch"], "changed": "yes"}}
    early = {**succeeded(), "state": "failed"}  # reported twice, the second time otherwise
    good, refused, settled = report(
        app_state,
        (one, first["id"], succeeded()),
        (two, second["id"], bad),
        (three, third["id"], succeeded()),
    )
    assert refused is ALONE
    assert isinstance(good, Served) and good.answer["job"]["state"] == "succeeded"
    assert isinstance(settled, Served) and settled.actor == "agent:node:b-3"
    assert sorted(e["details"]["node"] for e in audit(live, "step.succeeded")) == ["b-1", "b-3"]
    # The full path gives the refusal its error; the step is still the node's to report.
    answer = two.report(second["id"], "succeeded", result=bad["result"])
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "result_invalid"
    # A finished step reported otherwise: refused by the batch too, and by the view.
    assert report(app_state, (one, first["id"], early)) == [ALONE]
    answer = one.report(first["id"], "failed", report_id=early["report_id"])
    assert answer.status_code == 409, answer.text
    assert two.report(second["id"], "succeeded", result=DONE).status_code == 200


def test_what_the_full_path_must_answer_is_left_to_it(live, app_state, fleet) -> None:
    one, two, three = fleet.values()
    first, second, third = one.next(), two.next(), three.next()
    assert first is not None and second is not None and third is not None
    resent = succeeded()
    assert one.report(first["id"], "succeeded", report_id=resent["report_id"], result=DONE)
    answers = report(
        app_state,
        (one, first["id"], resent),  # a report_id seen before: its remembered answer
        (two, third["id"], succeeded()),  # another node's step
        (three, third["id"], succeeded()),
        (three, third["id"], succeeded()),  # the same job twice in one batch
    )
    assert answers[:2] == [ALONE, ALONE] and answers[3] is ALONE
    assert isinstance(answers[2], Served) and answers[2].answer["job"]["state"] == "succeeded"
    assert one.report(first["id"], "succeeded", report_id=resent["report_id"], result=DONE).json()[
        "step"
    ]["state"] == ("succeeded")
    stolen = two.report(third["id"], "succeeded", result=DONE)
    assert stolen.status_code == 404, stolen.text


def _rows(app_state, job_id: int) -> dict[str, Any]:
    """What the database holds of job ``job_id``: its row, its steps', its step reports',
    its holds and its audit rows, without what differs from job to job (ids, times,
    names)."""
    with app_state.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        steps = session.scalars(select(Step).where(Step.job_id == job_id)).all()
        assert all(s.started_at and s.finished_at for s in steps) and job.finished_at
        reports = session.scalars(
            select(StepReport).where(StepReport.step_id.in_([s.id for s in steps]))
        ).all()
        holds = session.scalars(select(NodeHold).where(NodeHold.job_id == job_id)).all()
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.target == f"job:{job_id}").order_by(AuditEvent.id)
        ).all()
        same = ("state", "outcome", "context", "error", "source_version", "target_version")
        return {
            "job": {key: getattr(job, key) for key in same},
            "steps": [{key: getattr(s, key) for key in STEP_KEYS} for s in steps],
            "answers": [
                {**r.answer, "step": {**r.answer["step"], "id": 0, "job_id": 0}, "job": None}
                for r in reports
            ],
            "holds": len(holds),
            "events": [
                (e.action, {k: v for k, v in e.details.items() if k not in ("job", "node")})
                for e in events
            ],
        }


def test_a_batch_writes_what_one_agents_report_writes(live, app_state, fleet) -> None:
    """The batch changes its jobs outside the session (detached.py): the rows it leaves
    are the ones the full path leaves for the same report, audit rows included."""
    one, two, _ = fleet.values()
    first, second = one.next(), two.next()
    assert first is not None and second is not None
    fields = {
        "progress": 40,
        "message": "loaded\nall",
        "log_tail": "t\x1b[31ml",
        "nso_seconds": 0.5,
    }
    with app_state.sessions() as session:
        node = session.scalar(select(Node).where(Node.name == "b-1"))
        assert node is not None
        body = StepReportSchema().load({**succeeded(), **fields})
        JobService(session, app_state.notifier).report(node, first["id"], body)
    (served,) = report(app_state, (two, second["id"], {**succeeded(), **fields}))
    assert isinstance(served, Served)
    alone, batched = _rows(app_state, first["job_id"]), _rows(app_state, second["job_id"])
    assert batched == alone
    assert batched["job"]["state"] == "succeeded" and batched["holds"] == 0
    tail = batched["steps"][0]["log_tail"]
    assert tail.startswith("t") and tail.endswith("[31ml") and "\x1b" not in tail
    assert [action for action, _ in batched["events"]][-2:] == ["step.succeeded", "job.succeeded"]


def test_a_report_that_adds_a_recovery_step_goes_alone_having_changed_nothing(
    live, app_state, enrolled, releases
) -> None:
    """A failure past the point of no return adds a recovery step, which the batch does not
    write: the report goes to the full path, and the batch changed nothing of its job, nor
    woke its node."""
    start_upgrade(live, enrolled)
    while (step := enrolled.next())["name"] != "start":
        assert enrolled.report(step["id"], "succeeded", result=agent_result(step)).ok
    failed = {"report_id": uuid.uuid4().hex, "state": "failed", "message": "status=13"}
    before = _step_states(app_state, step["job_id"])
    with app_state.sessions() as session:
        node_id = session.scalar(select(Node.id).where(Node.name == "edge-1"))
    woken = app_state.notifier.counter(node_id)
    assert report(app_state, (enrolled, step["id"], failed)) == [ALONE]
    assert _step_states(app_state, step["job_id"]) == before
    assert app_state.notifier.counter(node_id) == woken  # no wake-up for what was not written
    answer = enrolled.report(step["id"], "failed", report_id=failed["report_id"])
    assert answer.status_code == 200, answer.text
    assert enrolled.next()["name"] == "recover"


def _step_states(app_state, job_id: int) -> list[tuple[str, str]]:
    with app_state.sessions() as session:
        steps = session.scalars(select(Step).where(Step.job_id == job_id).order_by(Step.seq))
        return [(s.name, s.state) for s in steps]
