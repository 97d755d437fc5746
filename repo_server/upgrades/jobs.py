"""Jobs: start them from a plan, hand their steps to agents, advance them on reports.

Every state change happens inside one transaction that first bumps the job's `revision`
with an UPDATE: on PostgreSQL that row lock serialises concurrent reports and claims for
one job across workers and replicas; on SQLite it takes the database's write lock.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.catalog.releases import (
    get_release,
    list_releases,
    live_artifact,
    signed_release_containing,
)
from repo_server.db import utcnow
from repo_server.errors import AppError, Conflict, NotFound, ValidationFailed
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier, announce
from repo_server.fleet.service import get_node, lock_node
from repo_server.upgrades import plans, preflight, results
from repo_server.upgrades.models import JOB_ACTIVE, Job, Step, StepReport

FINISHED = ("succeeded", "failed", "skipped")
HANDED_OUT = ("dispatched", "running")
REPORT_STATES = ("running", "succeeded", "failed")


class PreflightFailed(AppError):
    status = 422
    code = "preflight_failed"


class StepFinished(Conflict):
    code = "step_finished"


class StepNotHandedOut(Conflict):
    code = "step_not_handed_out"


class DiscardConfirmation(Conflict):
    code = "confirm_discard_writes"


def verdict_dict(verdict: preflight.Verdict) -> dict[str, Any]:
    return {
        "node": verdict.node,
        "ok": verdict.ok,
        "kind": verdict.kind,
        "source_version": verdict.source_version,
        "target_version": verdict.target_version,
        "path": verdict.path,
        "reasons": [asdict(r) for r in verdict.reasons],
        "packages": [a.filename for a in verdict.packages],
        "remove_ncs_conf": verdict.remove_ncs_conf,
    }


class JobService:
    def __init__(self, session: Session, notifier: Notifier) -> None:
        self.session = session
        self.notifier = notifier
        # Every step state change and job outcome below is audited as it is flushed.
        from repo_server.auth.audit_events import audit_state_changes

        audit_state_changes(session)

    # -- planning ---------------------------------------------------------------------

    def _active_job(self, node: Node) -> Optional[Job]:
        return self.session.scalar(
            select(Job).where(Job.node_id == node.id, Job.state.in_(JOB_ACTIVE)).order_by(Job.id)
        )

    def plan(
        self, node_name: str, to: str, options: preflight.UpgradeOptions
    ) -> tuple[preflight.Verdict, list[plans.StepSpec]]:
        node = get_node(self.session, node_name)
        release = get_release(self.session, to)
        active = self._active_job(node)
        verdict = preflight.check(
            node, release, list_releases(self.session), options, active.id if active else None
        )
        return verdict, plans.upgrade_steps(verdict, release)

    def start_upgrade(
        self, node_name: str, to: str, options: preflight.UpgradeOptions, who: Principal
    ) -> Job:
        self._lock_node(get_node(self.session, node_name))
        verdict, steps = self.plan(node_name, to, options)
        release = get_release(self.session, to)
        return self._create(
            "upgrade", verdict, steps, who, options=asdict(options), release_id=release.id
        )

    def plan_package_upgrade(
        self, node_name: str, filenames: list[str], allow_data_loss: bool
    ) -> tuple[preflight.Verdict, list[plans.StepSpec]]:
        node = get_node(self.session, node_name)
        artifacts = [live_artifact(self.session, name) for name in filenames]
        active = self._active_job(node)
        verdict = preflight.check_package_upgrade(node, artifacts, active.id if active else None)
        signed = signed_release_containing(self.session, artifacts)
        return verdict, plans.package_upgrade_steps(artifacts, allow_data_loss, signed)

    def start_package_upgrade(
        self, node_name: str, filenames: list[str], allow_data_loss: bool, who: Principal
    ) -> Job:
        self._lock_node(get_node(self.session, node_name))
        verdict, steps = self.plan_package_upgrade(node_name, filenames, allow_data_loss)
        return self._create(
            "package_upgrade", verdict, steps, who, options={"allow_data_loss": allow_data_loss}
        )

    def _create(
        self,
        kind: str,
        verdict: preflight.Verdict,
        steps: list[plans.StepSpec],
        who: Principal,
        **fields: Any,
    ) -> Job:
        """Refuse with every reason, or queue the job and wake the node's agent."""
        if not verdict.ok:
            self.session.rollback()
            raise PreflightFailed(
                f"preflight refused the {kind.replace('_', ' ')} of {verdict.node}: "
                + "; ".join(f"{r.message} ({r.remedy})" for r in verdict.reasons),
                reasons=[asdict(r) for r in verdict.reasons],
                path=verdict.path,
            )
        node = get_node(self.session, verdict.node)
        job = Job(
            node_id=node.id,
            kind=kind,
            source_version=verdict.source_version,
            target_version=verdict.target_version,
            plan=verdict_dict(verdict),
            created_by=who.actor,
            **fields,
        )
        job.steps = [
            Step(seq=i, name=spec.name, params=spec.params, message=spec.title)
            for i, spec in enumerate(steps, start=1)
        ]
        self.session.add(job)
        self.session.flush()
        audit(
            self.session,
            who.actor,
            "job.create",
            f"job:{job.id}",
            node=node.name,
            kind=kind,
            source_version=verdict.source_version,
            target_version=verdict.target_version,
        )
        announce(self.session, self.notifier, node.id)
        self.session.commit()
        return job

    def rollback(self, job_id: int, who: Principal, discard_writes: bool = False) -> Job:
        """Put a node back on the release and data an upgrade started from: the restore
        point taken when NSO stopped. Writes NSO took since then leave NSO (the agent keeps
        them aside on the host), so the operator must say so: ``discard_writes``."""
        done = self.get(job_id)
        rollbackable = done.state == "succeeded" or (
            done.state == "failed" and done.outcome == "needs_attention"
        )
        if done.kind != "upgrade" or not rollbackable:
            raise Conflict(
                f"job {job_id} is a {done.state} {done.kind}"
                + (f" ({done.outcome})" if done.outcome else "")
                + "; only an upgrade that succeeded or needs attention can be rolled back "
                "(a failed one that was rolled back is on its old release already)"
            )
        if not done.context.get("restore_point"):
            raise Conflict(
                f"job {job_id} recorded no restore point (it never stopped NSO, or predates "
                "restore points): it cannot be rolled back; restore its ncs-backup archive by hand"
            )
        node = self.session.get(Node, done.node_id)
        assert node is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
        self._lock_node(node)
        active = self._active_job(node)
        if active is not None:
            raise Conflict(f"job {active.id} is running on {node.name}: wait for it first")
        self._check_nothing_since(done, node)
        recovery = _checked_recovery_context(done)
        if not discard_writes:
            raise DiscardConfirmation(
                f"rolling back job {job_id} puts {node.name} back on NSO {done.source_version} "
                f"with its data as it was when NSO stopped ({_stop_time(done) or 'during the upgrade'}): "
                "every write NSO took since then leaves NSO (the agent keeps the replaced data "
                "on the host, under /var/opt/ncs/backups). Repeat with discard_writes "
                "(nso-repo job rollback --discard-writes) to proceed",
                stopped_at=_stop_time(done) or None,
            )
        spec = plans.recover_step(
            recovery,
            done.source_version or "",
            done.target_version or "",
            target_started=True,
            discard_writes=True,
        )
        job = Job(
            node_id=node.id,
            kind="rollback",
            source_version=done.target_version,
            target_version=done.source_version,
            options={"rollback_of": done.id, "discard_writes": True},
            context={k: recovery[k] for k in plans.RECOVERY_CONTEXT if k in recovery},
            plan={"rollback_of": done.id},
            created_by=who.actor,
        )
        job.steps = [Step(seq=1, name=spec.name, params=spec.params, message=spec.title)]
        self.session.add(job)
        self.session.flush()
        audit(
            self.session,
            who.actor,
            "job.rollback",
            f"job:{job.id}",
            of_job=done.id,
            node=node.name,
            discard_writes=True,
        )
        announce(self.session, self.notifier, node.id)
        self.session.commit()
        return job

    def _lock_node(self, node: Node) -> None:
        """Two requests cannot both find the node free and both start a job on it."""
        lock_node(self.session, node.id)

    def _check_nothing_since(self, done: Job, node: Node) -> None:
        """Refuse to roll ``done`` back when a later job changed the node and was not itself
        rolled back, or when ``done`` was rolled back already."""
        later = list(
            self.session.scalars(
                select(Job).where(Job.node_id == node.id, Job.id > done.id).order_by(Job.id)
            )
        )
        undone = {
            int(j.options.get("rollback_of") or 0): j.id
            for j in later
            if j.kind == "rollback" and j.state == "succeeded"
        }
        if done.id in undone:
            raise Conflict(f"job {done.id} was rolled back already, by job {undone[done.id]}")
        for other in later:
            kept_node_as_it_was = other.state == "failed" and other.outcome in (
                "unchanged",
                "rolled_back",
            )
            if other.kind == "rollback" or kept_node_as_it_was or other.id in undone:
                continue
            raise Conflict(
                f"job {other.id} ({other.kind}, {other.state}) changed {node.name} after job "
                f"{done.id}: roll that back first"
            )

    # -- queries ----------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        job = self.session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}: list jobs with 'nso-repo job ls'")
        return job

    def list(self, node_name: Optional[str] = None, limit: int = 50) -> list[Job]:
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if node_name:
            query = query.where(Job.node_id == get_node(self.session, node_name).id)
        return list(self.session.scalars(query))

    # -- the agent's side -------------------------------------------------------------

    def _lock(self, job: Job) -> None:
        self.session.execute(update(Job).where(Job.id == job.id).values(revision=Job.revision + 1))
        self.session.refresh(job)

    def claim_next(self, node: Node) -> Optional[Step]:
        """The step this node should run now, marked dispatched; None when there is none."""
        job = self._active_job(node)
        if job is None:
            self.session.rollback()
            return None
        self._lock(job)
        step = next((s for s in job.steps if s.state not in FINISHED), None)
        if step is None or not job.active:
            self.session.rollback()
            return None
        now = utcnow()
        step.state = "dispatched" if step.state == "pending" else step.state
        step.attempt += 1
        step.started_at = step.started_at or now
        if job.state == "queued":
            job.state = "running"
            job.started_at = now
        self.session.commit()
        return step

    def report(self, node: Node, step_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Apply an agent's report: only on a step of its own node, only the step handed out
        to it, with the result its step declares (docs/agent-protocol.md, "Reporting").
        Idempotent by ``report_id``."""
        report_id = str(body.get("report_id") or "")
        if not 8 <= len(report_id) <= 64:
            raise ValidationFailed(
                "report_id must be a unique string of 8 to 64 characters", field="report_id"
            )
        state = body.get("state")
        if state not in REPORT_STATES:
            raise ValidationFailed(
                f"state must be one of {', '.join(REPORT_STATES)}", field="state"
            )
        step = self.session.get(Step, step_id)
        # Ownership before the report_id: a known report_id is no key to another node's
        # step, nor to the answer it got.
        if step is None or step.job.node_id != node.id:
            raise NotFound(
                f"no step {step_id} for node {node.name}: report only the steps that "
                "'GET /api/v1/agent/next' hands to this node's agent"
            )
        job = step.job
        self._lock(job)
        seen = self.session.scalar(select(StepReport).where(StepReport.report_id == report_id))
        if seen is not None:
            same_step, answer = seen.step_id == step.id, seen.answer
            self.session.rollback()
            if not same_step:
                raise Conflict(f"report_id {report_id} was used for another step: make a new one")
            return dict(answer)
        # Only the report that finishes a step is remembered by its report_id: that is the
        # one an agent resends after a crash. A progress report applied twice only sets
        # progress and message again; a finished step reported again changes nothing. So a
        # node cannot grow the table by reporting: one row per step at most.
        remember = state != "running" and step.state not in FINISHED
        if step.state in FINISHED:
            if step.state != state:
                self.session.rollback()
                raise StepFinished(
                    f"step {step_id} ({step.name}) already {step.state}: ask for the next step",
                    step_state=step.state,
                )
        else:
            self._check_handed_out(job, step)
            try:
                result = (
                    results.succeeded_result(step.name, job.id, body.get("result") or {})
                    if state == "succeeded"
                    else results.failed_result(job.id, body.get("result"))
                )
            except results.ResultInvalid:
                self.session.rollback()
                raise
            self._apply(job, step, state, body, result)
        answer = {
            "step": step_dict(step),
            "job": {"id": job.id, "state": job.state, "outcome": job.outcome},
        }
        if remember:
            self.session.add(StepReport(report_id=report_id, step_id=step.id, answer=answer))
        if state in ("succeeded", "failed"):
            announce(self.session, self.notifier, node.id)
        self.session.commit()
        return answer

    def _check_handed_out(self, job: Job, step: Step) -> None:
        """The step is the one this node runs now: handed out, the job's first unfinished
        step, of a job still running. Anything else is refused, so no report skips ahead
        (a ``verify`` reported before it was handed out) or finishes a job."""
        current = next((s for s in job.steps if s.state not in FINISHED), None)
        if job.active and step.state in HANDED_OUT and current is step:
            return
        handed = current if current is not None and current.state in HANDED_OUT else None
        message = (
            f"step {step.id} ({step.name}) of job {job.id} is {step.state}, not handed out to "
            "this node: "
            + (
                f"the step it runs now is {handed.id} ({handed.name}). "
                if handed is not None
                else "it runs no step of this job now. "
            )
            + "Report only the step 'GET /api/v1/agent/next' gave this agent; "
            "restart nso-agent if it lost track"
        )
        details = {"id": handed.id, "name": handed.name} if handed is not None else None
        state = step.state
        self.session.rollback()
        raise StepNotHandedOut(message, step_state=state, handed_out=details)

    def _apply(
        self, job: Job, step: Step, state: str, body: dict[str, Any], result: dict[str, Any]
    ) -> None:
        now = utcnow()
        step.progress = max(0, min(100, int(body.get("progress") or step.progress or 0)))
        # Operators read these in a terminal: no escape sequence of the agent's reaches it.
        if body.get("message"):
            step.message = results.printable(str(body["message"]))[: results.MESSAGE_MAX]
        if body.get("log_tail") is not None:
            step.log_tail = results.printable(str(body["log_tail"]))[-results.LOG_TAIL_MAX :]
        if body.get("nso_seconds") is not None:
            step.nso_seconds = float(body["nso_seconds"])
        if state == "running":
            step.state = "running"
            return
        step.finished_at = now
        if state == "succeeded":
            step.state = "succeeded"
            step.progress = 100
            step.result = result
            job.context = {**job.context, **step.result}
            if all(s.state in FINISHED for s in job.steps):
                self._finish(job, now)
            return
        step.state = "failed"
        step.result = result
        cause = f"{step.name} failed: {step.message or 'no message'}"
        if step.name.startswith("recover"):
            job.state = "failed"
            job.outcome = "needs_attention"
            job.error = (
                f"{job.error + '; ' if job.error else ''}{cause}; the node needs an operator"
            )
            job.finished_at = now
        elif job.kind == "upgrade" and self._target_ran(job):
            # The new release reached "started": it may have taken writes, which a restore
            # would take out of NSO. Restoring is for a release that does not run; after
            # this point the operator decides (and says so with --discard-writes).
            self._skip_pending(job)
            job.state = "failed"
            job.outcome = "needs_attention"
            version = step.result.get("version") or job.target_version
            how = (
                "runs and takes writes"
                if step.result.get("nso_running")
                else "started (and may have taken writes) before this failure"
            )
            stopped = _stop_time(job)
            job.error = (
                f"{cause}; NSO {version} {how}, so the job did not put the old release back on "
                "its own: that would take out of NSO every write made since it stopped"
                + (f" at {stopped}" if stopped else "")
                + ". Fix the cause (or start NSO), or roll back: "
                f"'nso-repo job rollback {job.id} --discard-writes'"
            )
            job.finished_at = now
        elif self._past_no_return(job, step):
            job.error = cause
            self._skip_pending(job)
            spec = plans.recovery_for(
                job.kind,
                results.checked_context(job.id, job.context),
                job.source_version or "",
                job.target_version or "",
                self._target_started(job),
            )
            job.steps.append(
                Step(seq=len(job.steps) + 1, name=spec.name, params=spec.params, message=spec.title)
            )
        else:
            self._skip_pending(job)
            job.state = "failed"
            job.outcome = "unchanged"
            job.error = cause
            job.finished_at = now

    @staticmethod
    def _skip_pending(job: Job) -> None:
        for later in job.steps:
            if later.state == "pending":
                later.state = "skipped"

    @staticmethod
    def _target_started(job: Job) -> bool:
        """Whether the new release may have started on the node's data: its start step
        was handed out (or there is none to tell)."""
        start = next((s for s in job.steps if s.name == "start"), None)
        return start is None or start.attempt > 0

    @staticmethod
    def _target_ran(job: Job) -> bool:
        """The new release reached "started": its start step succeeded."""
        return any(s.name == "start" and s.state == "succeeded" for s in job.steps)

    @staticmethod
    def _past_no_return(job: Job, step: Step) -> bool:
        name = plans.POINT_OF_NO_RETURN.get(job.kind)
        marker = next((s for s in job.steps if s.name == name), None)
        return marker is not None and step.seq >= marker.seq

    @staticmethod
    def _finish(job: Job, now: Any) -> None:
        job.finished_at = now
        if job.error:  # recovery ran: the node is back where it was, the upgrade did not happen
            job.state = "failed"
            job.outcome = "rolled_back"
        else:
            job.state = "succeeded"


def _paths_job(job: Job) -> int:
    """The job whose folders a job's context names: a rollback's are the rolled back job's."""
    of = (job.options or {}).get("rollback_of") if job.kind == "rollback" else None
    return of if type(of) is int else job.id


def _checked_recovery_context(done: Job) -> dict[str, Any]:
    """What a rollback of ``done`` hands its recovery step; refused when a value that
    recovery needs does not pass its step's declaration (a context an older server stored)."""
    recovery = results.checked_context(done.id, done.context)
    refused = sorted(k for k in plans.RECOVERY_CONTEXT if k in done.context and k not in recovery)
    if refused:
        raise Conflict(
            f"job {done.id} recorded {', '.join(refused)} in a form this server no longer "
            "accepts (a host path outside the job's folders, or a value of the wrong type; "
            "stored by an older server): it cannot be rolled back automatically. Restore "
            "the node by hand from its restore point under /var/opt/ncs/backups "
            "(docs/upgrades.md)",
            refused=refused,
        )
    return recovery


def _stop_time(job: Job) -> str:
    """When NSO stopped for the job (an agent's report): only if it reads as a time."""
    text = job.context.get("stopped_at")
    if not isinstance(text, str) or len(text) > 40:
        return ""
    try:
        return datetime.fromisoformat(text).isoformat(timespec="seconds")
    except ValueError:
        return ""


def node_may_download(session: Session, node_id: int, sha256: str) -> bool:
    """Whether a step handed out to the node now names ``sha256`` as a download: all an
    agent may fetch (least privilege; docs/agent-protocol.md)."""
    steps = session.scalars(
        select(Step)
        .join(Job, Step.job_id == Job.id)
        .where(Job.node_id == node_id, Job.state.in_(JOB_ACTIVE), Step.state.in_(HANDED_OUT))
    )
    return any(sha256 in _downloads(step.params) for step in steps)


def _downloads(params: Any) -> set[str]:
    """The sha256 of every artifact reference (``{"sha256", "url", ...}``) in step params."""
    found: set[str] = set()
    if isinstance(params, dict):
        if isinstance(params.get("sha256"), str) and "url" in params:
            found.add(params["sha256"])
        for value in params.values():
            found |= _downloads(value)
    elif isinstance(params, list):
        for value in params:
            found |= _downloads(value)
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


def step_payload(step: Step) -> dict[str, Any]:
    """What the agent gets from `next`: the step, its params and the job's context."""
    job = step.job
    return {
        **step_dict(step),
        "params": step.params,
        # As the steps reported it: a context stored by an older server may not hand a
        # later step an undeclared key or a path outside the job's folders.
        "context": results.checked_context(_paths_job(job), job.context),
        "job": {
            "id": job.id,
            "kind": job.kind,
            "source_version": job.source_version,
            "target_version": job.target_version,
        },
    }
