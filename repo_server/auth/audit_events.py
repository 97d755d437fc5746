"""Audit events that happen many times: failed authentication, job and step states.

Failed authentication is counted, not listed: one `auth.failed` row per source address and
calendar minute, updated in place (`details.count`), so a flood of bad tokens adds at most
one row a minute per address; and past MAX_ADDRESSES_PER_MINUTE addresses in a minute (an
IPv6 prefix, a botnet), new addresses are counted together in one `address:*` row. Job and step states are audited as they are flushed, inside
the transaction that changes them, so a change and its audit row commit or roll back together.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import event, false, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import get_history

from repo_server.auth.models import AuditEvent
from repo_server.db import utcnow
from repo_server.upgrades.models import Job, Step

log = logging.getLogger(__name__)

FAILED_AUTH = "auth.failed"
MAX_ADDRESSES_PER_MINUTE = 100
OVERFLOW_TARGET = "address:*"
# Job states that are outcomes; the start of a job shows as its first step's dispatch.
JOB_OUTCOMES = ("succeeded", "failed", "cancelled")
_TRACKING = "audit_job_states"


def _clean(value: str, limit: int = 200) -> str:
    """What a client sent, safe for a JSON column on every backend: no NUL, no lone
    surrogate, bounded."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8").replace("\0", "?")


def _serialise(session: Session, target: str) -> None:
    """Let one transaction at a time update the failures of ``target``, so two racing
    failures cannot both insert this minute's row."""
    if session.get_bind().dialect.name == "postgresql":
        # A counter may lose its last increments in a crash: commit without waiting for
        # the WAL flush, so a flood of bad tokens does not become a flood of fsyncs.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        key = int.from_bytes(hashlib.sha256(target.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        # SQLite: a write statement, even one that matches nothing, takes the write lock.
        session.execute(update(AuditEvent).where(false()).values(id=AuditEvent.id))


def record_failed_authentication(
    sessions: sessionmaker[Session],
    *,
    address: str,
    reason: str,
    path: str,
    now: Optional[datetime] = None,
) -> None:
    """Count one refused credential from ``address`` in this minute's `auth.failed` row.

    Runs in a transaction of its own (the request's may be rolled back). The secret that
    was sent is never recorded. A database error is logged, never raised: the caller still
    gets its 401.
    """
    now = now or utcnow()
    target = _clean(f"address:{address}", 300)
    stamp = now.isoformat()
    minute = now.replace(second=0, microsecond=0)
    try:
        with sessions() as session:
            _serialise(session, target)
            row = _row_of_this_minute(session, target, minute)
            if row is None and _addresses_this_minute(session, minute) >= MAX_ADDRESSES_PER_MINUTE:
                # Racing requests may each add their address's row past the cap: by at
                # most the number of threads, not without bound.
                target = OVERFLOW_TARGET
                _serialise(session, target)
                row = _row_of_this_minute(session, target, minute)
            if row is None:
                details: dict[str, Any] = {"count": 0, "reasons": {}, "first_at": stamp}
                row = AuditEvent(
                    at=now, actor="anonymous", action=FAILED_AUTH, target=target, details={}
                )
                session.add(row)
                # Once a minute per address, so the log cannot be flooded either.
                log.warning(
                    "failed authentication from %s (%s): counted in the audit log, action %s",
                    address,
                    reason,
                    FAILED_AUTH,
                )
            else:
                details = dict(row.details)
            reasons = dict(details.get("reasons") or {})
            reasons[reason] = int(reasons.get(reason, 0)) + 1
            # A new dict, so the JSON column sees the change.
            row.details = {
                **details,
                "count": int(details.get("count", 0)) + 1,
                "reasons": reasons,
                "last_at": stamp,
                "last_path": _clean(path),
            }
            if target == OVERFLOW_TARGET:
                row.details["last_address"] = _clean(address, 100)
            session.commit()
    except SQLAlchemyError as exc:
        log.warning(
            "could not audit a failed authentication from %s: %s", address, type(exc).__name__
        )


def _row_of_this_minute(session: Session, target: str, minute: datetime) -> Optional[AuditEvent]:
    return session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.action == FAILED_AUTH,
            AuditEvent.target == target,
            AuditEvent.at >= minute,
        )
        .order_by(AuditEvent.id)
        .limit(1)
    ).first()


def _addresses_this_minute(session: Session, minute: datetime) -> int:
    """Rows of `auth.failed` begun this minute (on the `at` index)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.at >= minute, AuditEvent.action == FAILED_AUTH)
        )
        or 0
    )


def audit_state_changes(session: Session) -> None:
    """Audit, in ``session``, every step state change (``step.<state>``) and every job
    outcome (``job.succeeded``, ``job.failed``, ``job.cancelled``) when it is flushed.

    The actor is ``session.info["actor"]`` (set by ``require`` for the request's caller),
    else ``system``. Calling it again on the same session changes nothing. (Batches of
    agents change their jobs outside the session and audit them with
    `state_change_events`: upgrades/detached.py.)
    """
    if session.info.get(_TRACKING):
        return
    session.info[_TRACKING] = True
    event.listen(session, "before_flush", _audit_flushed_states)


def _state_change(obj: Any) -> Optional[tuple[Optional[str], str]]:
    # get_history reads the one attribute; inspect(obj).attrs builds them all, per object.
    history = get_history(obj, "state")
    if not history.added:
        return None
    before = history.deleted[0] if history.deleted else None
    after = history.added[0]
    return None if before == after else (before, after)


def _audit_flushed_states(session: Session, _context: Any, _instances: Any) -> None:
    # Session.dirty is worked out anew at each read, over every object the session holds
    # (a batch of agents holds hundreds): read once.
    dirty = session.dirty
    steps = sorted((o for o in dirty if isinstance(o, Step)), key=lambda s: s.seq)
    jobs = [o for o in dirty if isinstance(o, Job)]
    actor = str(session.info.get("actor") or "system")
    actors = {job_id: actor for job_id in {s.job.id for s in steps} | {j.id for j in jobs}}
    session.add_all(AuditEvent(**row) for row in state_change_events(steps, jobs, actors))


def state_change_events(
    steps: Iterable[Step],
    jobs: Iterable[Job],
    actors: dict[int, str],
) -> list[dict[str, Any]]:
    """The audit rows (as ``audit_events`` rows) of the state changes of ``steps``, in
    their order, then of the outcomes of ``jobs``: by the actor of each job (``actors``, by
    job id)."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        if change := _state_change(step):
            before, after = change
            job = step.job
            details = {
                "job": job.id,
                "node": step.node.name,
                "step": step.name,
                "seq": step.seq,
                "attempt": step.attempt,
                "from": before,
            }
            rows.append(_event(actors[job.id], f"step.{after}", job.id, details))
    for job in jobs:
        if (change := _state_change(job)) and change[1] in JOB_OUTCOMES:
            before, after = change
            details = {
                "node": job.node_name,
                "kind": job.kind,
                "from": before,
                "outcome": job.outcome,
                "error": (job.error or "")[:500] or None,
            }
            rows.append(_event(actors[job.id], f"job.{after}", job.id, details))
    return rows


def _event(actor: str, action: str, job_id: int, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "actor": actor,
        "action": action,
        "target": f"job:{job_id}",
        "details": details,
    }
