"""What an agent is handed of a step (`GET /api/v1/agent/next`), and the blobs it may fetch
for the steps handed to its node: nothing else (least privilege, docs/agent-protocol.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.upgrades import results
from repo_server.upgrades.job_states import JOB_ACTIVE, STEP_HANDED_OUT
from repo_server.upgrades.models import Job, Step


def _paths_job(job: Job) -> int:
    """The job whose folders a job's context names: a rollback's are the rolled back job's."""
    of = (job.options or {}).get("rollback_of") if job.kind == "rollback" else None
    return of if type(of) is int else job.id


def node_may_download(session: Session, node_id: int, sha256: str) -> bool:
    """Whether a step handed out to the node now names ``sha256`` as a download: all an
    agent may fetch (least privilege; docs/agent-protocol.md)."""
    steps = session.scalars(
        select(Step)
        .join(Job, Step.job_id == Job.id)
        .where(Step.node_id == node_id, Job.state.in_(JOB_ACTIVE), Step.state.in_(STEP_HANDED_OUT))
    )
    return any(sha256 in _downloads(step.params) for step in steps)


def _downloads(params: Any) -> set[str]:
    """The sha256 of every artifact reference in step params."""
    return {ref["sha256"] for ref in artifact_refs(params)}


def is_artifact_ref(value: dict[str, Any]) -> bool:
    """Whether a dict of step params names a blob: ``{"sha256", "url", ...}``."""
    return isinstance(value.get("sha256"), str) and "url" in value


def artifact_refs(params: Any) -> list[dict[str, Any]]:
    """Every artifact reference in step params, however deep."""
    found: list[dict[str, Any]] = []
    if isinstance(params, dict):
        if is_artifact_ref(params):
            found.append(params)
        for value in params.values():
            found += artifact_refs(value)
    elif isinstance(params, list):
        for value in params:
            found += artifact_refs(value)
    return found


def step_dict(step: Step) -> dict[str, Any]:
    return {
        "id": step.id,
        "job_id": step.job_id,
        "seq": step.seq,
        "name": step.name,
        "state": step.state,
        "attempt": step.attempt,
        "progress": step.progress,
        "message": step.message,
    }


def node_context(job: Job, node_id: int) -> dict[str, Any]:
    """The job's context as the steps on ``node_id`` see it: what the steps on that node
    reported (a job over several nodes keeps each node's part apart), nothing of another
    member's."""
    by_node = job.context.get("by_node")
    if not isinstance(by_node, dict):
        return dict(job.context)
    shared = {k: v for k, v in job.context.items() if k != "by_node"}
    mine = by_node.get(str(node_id))
    return {**shared, **(mine if isinstance(mine, dict) else {})}


def step_payload(step: Step) -> dict[str, Any]:
    """What the agent gets from `next`: the step, its params and its node's context."""
    job = step.job
    return {
        **step_dict(step),
        "params": step.params,
        # As the steps reported it: a context stored by an older server may not hand a
        # later step an undeclared key or a path outside the job's folders.
        "context": results.checked_context(_paths_job(job), node_context(job, step.node_id)),
        "job": {
            "id": job.id,
            "kind": job.kind,
            "source_version": job.source_version,
            "target_version": job.target_version,
        },
    }
