"""Claims and reports of many agents in one transaction (repo_server/group_commit.py).

The same rules as one agent's `next` and report (jobs.py: `claimable`, `hand_out`,
`JobService.check`, `applied` and `wake_members`), on every job of the batch locked and
loaded at once, outside the session (detached.py): a few statements and one commit for the
batch instead of a dozen statements and a commit per agent.

Only the common case is served here: a known, unrevoked agent token of an existing node, a
step it may take or a new report it may make. Anything else, and any doubt, is answered
ALONE, and the caller serves that request on the full path, which gives the errors: a
refused report changes nothing, so the rest of its batch goes on. A batch that fails
otherwise changes nothing either: it is rolled back and each request goes alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.auth.models import ApiToken
from repo_server.auth.roles import roles_for
from repo_server.db import among, dialect_of, utcnow
from repo_server.errors import AppError
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier
from repo_server.fleet.service import SeenAgent, touch_many
from repo_server.group_commit import ALONE
from repo_server.storage.base import Storage
from repo_server.upgrades import detached
from repo_server.upgrades.inline_blobs import inline, live_blobs
from repo_server.upgrades.jobs import JobService, claimable, hand_out, lock_rows
from repo_server.upgrades.models import Job, Step, StepReport
from repo_server.upgrades.preflight import holders
from repo_server.upgrades.step_payloads import step_payload

AGENT_ROLES = roles_for("agent")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """A report that passed StepReportSchema: its token's digest, the step, the body."""

    token_hash: str
    step_id: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Served:
    """A request the batch answered: the answer, and who asked (Principal.actor)."""

    answer: dict[str, Any]
    actor: str


@dataclass(frozen=True)
class _Agent(SeenAgent):
    actor: str  # as Principal.actor
    node_name: str


def claim_many(
    session: Session, notifier: Notifier, storage: Storage, token_hashes: list[str]
) -> list[object]:
    """What each woken long-poll (by its token's digest) gets: `Served` with ``{"step":
    ...}`` as `GET /api/v1/agent/next` gives it, or ALONE (no step for it now, or anything
    the full path must say)."""
    agents = _agents(session, token_hashes)
    held = holders(session, [a.node_id for a in agents.values()])
    mine = [agents.get(digest) for digest in token_hashes]
    served = [a if a is not None and a.node_id in held else None for a in mine]
    served = _one_per_job(served, [held[a.node_id] if a else 0 for a in served])
    if not any(served):
        session.rollback()
        return [ALONE] * len(token_hashes)
    touch_many(session, [a for a in served if a is not None])
    locked = _locked(session, [held[a.node_id] for a in served if a is not None])
    now = utcnow()
    steps: list[Optional[Step]] = []
    actors: dict[int, str] = {}
    for agent in served:
        job = locked.get(held[agent.node_id]) if agent is not None else None
        step = claimable(job, agent.node_id, now) if job is not None and agent else None
        if step is not None and job is not None and agent is not None:
            actors[job.id] = agent.actor
            hand_out(job, step, now)
        steps.append(step)
    detached.write(session, [locked[job_id] for job_id in actors], actors)
    payloads = [step_payload(step) for step in steps if step is not None]
    live = live_blobs(session, payloads)  # before the commit: nothing after it can fail
    session.commit()
    # Storage is read once the transaction is over (S3: a request); a blob it cannot give
    # is left out of the step, which the agent then downloads.
    inlined = iter(_inlined(payload, live, storage) for payload in payloads)
    return [
        ALONE if step is None or agent is None else Served({"step": next(inlined)}, agent.actor)
        for step, agent in zip(steps, served)
    ]


def report_many(session: Session, notifier: Notifier, reports: list[Report]) -> list[object]:
    """What each report gets: `Served` with the answer `POST /api/v1/agent/steps/<id>`
    gives, or ALONE (not its node's step, a report_id seen before, a report the view would
    refuse: the full path says which)."""
    dialect = dialect_of(session)
    agents = _agents(session, [r.token_hash for r in reports])
    steps = {
        step_id: (node_id, job_id)
        for step_id, node_id, job_id in session.execute(
            select(Step.id, Step.node_id, Step.job_id).where(
                among(Step.id, {r.step_id for r in reports}, dialect)
            )
        )
    }
    report_ids = [str(r.body["report_id"]) for r in reports]
    served: list[Optional[_Agent]] = []
    taken: set[str] = set()
    for report, report_id in zip(reports, report_ids):
        agent = agents.get(report.token_hash)
        ours = agent is not None and steps.get(report.step_id, (0, 0))[0] == agent.node_id
        served.append(agent if ours and report_id not in taken else None)
        taken.add(report_id)
    served = _one_per_job(served, [steps.get(r.step_id, (0, 0))[1] for r in reports])
    if not any(served):
        session.rollback()
        return [ALONE] * len(reports)
    jobs = JobService(session, notifier)
    touch_many(session, [a for a in served if a is not None])
    locked = _locked(
        session, [steps[r.step_id][1] for r, a in zip(reports, served) if a is not None]
    )
    # Looked up under the jobs' locks, as the full path does: a report_id another process
    # has just stored for the same job is seen here, and its report goes to the view.
    seen = set(
        session.scalars(
            select(StepReport.report_id).where(among(StepReport.report_id, report_ids, dialect))
        )
    )
    answers: list[object] = []
    actors: dict[int, str] = {}
    remembered: list[dict[str, Any]] = []
    for report, agent, report_id in zip(reports, served, report_ids):
        if report_id in seen:
            agent = None  # sent before: the view answers from what it remembered
        job = locked.get(steps[report.step_id][1]) if agent is not None else None
        step = next((s for s in job.steps if s.id == report.step_id), None) if job else None
        if job is None or step is None or agent is None:
            answers.append(ALONE)
            continue
        state = report.body["state"]
        try:
            result = jobs.check(job, step, state, report.body)
            answer, remember = jobs.applied(job, step, state, report.body, result)
        except AppError:
            answers.append(ALONE)  # refused, having changed nothing: the view says why
            continue
        if not detached.writable(job):
            # A recovery step added: this job's objects are dropped unwritten (and its nodes
            # not woken), and the full path serves the report.
            answers.append(ALONE)
            continue
        jobs.wake_members(job, state)
        actors[job.id] = agent.actor
        if remember:
            remembered.append({"report_id": report_id, "step_id": step.id, "answer": answer})
        answers.append(Served(answer, agent.actor))
    detached.write(session, [locked[job_id] for job_id in actors], actors, remembered)
    session.commit()
    return answers


def _locked(session: Session, job_ids: list[int]) -> dict[int, Job]:
    """The jobs, locked, as objects of no session (detached.py)."""
    return detached.load(session, lock_rows(session, job_ids))


def _inlined(payload: dict[str, Any], live: set[str], storage: Storage) -> dict[str, Any]:
    """`inline`, which must not fail once the steps are handed out: the agent gets its step
    without the blob and downloads it."""
    try:
        return inline(payload, live, storage)
    except Exception:
        log.exception("a blob could not ride in step %s: the agent downloads it", payload["id"])
        return payload


def _one_per_job(agents: list[Optional[_Agent]], job_ids: list[int]) -> list[Optional[_Agent]]:
    """One request per job in a batch; the others go alone. The members of an HA group
    asking at once then meet the job one after the other, as on the full path, and each
    change is audited with its own actor."""
    taken: set[int] = set()
    kept: list[Optional[_Agent]] = []
    for agent, job_id in zip(agents, job_ids):
        kept.append(agent if agent is not None and job_id not in taken else None)
        if agent is not None:
            taken.add(job_id)
    return kept


def _agents(session: Session, hashes: list[str]) -> dict[str, _Agent]:
    """The agents behind these token digests: known, unrevoked, an agent's, of a node that
    exists (`require("agent")` and `node_of`, for many at once)."""
    rows = session.execute(
        select(
            ApiToken.token_hash,
            ApiToken.role,
            ApiToken.revoked_at,
            ApiToken.name,
            ApiToken.id,
            ApiToken.last_used_at,
            Node.id,
            Node.last_seen_at,
            Node.name,
        )
        .join(Node, Node.id == ApiToken.node_id)
        .where(among(ApiToken.token_hash, set(hashes), dialect_of(session)))
    )
    return {
        digest: _Agent(token_id, used, node_id, seen, f"{role}:{name}", node_name)
        for digest, role, revoked_at, name, token_id, used, node_id, seen, node_name in rows
        if role in AGENT_ROLES and revoked_at is None
    }
