"""Jobs: start them from a plan, hand their steps to agents, advance them on reports.

Every state change happens inside one transaction that first bumps the job's `revision`
with an UPDATE: on PostgreSQL that row lock serialises concurrent reports and claims for
one job across workers and replicas; on SQLite it takes the database's write lock. The
moves themselves are `job_states.transition`'s.

A job holds its nodes while it is active; its steps run in `seq` order across the job, each
on the node it is bound to: a node's agent gets a step only when every earlier step of the
job has finished, or, for the steps of one batch, when its own earlier steps of the batch
have (`runnable`): the nodes of a batch work at the same time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from repo_server.auth.service import Principal, audit, audit_refusal
from repo_server.catalog.releases import (
    get_release,
    list_releases,
    live_artifact,
    signed_release_containing,
)
from repo_server.db import among, dialect_of, utcnow
from repo_server.errors import AppError, Conflict, NotFound, ValidationFailed
from repo_server.fleet.groups import group_of
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier, announce
from repo_server.fleet.service import get_node, lock_node
from repo_server.upgrades import (
    ha_package_plan,
    ha_recovery,
    ha_state,
    plans,
    preflight,
    result_checks,
    results,
)
from repo_server.upgrades.job_states import (
    READ_ONLY_STEPS,
    STEP_FINISHED,
    STEP_HANDED_OUT,
    transition,
)
from repo_server.upgrades.models import Job, NodeHold, Step, StepReport, job_nodes
from repo_server.upgrades.step_payloads import step_dict

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
        "drops_patches": verdict.drops_patches,
    }


class JobService:
    def __init__(self, session: Session, notifier: Notifier) -> None:
        self.session = session
        self.notifier = notifier
        # Called with every job this service creates, in its transaction, once the job has
        # its id (a rollout links its target to the job: rollouts/driver.py).
        self.on_hold: Optional[Callable[[Job], None]] = None
        # An operator's request refused by preflight is audited; a fleet rollout's driver,
        # which asks again every pass while a target waits, records its own refusals.
        self.audit_refusals = True
        # Every step state change and job outcome below is audited as it is flushed.
        from repo_server.auth.audit_events import audit_state_changes

        audit_state_changes(session)

    # -- planning ---------------------------------------------------------------------

    def active_job(self, node: Node) -> Optional[Job]:
        """The job that holds the node now, if any."""
        return self.session.scalar(
            select(Job).join(NodeHold, NodeHold.job_id == Job.id).where(NodeHold.node_id == node.id)
        )

    def plan(
        self, node_name: str, to: str, options: preflight.UpgradeOptions
    ) -> tuple[preflight.Verdict, list[plans.StepSpec]]:
        node = get_node(self.session, node_name)
        release = get_release(self.session, to)
        active = self.active_job(node)
        group = group_of(self.session, node)
        verdict = preflight.check(
            node,
            release,
            list_releases(self.session),
            options,
            active.id if active else None,
            group=group.name if group is not None else None,
            changed_at=preflight.last_step_ends(self.session, [node.id]).get(node.id),
        )
        return verdict, plans.upgrade_steps(verdict, release)

    def start_upgrade(
        self, node_name: str, to: str, options: preflight.UpgradeOptions, who: Principal
    ) -> Job:
        self.lock_node(get_node(self.session, node_name))
        verdict, steps = self.plan(node_name, to, options)
        release = get_release(self.session, to)
        return self._create(
            "upgrade", verdict, steps, who, options=asdict(options), release_id=release.id
        )

    def plan_package_upgrade(
        self,
        node_name: str,
        filenames: list[str],
        allow_data_loss: bool,
        remove: tuple[str, ...] = (),
    ) -> tuple[preflight.Verdict, list[plans.StepSpec]]:
        node = get_node(self.session, node_name)
        artifacts = [live_artifact(self.session, name) for name in filenames]
        active = self.active_job(node)
        group = group_of(self.session, node)
        verdict = preflight.check_package_upgrade(
            node,
            artifacts,
            active.id if active else None,
            remove,
            changed_at=preflight.last_step_ends(self.session, [node.id]).get(node.id),
            group=group.name if group is not None else None,
        )
        signed = signed_release_containing(self.session, artifacts) if artifacts else None
        return verdict, plans.package_upgrade_steps(artifacts, allow_data_loss, signed, remove)

    def start_package_upgrade(
        self,
        node_name: str,
        filenames: list[str],
        allow_data_loss: bool,
        who: Principal,
        remove: tuple[str, ...] = (),
    ) -> Job:
        self.lock_node(get_node(self.session, node_name))
        verdict, steps = self.plan_package_upgrade(node_name, filenames, allow_data_loss, remove)
        options = {
            "allow_data_loss": allow_data_loss,
            **({"remove": list(remove)} if remove else {}),
        }
        return self._create("package_upgrade", verdict, steps, who, options=options)

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
            refused = PreflightFailed(
                f"preflight refused the {kind.replace('_', ' ')} of {verdict.node}: "
                + "; ".join(f"{r.message} ({r.remedy})" for r in verdict.reasons),
                reasons=[asdict(r) for r in verdict.reasons],
                path=verdict.path,
            )
            self.session.rollback()
            if not self.audit_refusals:
                raise refused
            # Who tried, and why not: in a transaction of its own, nothing else kept.
            audit_refusal(
                self.session,
                who.actor,
                "job.create_refused",
                f"node:{verdict.node[:200]}",
                refused,
                kind=kind,
                reasons=sorted({r.code for r in verdict.reasons}),
            )
            raise refused
        node = get_node(self.session, verdict.node)
        job = Job(
            kind=kind,
            source_version=verdict.source_version,
            target_version=verdict.target_version,
            plan=verdict_dict(verdict),
            created_by=who.actor,
            **fields,
        )
        job.steps = [
            Step(seq=i, node_id=node.id, name=spec.name, params=spec.params, message=spec.title)
            for i, spec in enumerate(steps, start=1)
        ]
        self.hold(job, [node])
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
        if done.kind == ha_package_plan.UPGRADE:
            from repo_server.upgrades.ha_package_jobs import rollback_packages

            return rollback_packages(self, done, who)
        if done.kind != "upgrade":
            raise no_rollback_of(done)
        rollbackable = done.state == "succeeded" or (
            done.state == "failed" and done.outcome == "needs_attention"
        )
        if not rollbackable:
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
        node = _only_node(done)
        self.lock_node(node)
        active = self.active_job(node)
        if active is not None:
            raise Conflict(f"job {active.id} is running on {node.name}: wait for it first")
        patched = self.check_nothing_since(done, [node])
        recovery = _checked_recovery_context(done)
        if not discard_writes:
            raise DiscardConfirmation(
                f"rolling back job {job_id} puts {node.name} back on NSO {done.source_version} "
                f"with its data as it was when NSO stopped ({_stop_time(done) or 'during the upgrade'}): "
                "every write NSO took since then leaves NSO (the agent keeps the replaced data "
                "on the host, under /var/opt/ncs/backups)"
                + (
                    f", and what patch jobs {', '.join(map(str, patched))} did to NSO "
                    f"{done.target_version}'s patches folder stays there, not loaded by NSO "
                    f"{done.source_version}"
                    if patched
                    else ""
                )
                + ". Repeat with discard_writes (nso-repo job rollback --discard-writes) to "
                "proceed",
                stopped_at=_stop_time(done) or None,
                patch_jobs=patched,
            )
        spec = plans.recover_step(
            recovery,
            done.source_version or "",
            done.target_version or "",
            target_started=True,
            discard_writes=True,
        )
        job = Job(
            kind="rollback",
            source_version=done.target_version,
            target_version=done.source_version,
            options={"rollback_of": done.id, "discard_writes": True},
            context={k: recovery[k] for k in plans.RECOVERY_CONTEXT if k in recovery},
            plan={"rollback_of": done.id},
            created_by=who.actor,
        )
        job.steps = [
            Step(seq=1, node_id=node.id, name=spec.name, params=spec.params, message=spec.title)
        ]
        self.hold(job, [node])
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

    def cancel(self, job_id: int, reason: str, who: Principal) -> Job:
        """End an active job without its agents: for a member whose host died, or an agent
        that will not come back. Nothing on a host is changed or undone: the step handed out
        ends failed, the rest skipped, the nodes are let go, and the job says what it had
        changed so the operator knows what to check (docs/upgrades.md, "Cancelling")."""
        reason = results.printable(reason.strip())[:500]
        if not reason:
            raise ValidationFailed(
                "say why the job is cancelled (--reason): it is kept in the job and the audit",
                field="reason",
            )
        job = self._locked(job_id) or self.get(job_id)  # get: the NotFound of a wrong id
        if not job.active:
            state = job.state
            self.session.rollback()
            raise Conflict(
                f"job {job_id} is {state} already: only a queued or running job can be cancelled"
            )
        now = utcnow()
        changed = [s for s in job.steps if s.state == "succeeded" and _may_change(s)]
        # A step handed out may have run, whole or in part, before its agent went away.
        running = [s for s in job.steps if s.state in STEP_HANDED_OUT and _may_change(s)]
        for step in job.steps:
            if step.state in STEP_HANDED_OUT:
                transition(step, "failed")
                step.message = f"cancelled by {who.actor} while it ran: {reason}"
                step.finished_at = now
        self._skip_pending(job)
        transition(job, "cancelled")
        job.finished_at = now
        job.outcome = "needs_attention" if changed or running else "unchanged"
        steps = sorted({f"{s.node.name} ({s.name})" for s in changed}) + sorted(
            {f"{s.node.name} ({s.name}, handed out: it may have run)" for s in running}
        )
        grouped = job.kind == "ha_upgrade" or job.kind in ha_package_plan.KINDS
        what = (
            ("it had changed " if changed else "it may have changed ")
            + ", ".join(steps)
            + ": check those nodes before anything else (nso-repo node ls"
            + (", nso-repo group ls" if grouped else "")
            + ")"
            if steps
            else "it had changed nothing on any node"
        )
        if job.kind == "ha_upgrade" and steps:
            what += "; " + ha_state.describe(job)
        elif job.kind in ha_package_plan.KINDS and any(
            s.name in ("install_packages", ha_package_plan.SYNC_STEP) for s in changed + running
        ):
            # Only once a load path or NSO's packages may have changed: backups alone
            # change nothing a rollback or a by-hand sync should undo.
            what += "; " + ha_package_plan.cancelled(
                job, any(s.name == ha_package_plan.SYNC_STEP for s in running)
            )
        job.error = (
            f"{job.error + '; ' if job.error else ''}cancelled by {who.actor}: {reason}; {what}"
        )
        audit(
            self.session,
            who.actor,
            "job.cancel",
            f"job:{job.id}",
            reason=reason,
            outcome=job.outcome,
        )
        for member in job.nodes:
            announce(self.session, self.notifier, member.id)
        self.session.commit()
        return job

    def lock_node(self, node: Node) -> None:
        """Two requests cannot both find the node free and both start a job on it."""
        lock_node(self.session, node.id)

    def lock_nodes(self, nodes: list[Node]) -> None:
        """`lock_node` each, in id order as a patch rollout does: two requests taking
        overlapping sets in different orders would deadlock (PostgreSQL aborts one)."""
        for node in sorted(nodes, key=lambda n: n.id):
            lock_node(self.session, node.id)

    def hold(self, job: Job, nodes: list[Node]) -> None:
        """Add the job, holding ``nodes``. The node lock and the active-job check come
        first; the holds' primary key is what the database itself refuses."""
        job.nodes = list(nodes)
        job.holds = [NodeHold(node_id=node.id) for node in nodes]
        self.session.add(job)
        try:
            self.session.flush()
        except IntegrityError:
            names = ", ".join(node.name for node in nodes)
            self.session.rollback()
            raise Conflict(
                f"another job holds {names} now: wait for it ('nso-repo job ls') and try again"
            ) from None
        if self.on_hold is not None:
            self.on_hold(job)

    def later_jobs(self, nodes: list[Node], after: int) -> list[Job]:
        """The jobs on any of ``nodes`` created after job ``after``, oldest first: what may
        have changed them since (each caller decides which of them count)."""
        return list(
            self.session.scalars(
                select(Job).where(Job.id.in_(_on(nodes)), Job.id > after).order_by(Job.id)
            )
        )

    def last_change(self, nodes: list[Node]) -> Optional[Job]:
        """The newest job on any of ``nodes`` that may have changed more than patches: an
        ended patch job (`patch_only`), a NED dry-run that only looked, and a job that
        failed or was cancelled leaving the nodes as they were are passed over, as a
        rollback passes over them (`check_nothing_since`)."""
        older_than: Optional[int] = None
        while True:  # a page at a time: the one wanted is most often the first
            page = select(Job).where(Job.id.in_(_on(nodes))).order_by(Job.id.desc()).limit(16)
            if older_than is not None:
                page = page.where(Job.id < older_than)
            jobs = list(self.session.scalars(page))
            for job in jobs:
                if not (patch_only(job) or only_looked(job) or left_as_it_was(job)):
                    return job
            if len(jobs) < 16:
                return None
            older_than = jobs[-1].id

    def check_nothing_since(self, done: Job, nodes: list[Node]) -> list[int]:
        """Refuse to roll ``done`` back when a later job changed one of its ``nodes`` (one
        node, or an HA group's members) and was not itself rolled back, or when ``done``
        was rolled back already. Returns the later patch jobs (`patch_only`), whose patches
        the old release does not load."""
        later = self.later_jobs(nodes, done.id)
        undone = rolled_back(later, done)
        patched = []
        for other in later:
            if (
                other.kind in ROLLBACKS
                or left_as_it_was(other)
                or other.id in undone
                or only_looked(other)
            ):
                continue
            if patch_only(other):
                # Its release's patches folder: the old release does not load it (a patch
                # of the old release itself stays loaded, and is not named).
                if other.outcome != "unchanged" and other.source_version == done.target_version:
                    patched.append(other.id)
                continue
            raise changed_since(other, nodes[0].name if len(nodes) == 1 else other.node_name, done)
        return patched

    # -- queries ----------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        job = self.session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}: list jobs with 'nso-repo job ls'")
        return job

    def list(self, node_name: Optional[str] = None, limit: int = 50) -> list[Job]:
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if node_name:
            node = get_node(self.session, node_name)
            query = query.where(Job.nodes.any(Node.id == node.id))
        return list(self.session.scalars(query))

    # -- the agent's side -------------------------------------------------------------

    def _locked(self, job_id: int, with_nodes: bool = False) -> Optional[Job]:
        """Lock job ``job_id`` and load it after the lock, with its steps at once (and its
        nodes, without their inventories): the state the rest of the transaction works on.
        Locking a loaded job and refreshing it took one more statement, and lazy loads more,
        per poll and per report of every agent."""
        lock_rows(self.session, [job_id])
        return self.session.scalar(
            select(Job)
            .where(Job.id == job_id)
            .options(
                selectinload(Job.steps),
                *([selectinload(Job.nodes).defer(Node.inventory)] if with_nodes else []),
            )
            .execution_options(populate_existing=True)
        )

    def claim_next(self, node: Node) -> Optional[Step]:
        """The step this node should run now, marked dispatched; None when there is none
        (no job holds the node, or the job's next step is another node's)."""
        # Read first, lock after: a poll for a node without a job takes no lock (on SQLite
        # any write, even one that matches nothing, takes the database's write lock). The
        # job is locked by its id: should it end meanwhile, the checks below see it ended.
        held = self.session.scalar(select(NodeHold.job_id).where(NodeHold.node_id == node.id))
        if held is None:
            self.session.rollback()
            return None
        job = self._locked(held)
        step = runnable(job, node.id) if job is not None else None
        if job is None or step is None or not job.active:
            self.session.rollback()
            return None
        now = utcnow()
        if step.state == "pending" and _past_start_by(job, now):
            # What made the job safe to start no longer holds (a NED migration's dry-run
            # got too old, a rollout's maintenance window closes, while the agent was
            # away): it ends here, having changed nothing.
            self._skip_pending(job)
            transition(job, "failed")
            job.outcome = "unchanged"
            why = job.options.get("start_by_why")
            job.error = (
                f"not started: it had to start by {job.options['start_by']} ("
                + (
                    why
                    if isinstance(why, str)
                    else "its dry-run's result holds until then, NSO_REPO_NED_DRY_RUN_MAX_AGE; "
                    "run the dry-run again and confirm it"
                )
                + ") and the node's agent asked for it only now"
            )
            job.finished_at = now
            self.session.commit()
            return None
        hand_out(job, step, now)
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
        # Ownership before the report_id: a known report_id is no key to another node's
        # step, nor to the answer it got.
        job_id = self.session.scalar(
            select(Step.job_id).where(Step.id == step_id, Step.node_id == node.id)
        )
        job = self._locked(job_id, with_nodes=True) if job_id is not None else None
        step = next((s for s in job.steps if s.id == step_id), None) if job else None
        if job is None or step is None:
            self.session.rollback()
            raise NotFound(
                f"no step {step_id} for node {node.name}: report only the steps that "
                "'GET /api/v1/agent/next' hands to this node's agent"
            )
        seen = self.session.scalar(select(StepReport).where(StepReport.report_id == report_id))
        if seen is not None:
            same_step, answer = seen.step_id == step.id, seen.answer
            self.session.rollback()
            if not same_step:
                raise Conflict(f"report_id {report_id} was used for another step: make a new one")
            return dict(answer)
        try:
            answer = self.settle(job, step, state, report_id, body)
        except AppError:
            self.session.rollback()
            raise
        self.session.commit()
        return answer

    def settle(
        self, job: Job, step: Step, state: str, report_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A new report (its report_id unseen) on a locked job: its answer. Raises AppError,
        having changed nothing, for a report refused; the caller ends the transaction."""
        return self.apply_checked(
            job, step, state, report_id, body, self.check(job, step, state, body)
        )

    def check(
        self, job: Job, step: Step, state: str, body: dict[str, Any]
    ) -> Optional[dict[str, Any]]:
        """What `settle` checks before it changes anything: the step's result to keep, or
        None for a finished step reported again as it ended. Raises AppError otherwise."""
        if step.state in STEP_FINISHED:
            if step.state != state:
                raise StepFinished(
                    f"step {step.id} ({step.name}) already {step.state}: ask for the next step",
                    step_state=step.state,
                )
            return None
        self._check_handed_out(job, step)
        return (
            results.succeeded_result(step.name, job.id, body.get("result") or {})
            if state == "succeeded"
            else results.failed_result(job.id, body.get("result"))
        )

    def apply_checked(
        self,
        job: Job,
        step: Step,
        state: str,
        report_id: str,
        body: dict[str, Any],
        result: Optional[dict[str, Any]],
    ) -> dict[str, Any]:
        """`settle` after `check` passed, with what it gave."""
        answer, remember = self.applied(job, step, state, body, result)
        if remember:
            self.session.add(StepReport(report_id=report_id, step_id=step.id, answer=answer))
        self.wake_members(job, state)
        return answer

    def applied(
        self,
        job: Job,
        step: Step,
        state: str,
        body: dict[str, Any],
        result: Optional[dict[str, Any]],
    ) -> tuple[dict[str, Any], bool]:
        """`apply_checked` but the step report and the wake-up (`wake_members`): the answer,
        and whether to remember it by its report_id."""
        # Only the report that finishes a step is remembered by its report_id: that is the
        # one an agent resends after a crash. A progress report applied twice only sets
        # progress and message again; a finished step reported again changes nothing. So a
        # node cannot grow the table by reporting: one row per step at most.
        remember = state != "running" and step.state not in STEP_FINISHED
        if result is not None:
            self._apply(job, step, state, body, result)
        answer = {
            "step": step_dict(step),
            "job": {"id": job.id, "state": job.state, "outcome": job.outcome},
        }
        return answer, remember

    def wake_members(self, job: Job, state: str) -> None:
        """After a report of ``state`` applied to ``job``: the next step may be another
        node's, so a finished step wakes them all at the commit. A job that ended has work
        for no one."""
        if state in ("succeeded", "failed") and job.active:
            for member in job.nodes:
                announce(self.session, self.notifier, member.id)

    def _check_handed_out(self, job: Job, step: Step) -> None:
        """The step is the one this node runs now: handed out, the job's first unfinished
        step, of a job still running. Anything else is refused, so no report skips ahead
        (a ``verify`` reported before it was handed out) or finishes a job."""
        current = runnable(job, step.node_id)
        if job.active and step.state in STEP_HANDED_OUT and current is step:
            return
        handed = current if current is not None and current.state in STEP_HANDED_OUT else None
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
        raise StepNotHandedOut(message, step_state=step.state, handed_out=details)

    def _apply(
        self, job: Job, step: Step, state: str, body: dict[str, Any], result: dict[str, Any]
    ) -> None:
        now = utcnow()
        step.progress = max(0, min(100, int(body.get("progress") or step.progress or 0)))
        # Operators read these in a terminal: no escape sequence of the agent's reaches it.
        if body.get("message"):
            # One line, as the protocol has it: a line break in it would start a row of
            # its own where a table shows it ('nso-repo patch show': another node's row).
            message = " ".join(results.printable(str(body["message"])).splitlines())
            step.message = message[: results.MESSAGE_MAX]
        if body.get("log_tail") is not None:
            step.log_tail = results.printable(str(body["log_tail"]))[-results.LOG_TAIL_MAX :]
        if body.get("nso_seconds") is not None:
            step.nso_seconds = float(body["nso_seconds"])
        if state == "running":
            transition(step, "running")
            return
        step.finished_at = now
        if state == "succeeded":
            differs = result_checks.contradiction(job, step, result)
            if differs is not None:
                state, step.message = "failed", differs
                if job.kind in ("patch", "ned_migration"):
                    # Whatever the agent did, the node is not known to be as it was.
                    result = {**result, "changed": True}
        if state == "succeeded":
            transition(step, "succeeded")
            step.progress = 100
            step.result = result
            _merge_result(job, step)
            if all(s.state in STEP_FINISHED for s in job.steps):
                self._finish(job, now)
            return
        transition(step, "failed")
        step.result = result
        cause = f"{step.name} failed: {step.message or 'no message'}"
        if job.kind == "patch":
            # Patches are files on each node: a node that took it keeps it (a rollout with
            # remove takes it off); the rest of the job does not run. A member of the same
            # batch still at work reports first; the job ends with the last of them.
            job.error = f"{job.error + '; ' if job.error else ''}{cause} ({step.node.name})"
            self._skip_pending(job)
            if not any(s.state in STEP_HANDED_OUT for s in job.steps):
                self._finish(job, now)
        elif job.kind in ("ha_upgrade", *ha_package_plan.KINDS):
            self._way_back(job, step, now)
        elif step.name.startswith("recover"):
            transition(job, "failed")
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
            transition(job, "failed")
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
            # Recovery runs where the step failed.
            _append(job, step.node_id, spec)
        else:
            self._skip_pending(job)
            transition(job, "failed")
            # A step with no recovery may have changed the node before it failed, and
            # says so (a NED migration that moved some devices): not "unchanged" then.
            job.outcome = "needs_attention" if result.get("changed") else "unchanged"
            job.error = cause
            job.finished_at = now

    def _way_back(self, job: Job, step: Step, now: datetime) -> None:
        """An HA group upgrade's step failed: the way back from where it failed
        (ha_recovery.py), run by the members' agents, or the end of the job."""
        planned = int(job.plan.get("step_count") or 0)
        if job.plan.get("way_back") and step.seq <= planned:
            # A step of the same batch failed after another one did: the way back was
            # planned from the first failure, which it follows.
            job.error = (
                f"{job.error + '; ' if job.error else ''}{step.name} failed on "
                f"{step.node.name} too: {step.message or 'no message'}"
            )
            if all(s.state in STEP_FINISHED for s in job.steps):
                self._finish(job, now)
            return
        back = (
            ha_package_plan.way_back(job, step)
            if job.kind in ha_package_plan.KINDS
            else ha_recovery.way_back(job, step)
        )
        self._skip_pending(job)
        job.error = f"{job.error + '; ' if job.error else ''}{back.error}"
        job.plan = {**job.plan, "way_back": back.outcome}
        for node_id, spec in back.steps:
            _append(job, node_id, spec)
        if back.steps or any(s.state in STEP_HANDED_OUT for s in job.steps):
            # The way back runs, or a member of the failed step's batch is still at work:
            # the job ends when the last of them reports (_finish).
            return
        transition(job, "failed")
        job.outcome = back.outcome
        job.finished_at = now

    @staticmethod
    def _skip_pending(job: Job) -> None:
        for later in job.steps:
            if later.state == "pending":
                transition(later, "skipped")

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
            transition(job, "failed")
            # An HA upgrade's way back says what it leads to (ha_recovery.WayBack).
            job.outcome = job.plan.get("way_back") or "rolled_back"
            if job.kind in ha_package_plan.KINDS:
                job.error = ha_package_plan.finished_error(job)
            if job.kind == "patch":
                # A failed node puts back what it had, unless its report says `changed`: it
                # could not (the files or NSO not as before). Another may have taken it.
                took = [
                    s
                    for s in job.steps
                    if s.state == "succeeded"
                    or (s.state == "failed" and (s.result or {}).get("changed"))
                ]
                job.outcome = "needs_attention" if took else "unchanged"
                if took:
                    job.error = f"{job.error}; {_patch_left_on(job, took)}"
        else:
            transition(job, "succeeded")


def _patch_left_on(job: Job, took: list[Step]) -> str:
    """Which members of a failed patch job changed (or may have), and the rollout that
    undoes it: an HA group's members are named by the group (a rollout naming some of
    them is refused, group_member)."""
    names = {n.id: n.name for n in job.nodes}
    changed = ", ".join(sorted({names.get(s.node_id, f"node {s.node_id}") for s in took}))
    options = job.options or {}
    where = f"--group {options['group']}" if options.get("group") else f"--node {changed}"
    patch = options.get("patch") or "BUNDLE"
    if options.get("action") == "remove":
        return (
            f"the patch is (or may be) off {changed}: roll it out again to put it back "
            f"('nso-repo patch rollout {patch} {where}'), or its removal once fixed"
        )
    return (
        f"the patch is (or may be) on {changed}: take it off with 'nso-repo patch rollout "
        f"{patch} --remove {where}', or roll it out again once the cause is fixed"
    )


def left_as_it_was(job: Job) -> bool:
    """Failed or cancelled, a job that left its nodes as they were: it changed nothing."""
    return job.state in ("failed", "cancelled") and job.outcome in ("unchanged", "rolled_back")


def patch_only(job: Job) -> bool:
    """A patch job that ended: it changed .beam files in its release's own folder, never
    NSO's data nor its packages, so it does not stand in the way of rolling back an earlier
    job (an upgrade's rollback leaves the patches, unloaded, in the newer release's folder;
    a package rollback keeps them loaded)."""
    return job.kind == "patch" and not job.active


# The kinds of job a rollback job undoes (`rollback`, ha_package_jobs.py's); the rest have
# none of their own.
ROLLED_BACK_BY_THE_SERVER = ("upgrade", ha_package_plan.UPGRADE)
# The kinds of job that undo another (``options.rollback_of``).
ROLLBACKS = ("rollback", ha_package_plan.ROLLBACK)


def rolled_back(later: list[Job], done: Job) -> dict[int, int]:
    """Job id -> the rollback that undid it, among ``later`` jobs; Conflict when ``done``
    itself was rolled back already."""
    undone = {
        int(j.options.get("rollback_of") or 0): j.id
        for j in later
        if j.kind in ROLLBACKS and j.state == "succeeded"
    }
    if done.id in undone:
        raise Conflict(f"job {done.id} was rolled back already, by job {undone[done.id]}")
    return undone


def _may_change(step: Step) -> bool:
    """Whether the step may change its node: not a read-only step, nor a NED migration's
    dry-run (NSO only says what it would change)."""
    dry_run = step.name == "ned_migrate" and (step.params or {}).get("dry_run") is True
    return step.name not in READ_ONLY_STEPS and not dry_run


def only_looked(job: Job) -> bool:
    """A NED migration's dry-run that ended without needing attention: NSO only said what
    it would change (the agent checks every device's ned-id is as it was), so it does not
    stand in the way of rolling back an earlier job, as a patch job does not either."""
    return (
        job.kind == "ned_migration"
        and (job.options or {}).get("dry_run") is True
        and not job.active
        and job.outcome != "needs_attention"
    )


def _on(nodes: list[Node]) -> Any:
    """The ids of the jobs on any of ``nodes``, as a subquery."""
    return select(job_nodes.c.job_id).where(job_nodes.c.node_id.in_([n.id for n in nodes]))


def no_rollback_of(done: Job) -> Conflict:
    """Why ``done``, of a kind the server does not roll back, is not: what to do instead."""
    options = done.options or {}
    patch, group = options.get("patch") or "BUNDLE", options.get("group")
    instead = {
        "package_upgrade": "a single node's package upgrade has no rollback: move forward "
        "with a new package upgrade to the builds it had ('nso-repo node upgrade-packages "
        "NODE --package FILE'), or restore the job's proven backup by hand (docs/upgrades.md)",
        "ned_migration": "a NED migration is not rolled back: migrate the devices back to "
        "their old ned-id, or restore the backup by hand (docs/upgrades.md)",
        "patch": "a patch job is undone by rolling the patch's removal out "
        + (
            f"to its group ('nso-repo patch rollout {patch} --remove --group {group}')"
            if group
            else f"('nso-repo patch rollout {patch} --remove --node {done.node_name}')"
        ),
    }.get(
        done.kind,
        f"a job of kind {done.kind} has no rollback of its own; only an upgrade or an HA "
        "group's package upgrade is rolled back",
    )
    return Conflict(f"job {done.id} is a {done.state} {done.kind}: {instead}")


def changed_since(later: Job, node_name: str, done: Job) -> Conflict:
    """Why ``done`` cannot be rolled back: ``later`` changed the node since. A NED migration
    has no rollback of its own, so its words say what to do instead."""
    if later.kind == "ned_migration":
        return Conflict(
            f"job {later.id} (ned_migration, {later.state}) migrated devices of {node_name} "
            f"after job {done.id}, and a migration is not rolled back: rolling job {done.id} "
            "back could take away the NED those devices use now. Move forward instead (a "
            "new package upgrade), or migrate the devices back to their old ned-id and "
            "restore the backup by hand (docs/upgrades.md)"
        )
    if later.kind not in ROLLED_BACK_BY_THE_SERVER:
        return Conflict(
            f"job {later.id} ({later.kind}, {later.state}) changed {node_name} after job "
            f"{done.id}, and a job of kind {later.kind} has no rollback of its own: job "
            f"{done.id} cannot be rolled back by the server any more. Move forward (a new "
            "package upgrade), or restore its backup by hand (docs/upgrades.md)"
        )
    return Conflict(
        f"job {later.id} ({later.kind}, {later.state}) changed {node_name} after job "
        f"{done.id}: roll that back first"
    )


def _past_start_by(job: Job, now: datetime) -> bool:
    """Whether the job had to start by a time (``options.start_by``, ISO 8601) now past."""
    start_by = (job.options or {}).get("start_by")
    if not isinstance(start_by, str):
        return False
    try:
        limit = datetime.fromisoformat(start_by)
    except ValueError:
        return True  # unreadable: not started on a guess
    if limit.tzinfo is None:
        limit = limit.replace(tzinfo=timezone.utc)
    return now > limit


def _append(job: Job, node_id: int, spec: plans.StepSpec) -> None:
    """Add a step after the job's last one (a recovery, the way back of an HA upgrade)."""
    job.steps.append(
        Step(
            seq=len(job.steps) + 1,
            node_id=node_id,
            name=spec.name,
            params=spec.params,
            message=spec.title,
        )
    )


def lock_rows(session: Session, job_ids: Iterable[int]) -> list[int]:
    """Lock jobs ``job_ids`` (bump their revision) before any of them is read; their ids,
    in order."""
    ids = sorted(set(job_ids))
    dialect = dialect_of(session)
    if len(ids) > 1 and dialect == "postgresql":
        # Rows in id order, as every batch takes them: two batches sharing jobs (the
        # members of one HA group, served by two processes) wait, never deadlock.
        session.execute(
            select(Job.id).where(among(Job.id, ids, dialect)).order_by(Job.id).with_for_update()
        )
    session.execute(
        update(Job).where(among(Job.id, ids, dialect)).values(revision=Job.revision + 1)
    )
    return ids


def hand_out(job: Job, step: Step, now: datetime) -> None:
    """Mark ``step`` handed to its node's agent (again: its attempt counts each time)."""
    if step.state == "pending":
        transition(step, "dispatched")
    step.attempt += 1
    step.started_at = step.started_at or now
    if job.state == "queued":
        transition(job, "running")
        job.started_at = now


def claimable(job: Optional[Job], node_id: int, now: datetime) -> Optional[Step]:
    """The step ``claim_next`` hands out as it is, without ending the job: None when the
    job ended, the node has no step now, or the step's start is past its time."""
    if job is None or not job.active:
        return None
    step = runnable(job, node_id)
    if step is None or (step.state == "pending" and _past_start_by(job, now)):
        return None
    return step


def runnable(job: Job, node_id: int) -> Optional[Step]:
    """The step the node runs now, if any: the job's first unfinished step when it is the
    node's; within a batch, the node's first unfinished step of that batch (the nodes of a
    batch run at the same time, each its own steps in order)."""
    current = next((s for s in job.steps if s.state not in STEP_FINISHED), None)
    if current is None:
        return None
    if current.batch is None:
        return current if current.node_id == node_id else None
    return next(
        (
            s
            for s in job.steps
            if s.batch == current.batch and s.node_id == node_id and s.state not in STEP_FINISHED
        ),
        None,
    )


def _merge_result(job: Job, step: Step) -> None:
    """Keep a succeeded step's result for the later steps: in the job's context, or, for a
    job over several nodes, in its node's part of it (each member has its own backup file,
    restore point and fingerprint; step_payloads.py hands a step its node's part)."""
    if len(job.nodes) <= 1:
        job.context = {**job.context, **step.result}
        return
    by_node = dict(job.context.get("by_node") or {})
    key = str(step.node_id)
    by_node[key] = {**(by_node.get(key) or {}), **step.result}
    job.context = {**job.context, "by_node": by_node}


def _only_node(job: Job) -> Node:
    """The node of a one-node job; a job over several nodes is not rolled back as one."""
    if len(job.nodes) != 1:
        raise Conflict(
            f"job {job.id} spans {len(job.nodes)} nodes ({job.node_name}): only a one-node "
            "job can be rolled back"
        )
    return job.nodes[0]


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
