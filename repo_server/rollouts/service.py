"""Fleet rollouts: create one from a plan, show it, pause, resume, cancel, retry.

Every change takes the rollout's row lock first (the UPDATE of its ``revision``), like the
driver (rollouts/driver.py), so an operator's action and the driver never interleave.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from repo_server.auth.service import Principal, audit
from repo_server.db import utcnow
from repo_server.errors import Conflict, NotFound, ValidationFailed
from repo_server.fleet.group_models import HaGroupMember
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier
from repo_server.rollouts import planning
from repo_server.rollouts.models import ROLLOUT_ACTIVE, TARGET_STATES, Rollout, RolloutTarget
from repo_server.upgrades.jobs import PreflightFailed
from repo_server.upgrades.results import printable


def lock_rollout_creation(session: Session) -> None:
    """One rollout is created at a time, so two cannot both find a node free: a
    transaction-scoped advisory lock on PostgreSQL; on SQLite any write takes the
    database's write lock (this UPDATE matches nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(0x6E736F726F6C6C)))
    else:
        session.execute(update(Rollout).where(Rollout.id == -1).values(revision=Rollout.revision))


class Rollouts:
    def __init__(self, session: Session, notifier: Notifier) -> None:
        self.session = session
        self.notifier = notifier

    def plan(
        self, release: str, selection: planning.Selection, options: planning.Options
    ) -> dict[str, Any]:
        try:
            return planning.plan(self.session, release, selection, options).as_dict()
        finally:
            self.session.rollback()

    def create(
        self,
        release: str,
        selection: planning.Selection,
        options: planning.Options,
        who: Principal,
    ) -> Rollout:
        lock_rollout_creation(self.session)
        planned = planning.plan(self.session, release, selection, options)
        attempted = [t for t in planned.targets if t.state != "succeeded"]
        if attempted and all(t.state == "refused" for t in attempted):
            self.session.rollback()
            reasons = [f"{t.name}: {r}" for t in attempted for r in t.reasons]
            raise PreflightFailed(
                f"preflight refused NSO {planned.release.nso_version} on every target: "
                + "; ".join(reasons[:20])
                + ("; ..." if len(reasons) > 20 else ""),
                reasons=reasons[:200],
            )
        opts = planned.options
        rollout = Rollout(
            release_id=planned.release.id,
            target_version=planned.release.nso_version,
            request={"selection": asdict(planned.selection), "options": asdict(opts)},
            canary=opts.canary,
            waves=opts.waves,
            success_threshold=opts.success_threshold,
            error_threshold=opts.error_threshold,
            concurrency=opts.concurrency,
            job_minutes=opts.job_minutes,
            write_policy=opts.write_policy,
            gates=opts.gates,
            created_by=who.actor,
        )
        now = utcnow()
        rollout.targets = [
            RolloutTarget(
                position=i,
                wave=t.wave,
                kind=t.kind,
                node_id=t.node_id,
                group_id=t.group_id,
                name=t.name,
                state=t.state,
                reason=t.reason,
                reasons=t.reasons,
                updated_at=now,
            )
            for i, t in enumerate(planned.targets)
        ]
        self.session.add(rollout)
        self.session.flush()
        node_ids = [i for t in planned.targets for i in t.node_ids]
        for i in range(0, len(node_ids), 1000):
            self.session.execute(
                update(Node)
                .where(Node.id.in_(node_ids[i : i + 1000]))
                .values(assigned_version=planned.release.nso_version)
            )
        audit(
            self.session,
            who.actor,
            "rollout.create",
            f"rollout:{rollout.id}",
            release=rollout.target_version,
            selection=asdict(planned.selection),
            options=asdict(opts),
            targets=len(planned.targets),
            refused=[t.name for t in planned.targets if t.state == "refused"][:100],
        )
        self.session.commit()
        return rollout

    # -- queries ------------------------------------------------------------------------

    def get(self, rollout_id: int) -> Rollout:
        rollout = self.session.get(Rollout, rollout_id)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id}: list them with 'nso-repo rollout ls'")
        return rollout

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first, each with its counts per wave and state (one GROUP BY, no target
        loaded)."""
        rollouts = list(
            self.session.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(limit))
        )
        tallies: dict[int, list[tuple[int, str, int]]] = {r.id: [] for r in rollouts}
        rows = self.session.execute(
            select(RolloutTarget.rollout_id, RolloutTarget.wave, RolloutTarget.state, func.count())
            .where(RolloutTarget.rollout_id.in_(list(tallies)))
            .group_by(RolloutTarget.rollout_id, RolloutTarget.wave, RolloutTarget.state)
        )
        for rollout_id, wave, state, count in rows:
            tallies[rollout_id].append((wave, state, count))
        return [rollout_dict(r, tallies=tallies[r.id]) for r in rollouts]

    # -- the operator's actions ---------------------------------------------------------

    def locked(self, rollout_id: int) -> Rollout:
        """Lock the rollout and load it, with its targets, after the lock."""
        self.session.execute(
            update(Rollout).where(Rollout.id == rollout_id).values(revision=Rollout.revision + 1)
        )
        rollout = self.session.scalars(
            select(Rollout)
            .where(Rollout.id == rollout_id)
            .options(selectinload(Rollout.targets))
            .execution_options(populate_existing=True)
        ).first()
        if rollout is None:
            self.session.rollback()
            raise NotFound(f"no rollout {rollout_id}: list them with 'nso-repo rollout ls'")
        return rollout

    def pause(self, rollout_id: int, reason: str, who: Principal) -> Rollout:
        rollout = self.locked(rollout_id)
        self._expect(rollout, ("running",), "paused")
        rollout.state = "paused"
        rollout.reason = f"paused by {who.actor}" + (
            f": {_reason(reason)}" if reason.strip() else ""
        )
        audit(
            self.session,
            who.actor,
            "rollout.pause",
            f"rollout:{rollout.id}",
            reason=_reason(reason),
        )
        self.session.commit()
        return rollout

    def resume(self, rollout_id: int, who: Principal) -> Rollout:
        """Start new targets again. Failures seen so far are acknowledged: only new ones
        count against the error threshold (retry them to count their outcome again)."""
        rollout = self.locked(rollout_id)
        self._expect(rollout, ("paused",), "resumed")
        problems = planning.gate_problems(self.session, rollout.gates, rollout.target_version)
        if problems:
            self.session.rollback()
            raise planning.GateNotMet(
                "the promotion gate is not met any more: " + "; ".join(problems), problems=problems
            )
        rollout.request = {
            **rollout.request,
            "acknowledged": sorted(
                {*acknowledged(rollout), *(t.id for t in rollout.targets if t.state == "failed")}
            ),
        }
        rollout.state = "running"
        rollout.reason = None
        audit(self.session, who.actor, "rollout.resume", f"rollout:{rollout.id}")
        self.session.commit()
        return rollout

    def cancel(self, rollout_id: int, reason: str, who: Principal) -> Rollout:
        """No new target starts; jobs already running finish (or recover) on their own,
        and the rollout keeps recording how they end."""
        if not reason.strip():
            raise ValidationFailed(
                "say why the rollout is cancelled (--reason): it is kept in the rollout and the audit",
                field="reason",
            )
        rollout = self.locked(rollout_id)
        self._expect(rollout, ROLLOUT_ACTIVE, "cancelled")
        now = utcnow()
        cancelled = [t for t in rollout.targets if t.state == "pending"]
        for target in cancelled:
            target.state = "cancelled"
            target.reason = f"rollout cancelled by {who.actor}: {_reason(reason)}"
            target.updated_at = now
        _unassign(self.session, cancelled, rollout.target_version)
        rollout.state = "cancelled"
        rollout.reason = f"cancelled by {who.actor}: {_reason(reason)}"
        rollout.finished_at = now
        running = [t.name for t in rollout.targets if t.state == "running"]
        audit(
            self.session,
            who.actor,
            "rollout.cancel",
            f"rollout:{rollout.id}",
            reason=_reason(reason),
            cancelled=len(cancelled),
            still_running=running[:100],
        )
        self.session.commit()
        return rollout

    def retry(self, rollout_id: int, who: Principal) -> Rollout:
        """Plan the failed and refused targets again; the rest stays as it is. A finished
        rollout runs again; a paused one stays paused until resumed."""
        # Its targets become open again: no other rollout may have taken them meanwhile
        # (the creation lock, then the same check as a new rollout's).
        lock_rollout_creation(self.session)
        rollout = self.locked(rollout_id)
        self._expect(rollout, ("running", "paused", "incomplete"), "retried")
        again = [t for t in rollout.targets if t.state in ("failed", "refused")]
        if not again:
            self.session.rollback()
            raise Conflict(f"rollout {rollout_id} has no failed or refused target to retry")
        members = _members(self.session, {t.group_id for t in again if t.group_id is not None})
        try:
            planning.check_overlap(
                self.session,
                {t.node_id for t in again if t.node_id is not None} | members,
                {t.group_id for t in again if t.group_id is not None},
                besides=rollout.id,
            )
        except planning.RolloutOverlap:
            self.session.rollback()
            raise
        now = utcnow()
        for target in again:
            target.state = "pending"
            target.reason = "retried by " + who.actor
            target.reasons = []
            target.job_id = None
            target.updated_at = now
        rollout.request = {
            **rollout.request,
            "acknowledged": [i for i in acknowledged(rollout) if i not in {t.id for t in again}],
        }
        if rollout.state == "incomplete":
            rollout.state = "running"
            rollout.finished_at = None
            rollout.reason = None
        # Their waves open again: the driver moves on from the earliest.
        rollout.wave = min([rollout.wave, *(t.wave for t in again)])
        audit(
            self.session,
            who.actor,
            "rollout.retry",
            f"rollout:{rollout.id}",
            targets=[t.name for t in again][:100],
        )
        self.session.commit()
        return rollout

    def act(self, action: str, rollout_id: int, reason: Optional[str], who: Principal) -> Rollout:
        """One of the operator's actions by name: pause, resume, cancel, retry."""
        if action == "pause":
            return self.pause(rollout_id, reason or "", who)
        if action == "resume":
            return self.resume(rollout_id, who)
        if action == "cancel":
            return self.cancel(rollout_id, reason or "", who)
        if action == "retry":
            return self.retry(rollout_id, who)
        raise ValueError(f"no rollout action {action!r}")

    def _expect(self, rollout: Rollout, states: tuple[str, ...], what: str) -> None:
        if rollout.state not in states:
            state = rollout.state
            self.session.rollback()
            raise Conflict(
                f"rollout {rollout.id} is {state}: only a {' or '.join(states)} rollout can be {what}",
                state=state,
            )


def acknowledged(rollout: Rollout) -> list[int]:
    return [int(i) for i in (rollout.request or {}).get("acknowledged") or []]


def _reason(text: str) -> str:
    return printable(text.strip())[:500]


def _members(session: Session, group_ids: set[int]) -> set[int]:
    if not group_ids:
        return set()
    return set(
        session.scalars(
            select(HaGroupMember.node_id).where(HaGroupMember.group_id.in_(sorted(group_ids)))
        )
    )


def _unassign(session: Session, targets: list[RolloutTarget], version: str) -> None:
    """The nodes of targets that will not get the release are assigned none any more."""
    node_ids = [t.node_id for t in targets if t.node_id is not None]
    node_ids += sorted(_members(session, {t.group_id for t in targets if t.group_id is not None}))
    for i in range(0, len(node_ids), 1000):
        session.execute(
            update(Node)
            .where(Node.id.in_(node_ids[i : i + 1000]), Node.assigned_version == version)
            .values(assigned_version=None)
        )


def _counts(tallies: list[tuple[int, str, int]]) -> dict[str, int]:
    out = dict.fromkeys(TARGET_STATES, 0)
    for _wave, state, count in tallies:
        out[state] += count
    return out


def wave_progress(rollout: Rollout, tallies: list[tuple[int, str, int]]) -> list[dict[str, Any]]:
    waves: dict[int, list[tuple[int, str, int]]] = {}
    for tally in tallies:
        waves.setdefault(tally[0], []).append(tally)
    return [
        {
            "wave": w,
            "canary": rollout.canary > 0 and w == 0,
            "size": sum(count for *_, count in rows),
            "open": w <= rollout.wave,
            **_counts(rows),
        }
        for w, rows in sorted(waves.items())
    ]


def rollout_dict(
    rollout: Rollout, tallies: Optional[list[tuple[int, str, int]]] = None
) -> dict[str, Any]:
    """The rollout as the API shows it: with every target, or, given its ``tallies``
    (wave, state, count), without them."""
    with_targets = tallies is None
    if tallies is None:
        tallies = [(t.wave, t.state, 1) for t in rollout.targets]
    out: dict[str, Any] = {
        "id": rollout.id,
        "url": f"/api/v1/rollouts/{rollout.id}",
        "release": rollout.target_version,
        "state": rollout.state,
        "reason": rollout.reason,
        "created_at": rollout.created_at,
        "created_by": rollout.created_by,
        "finished_at": rollout.finished_at,
        "canary": rollout.canary,
        "waves": rollout.waves,
        "success_threshold": rollout.success_threshold,
        "error_threshold": rollout.error_threshold,
        "concurrency": rollout.concurrency,
        "job_minutes": rollout.job_minutes,
        "write_policy": rollout.write_policy,
        "gates": rollout.gates,
        "selection": (rollout.request or {}).get("selection") or {},
        "open_wave": rollout.wave,
        "counts": _counts(tallies),
        "wave_progress": wave_progress(rollout, tallies),
    }
    if with_targets:
        out["targets"] = [
            {
                "name": t.name,
                "kind": t.kind,
                "wave": t.wave,
                "state": t.state,
                "job_id": t.job_id,
                "attempts": t.attempts,
                "reason": t.reason,
                "reasons": t.reasons,
                "updated_at": t.updated_at,
            }
            for t in rollout.targets
        ]
    return out


def target_of(session: Session, rollout_id: int, name: str) -> Optional[RolloutTarget]:
    return session.scalar(
        select(RolloutTarget).where(
            RolloutTarget.rollout_id == rollout_id, RolloutTarget.name == name
        )
    )
