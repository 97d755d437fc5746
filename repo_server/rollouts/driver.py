"""The rollout driver: moves every active rollout forward.

`advance` is the whole state machine of a rollout, run in short transactions that each
take the rollout's row lock first: it records how its targets' jobs ended, pauses the
rollout when a wave crosses its error threshold, opens the next wave once a wave reaches
its success threshold, and starts targets' jobs (as an operator's `node upgrade` or
`group upgrade` would) while the concurrency allows, each only inside its maintenance
windows. It runs when a rollout is created or changed, when one of its jobs ends, and on
every process's ticker (`NSO_REPO_ROLLOUT_TICK` seconds), which is what notices a window
opening and carries a rollout on after a restart. Every step is idempotent, so any number
of server processes may run it at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from repo_server.auth.service import Principal, audit
from repo_server.db import utcnow
from repo_server.errors import AppError, Conflict
from repo_server.fleet.notify import Notifier
from repo_server.rollouts import windows
from repo_server.rollouts.models import ROLLOUT_ACTIVE, Rollout, RolloutTarget
from repo_server.rollouts.planning import Options
from repo_server.rollouts.service import Rollouts, acknowledged
from repo_server.upgrades.ha_jobs import GroupUpgrades
from repo_server.upgrades.jobs import JobService, PreflightFailed
from repo_server.upgrades.models import Job
from repo_server.upgrades.results import printable

log = logging.getLogger(__name__)
REASON_MAX = 2000


def _short(text: Optional[str]) -> str:
    return printable(text or "")[:REASON_MAX]


class Driver:
    def __init__(self, sessions: sessionmaker[Session], notifier: Notifier) -> None:
        self.sessions = sessions
        self.notifier = notifier

    def advance(self, rollout_id: int, now: Optional[datetime] = None) -> None:
        """Run the rollout as far as it goes now."""
        skip: set[int] = set()  # targets that cannot start in this pass
        while True:
            with self.sessions() as session:
                target_id = self._step(session, rollout_id, skip, now or utcnow())
                if target_id is None:
                    return
                self._start(session, rollout_id, target_id, skip)

    def active(self) -> list[int]:
        """Rollouts with something left to do or to record."""
        with self.sessions() as session:
            rows = session.scalars(
                select(RolloutTarget.rollout_id)
                .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
                .where((Rollout.state.in_(ROLLOUT_ACTIVE)) | (RolloutTarget.state == "running"))
                .distinct()
            )
            return sorted(set(rows))

    def tick(self) -> None:
        for rollout_id in self.active():
            try:
                self.advance(rollout_id)
            except Exception:  # one rollout's trouble must not stop the others'
                log.exception("rollout %s: the driver failed; it tries again next tick", rollout_id)

    def after_job(self, job_id: int) -> None:
        """A job ended: move on the rollout it belongs to, if any."""
        with self.sessions() as session:
            rollout_id = session.scalar(
                select(RolloutTarget.rollout_id).where(RolloutTarget.job_id == job_id)
            )
        if rollout_id is not None:
            self.advance(rollout_id)

    # -- one pass -----------------------------------------------------------------------

    def _step(
        self, session: Session, rollout_id: int, skip: set[int], now: datetime
    ) -> Optional[int]:
        """Record, judge and pick, under the rollout's lock: the id of the target to start
        next (still locked), or None after committing what changed."""
        rollout = Rollouts(session, self.notifier).locked(rollout_id)
        self._record_jobs(session, rollout, now)
        if rollout.state == "running":
            self._judge(session, rollout, now)
        if rollout.state != "running":
            session.commit()
            return None
        running = sum(1 for t in rollout.targets if t.state == "running")
        if running >= rollout.concurrency:
            session.commit()
            return None
        needed = timedelta(minutes=rollout.job_minutes)
        for target in rollout.targets:
            if target.state != "pending" or target.wave > rollout.wave or target.id in skip:
                continue
            members = _member_ids(session, target)
            verdict = windows.target_allows(
                windows.windows_of(session, members, target.group_id), now, needed
            )
            if not verdict.ok:
                skip.add(target.id)
                if target.reason != f"waiting: {verdict.reason}":
                    target.reason = f"waiting: {verdict.reason}"
                    target.updated_at = now
                continue
            return target.id
        session.commit()
        return None

    def _start(self, session: Session, rollout_id: int, target_id: int, skip: set[int]) -> None:
        """Start the target's job in the transaction that holds the rollout's lock; the job
        and the target's link to it commit together."""
        rollout = session.get(Rollout, rollout_id)
        target = session.get(RolloutTarget, target_id)
        if rollout is None or target is None:  # deleted meanwhile: nothing to start
            session.rollback()
            return
        who = Principal(token_id=None, name=f"rollout-{rollout.id}", role="rollout")
        jobs = JobService(session, self.notifier)
        options = Options(
            **{
                k: v
                for k, v in (rollout.request.get("options") or {}).items()
                if k in Options.__dataclass_fields__
            }
        ).upgrade_options()
        now = utcnow()

        def link(job: Job) -> None:
            target.state = "running"
            target.job_id = job.id
            target.attempts += 1
            target.reason = f"job {job.id} runs"
            target.updated_at = now
            job.options = {**job.options, "rollout": rollout.id}

        jobs.on_hold = link
        name, kind, version = target.name, target.kind, rollout.target_version
        try:
            if kind == "node":
                jobs.start_upgrade(name, version, options, who)
            else:
                GroupUpgrades(jobs).start(name, version, rollout.write_policy, options, who)
        except PreflightFailed as refused:
            reasons = [_reason_text(r) for r in refused.details.get("reasons") or []]
            if reasons and all("is still running on" in r for r in reasons):
                skip.add(target_id)  # busy with another job: not a refusal, a wait
                self._set(rollout_id, target_id, "pending", f"waiting: {'; '.join(reasons)}")
            else:
                self._set(rollout_id, target_id, "refused", refused.message, reasons)
        except Conflict as busy:
            # Another job holds it (an operator's, a patch): try again next pass.
            skip.add(target_id)
            self._set(rollout_id, target_id, "pending", f"waiting: {busy.message}")
        except AppError as error:
            self._set(rollout_id, target_id, "failed", f"could not start: {error.message}")

    def _set(
        self,
        rollout_id: int,
        target_id: int,
        state: str,
        reason: str,
        reasons: Optional[list[str]] = None,
    ) -> None:
        with self.sessions() as session:
            Rollouts(session, self.notifier).locked(rollout_id)
            target = session.get(RolloutTarget, target_id)
            if target is not None and target.state == "pending":
                target.state = state
                target.reason = _short(reason)
                target.reasons = [_short(r) for r in (reasons or [])][:50]
                target.updated_at = utcnow()
                if state != "pending":
                    audit(
                        session,
                        f"rollout:{rollout_id}",
                        f"rollout.target_{state}",
                        f"rollout:{rollout_id}",
                        subject=target.name,
                        reason=target.reason,
                    )
            session.commit()

    @staticmethod
    def _record_jobs(session: Session, rollout: Rollout, now: datetime) -> None:
        """Running targets whose jobs ended take their outcome."""
        running: dict[Optional[int], RolloutTarget] = {
            t.job_id: t for t in rollout.targets if t.state == "running"
        }
        ended = session.execute(
            select(Job.id, Job.state, Job.outcome, Job.error).where(
                Job.id.in_([i for i in running if i is not None]),
                Job.state.in_(("succeeded", "failed", "cancelled")),
            )
        ).all()
        for job_id, state, outcome, error in ended:
            target = running[job_id]
            target.state = "succeeded" if state == "succeeded" else "failed"
            target.reason = (
                None
                if state == "succeeded"
                else _short(
                    f"job {job_id} {state}"
                    + (f" ({outcome})" if outcome else "")
                    + f": {error or ''}"
                )
            )
            target.updated_at = now
        for linked, target in running.items():
            if linked is None:  # its job was deleted
                target.state = "failed"
                target.reason = "its job is gone"
                target.updated_at = now

    @staticmethod
    def _judge(session: Session, rollout: Rollout, now: datetime) -> None:
        """Pause on errors, open waves on successes, finish when nothing is left."""
        acked = set(acknowledged(rollout))
        last = max((t.wave for t in rollout.targets), default=0)
        wave = rollout.wave
        while True:
            for w in range(0, wave + 1):
                members = [t for t in rollout.targets if t.wave == w]
                tried = [t for t in members if t.state not in ("refused", "cancelled")]
                failed = [t for t in tried if t.state == "failed" and t.id not in acked]
                if tried and len(failed) * 100 > rollout.error_threshold * len(tried):
                    rollout.state = "paused"
                    rollout.reason = (
                        f"wave {w}: {len(failed)} of {len(tried)} targets failed "
                        f"({', '.join(t.name for t in failed[:5])}), above the error threshold "
                        f"of {rollout.error_threshold}%: look at their jobs, then retry the "
                        "failed targets or resume"
                    )
                    rollout.wave = wave
                    audit(
                        session,
                        f"rollout:{rollout.id}",
                        "rollout.pause",
                        f"rollout:{rollout.id}",
                        reason=rollout.reason,
                    )
                    return
            if wave >= last:
                break
            members = [t for t in rollout.targets if t.wave == wave]
            tried = [t for t in members if t.state not in ("refused", "cancelled")]
            done = [t for t in tried if t.state == "succeeded"]
            if not tried or len(done) * 100 >= rollout.success_threshold * len(tried):
                wave += 1
                continue
            if not any(t.state in ("pending", "running") for t in members):
                rollout.state = "paused"
                rollout.reason = (
                    f"wave {wave} finished with {len(done)} of {len(tried)} targets on the release, "
                    f"below the success threshold of {rollout.success_threshold}%: retry the "
                    "failed targets or resume"
                )
                rollout.wave = wave
                return
            break
        rollout.wave = wave
        if not any(t.state in ("pending", "running") for t in rollout.targets):
            rollout.state = (
                "succeeded"
                if all(t.state == "succeeded" for t in rollout.targets)
                else "incomplete"
            )
            rollout.finished_at = now
            rollout.reason = (
                None
                if rollout.state == "succeeded"
                else "some targets did not reach the release: retry them ('nso-repo rollout retry')"
            )
            audit(
                session,
                f"rollout:{rollout.id}",
                f"rollout.{rollout.state}",
                f"rollout:{rollout.id}",
            )


def _reason_text(reason: object) -> str:
    if isinstance(reason, dict):
        return f"{reason.get('message')} ({reason.get('remedy')})"
    return str(reason)


def _member_ids(session: Session, target: RolloutTarget) -> list[int]:
    if target.node_id is not None:
        return [target.node_id]
    from repo_server.fleet.group_models import HaGroupMember

    return list(
        session.scalars(
            select(HaGroupMember.node_id).where(HaGroupMember.group_id == target.group_id)
        )
    )


class Ticker(threading.Thread):
    """Runs the driver every ``interval`` seconds in one server process."""

    def __init__(self, driver: Driver, interval: float) -> None:
        super().__init__(name="rollout-ticker", daemon=True)
        self.driver = driver
        self.interval = interval
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.driver.tick()
            except Exception:
                log.exception("the rollout ticker failed; it tries again in %ss", self.interval)
