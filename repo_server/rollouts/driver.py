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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from repo_server.auth.service import Principal, audit
from repo_server.db import among, dialect_of, utcnow
from repo_server.errors import AppError, Conflict
from repo_server.fleet.group_models import HaGroupMember
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier
from repo_server.rollouts import windows
from repo_server.rollouts.models import ROLLOUT_ACTIVE, Rollout, RolloutTarget
from repo_server.rollouts.planning import Options, same_version, waits
from repo_server.rollouts.service import Rollouts, acknowledged
from repo_server.upgrades.ha_jobs import GroupUpgrades
from repo_server.upgrades.jobs import JobService, PreflightFailed
from repo_server.upgrades.models import Job
from repo_server.upgrades.results import printable

log = logging.getLogger(__name__)
REASON_MAX = 2000
# A job whose agent asked for it after this time never starts (jobs.py, start_by).
LATE_START = "its maintenance window would close before the job could finish"


def _short(text: Optional[str]) -> str:
    return printable(text or "")[:REASON_MAX]


@dataclass
class Pick:
    """The target a pass starts, and when its window closes (None: it has no window)."""

    target_id: int
    closes: Optional[datetime]
    needed: timedelta


# Jobs a request that moves a rollout on starts at most; the ticker starts the rest.
REQUEST_STARTS = 25

# _step's answer after it settled targets without starting a job: judge the waves again.
AGAIN = Pick(0, None, timedelta(0))


class Driver:
    def __init__(self, sessions: sessionmaker[Session], notifier: Notifier) -> None:
        self.sessions = sessions
        self.notifier = notifier

    def advance(
        self, rollout_id: int, now: Optional[datetime] = None, starts: Optional[int] = None
    ) -> None:
        """Run the rollout as far as it goes now (``now``: the clock, for tests), starting
        at most ``starts`` jobs: a request that moves a rollout on (an operator's, an
        agent's last report) starts a few and leaves the rest to the ticker, so it answers
        in time whatever the rollout's concurrency."""
        skip: set[int] = set()  # targets that cannot start in this pass
        started = 0
        while starts is None or started < starts:
            with self.sessions() as session:
                pick = self._step(session, rollout_id, skip, now)
                if pick is None:
                    return
                if pick is not AGAIN and self._start(session, rollout_id, pick, skip):
                    started += 1

    def active(self) -> list[int]:
        """Rollouts with something left to do or to record."""
        with self.sessions() as session:
            ids = set(session.scalars(select(Rollout.id).where(Rollout.state.in_(ROLLOUT_ACTIVE))))
            ids.update(
                session.scalars(
                    select(RolloutTarget.rollout_id)
                    .where(RolloutTarget.state == "running")
                    .distinct()
                )
            )
            return sorted(ids)

    def tick(self) -> None:
        for rollout_id in self.active():
            try:
                self.advance(rollout_id)
            except Exception:  # one rollout's trouble must not stop the others'
                log.exception("rollout %s: the driver failed; it tries again next tick", rollout_id)

    def after_job(self, job_id: int) -> None:
        """A job ended: move on the rollout it belongs to, if any."""
        self.after_jobs([job_id])

    def after_jobs(self, job_ids: list[int]) -> None:
        """Jobs ended (reports served together): move on the rollouts they belong to."""
        with self.sessions() as session:
            rollout_ids = sorted(
                set(
                    session.scalars(
                        select(RolloutTarget.rollout_id).where(
                            among(RolloutTarget.job_id, job_ids, dialect_of(session))
                        )
                    )
                )
            )
        for rollout_id in rollout_ids:
            try:
                self.advance(rollout_id, starts=REQUEST_STARTS)
            except Exception:
                # The others still move on; this one at the ticker's next pass.
                log.exception("rollout %s: moving on after its jobs ended failed", rollout_id)

    # -- one pass -----------------------------------------------------------------------

    def _step(
        self, session: Session, rollout_id: int, skip: set[int], clock: Optional[datetime]
    ) -> Optional[Pick]:
        """Record, judge and pick, under the rollout's lock: the target to start next
        (the lock still held), or None after committing what changed; AGAIN after
        settling targets without a job (the waves are judged again)."""
        rollout = Rollouts(session, self.notifier).locked(rollout_id)
        now = clock or utcnow()  # read after the lock, which may have been waited for
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
        book = windows.WindowBook(
            session, {t.group_id for t in rollout.targets if t.group_id is not None}
        )
        settled = False
        for target in rollout.targets:
            if target.state != "pending" or target.wave > rollout.wave or target.id in skip:
                continue
            verdict = book.allows(target.node_id, target.group_id, now, needed)
            if not verdict.ok:
                skip.add(target.id)
                if verdict.next_start is None:
                    _mark(target, "refused", f"{verdict.reason} (the rollout's job_minutes)", now)
                    settled = True
                    audit(session, f"rollout:{rollout.id}", "rollout.target_refused",
                          f"rollout:{rollout.id}", subject=target.name, reason=target.reason)  # fmt: skip
                elif target.reason != f"waiting: {verdict.reason}":
                    target.reason = f"waiting: {verdict.reason}"
                    target.updated_at = now
                continue
            if self._already_there(session, target, rollout.target_version):
                _mark(target, "succeeded", f"runs {rollout.target_version} already", now)
                settled = True
                continue
            return Pick(target.id, verdict.closes, needed)
        session.commit()
        return AGAIN if settled else None

    @staticmethod
    def _already_there(session: Session, target: RolloutTarget, version: str) -> bool:
        """Every node of the target runs the release now (upgraded outside the rollout)."""
        if target.node_id is not None:
            node_ids = [target.node_id]
        else:
            node_ids = list(
                session.scalars(
                    select(HaGroupMember.node_id).where(HaGroupMember.group_id == target.group_id)
                )
            )
        running = list(session.scalars(select(Node.running_version).where(Node.id.in_(node_ids))))
        return bool(running) and all(same_version(r, version) for r in running)

    def _start(self, session: Session, rollout_id: int, pick: Pick, skip: set[int]) -> bool:
        """Start the target's job in the transaction that holds the rollout's lock; the job
        and the target's link to it commit together. Whether a job started."""
        rollout = session.get(Rollout, rollout_id)
        target = session.get(RolloutTarget, pick.target_id)
        if rollout is None or target is None:  # deleted meanwhile: nothing to start
            session.rollback()
            return False
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
        late: dict[str, Any] = {}
        if pick.closes is not None:
            # The agent may be away: a job that has not begun by then never does.
            late = {"start_by": (pick.closes - pick.needed).isoformat(), "start_by_why": LATE_START}

        def link(job: Job) -> None:
            target.state = "running"
            target.job_id = job.id
            target.attempts += 1
            target.reason = f"job {job.id} runs"
            target.updated_at = now
            job.options = {**job.options, "rollout": rollout.id, **late}

        jobs.on_hold = link
        jobs.audit_refusals = False  # the target's state says it, pass after pass
        name, kind, version = target.name, target.kind, rollout.target_version
        target_id = pick.target_id
        try:
            if kind == "node":
                jobs.start_upgrade(name, version, options, who)
            else:
                GroupUpgrades(jobs).start(name, version, rollout.write_policy, options, who)
            return True
        except PreflightFailed as refused:
            session.rollback()
            reasons = [_reason_text(r) for r in refused.details.get("reasons") or []]
            if waits(reasons):
                skip.add(target_id)  # busy with another job, or just done: a wait
                self._set(rollout_id, target_id, "pending", f"waiting: {'; '.join(reasons)}")
            else:
                self._set(rollout_id, target_id, "refused", refused.message, reasons)
        except Conflict as busy:
            # Another job holds it (an operator's, a patch): try again next pass.
            session.rollback()
            skip.add(target_id)
            self._set(rollout_id, target_id, "pending", f"waiting: {busy.message}")
        except AppError as error:
            session.rollback()
            skip.add(target_id)
            self._set(rollout_id, target_id, "failed", f"could not start: {error.message}")
        except Exception as error:  # a bug must not hold every later target back
            session.rollback()
            skip.add(target_id)
            log.exception("rollout %s: starting %s failed", rollout_id, name)
            self._set(rollout_id, target_id, "failed", f"could not start (server error): {error!r}")
        return False

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
                _mark(target, state, reason, utcnow())
                target.reasons = [_short(r) for r in (reasons or [])][:50]
                if state != "pending":
                    audit(session, f"rollout:{rollout_id}", f"rollout.target_{state}",
                          f"rollout:{rollout_id}", subject=target.name, reason=target.reason)  # fmt: skip
            session.commit()

    @staticmethod
    def _record_jobs(session: Session, rollout: Rollout, now: datetime) -> None:
        """Running targets whose jobs ended take their outcome; a job that never began
        (its agent came back after its window) leaves its target waiting again."""
        running: dict[Optional[int], RolloutTarget] = {
            t.job_id: t for t in rollout.targets if t.state == "running"
        }
        ended = session.execute(
            select(Job.id, Job.state, Job.outcome, Job.error, Job.started_at, Job.options).where(
                Job.id.in_([i for i in running if i is not None]),
                Job.state.in_(("succeeded", "failed", "cancelled")),
            )
        ).all()
        for job_id, state, outcome, error, started_at, job_options in ended:
            target = running[job_id]
            target.updated_at = now
            if state == "succeeded":
                target.state, target.reason = "succeeded", None
            elif state == "failed" and started_at is None and (job_options or {}).get("start_by"):
                target.state, target.job_id = "pending", None
                target.reason = (
                    f"waiting: job {job_id} did not begin before {LATE_START} (its agent "
                    "asked for it too late); the next window starts a new one"
                )
            else:
                target.state = "failed"
                target.reason = _short(
                    f"job {job_id} {state}"
                    + (f" ({outcome})" if outcome else "")
                    + f": {error or ''}"
                )
        for linked, target in running.items():
            if linked is None:  # its job was deleted
                _mark(target, "failed", "its job is gone", now)

    @staticmethod
    def _judge(session: Session, rollout: Rollout, now: datetime) -> None:
        """Pause on errors, open waves on successes, finish when nothing is left."""
        acked = set(acknowledged(rollout))
        last = max((t.wave for t in rollout.targets), default=0)
        wave = rollout.wave

        def pause(why: str) -> None:
            rollout.state, rollout.reason, rollout.wave = "paused", why, wave
            audit(session, f"rollout:{rollout.id}", "rollout.pause", f"rollout:{rollout.id}",
                  reason=why)  # fmt: skip

        while True:
            for w in range(0, wave + 1):
                tried = _tried(rollout, w)
                failed = [t for t in tried if t.state == "failed" and t.id not in acked]
                if tried and len(failed) * 100 > rollout.error_threshold * len(tried):
                    return pause(
                        f"wave {w}: {len(failed)} of {len(tried)} targets failed "
                        f"({', '.join(t.name for t in failed[:5])}), above the error threshold "
                        f"of {rollout.error_threshold}%: look at their jobs, then retry the "
                        "failed targets or resume"
                    )
            if wave >= last:
                break
            # Acknowledged failures (resume) no longer hold the next wave back.
            counted = [
                t for t in _tried(rollout, wave) if not (t.state == "failed" and t.id in acked)
            ]
            done = [t for t in counted if t.state == "succeeded"]
            if not counted or len(done) * 100 >= rollout.success_threshold * len(counted):
                wave += 1
                continue
            if not any(t.state in ("pending", "running") for t in counted):
                return pause(
                    f"wave {wave} finished with {len(done)} of {len(counted)} targets on the "
                    f"release, below the success threshold of {rollout.success_threshold}%: "
                    "retry the failed targets or resume"
                )
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


def _tried(rollout: Rollout, wave: int) -> list[RolloutTarget]:
    """A wave's targets that count in its thresholds: not the refused or cancelled ones."""
    return [
        t for t in rollout.targets if t.wave == wave and t.state not in ("refused", "cancelled")
    ]


def _mark(target: RolloutTarget, state: str, reason: str, now: datetime) -> None:
    target.state = state
    target.reason = _short(reason)
    target.updated_at = now


def _reason_text(reason: object) -> str:
    if isinstance(reason, dict):
        return f"{reason.get('message')} ({reason.get('remedy')})"
    return str(reason)


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
