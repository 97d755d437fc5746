"""HA group upgrades: plan one (every stage on every member) and start it as one job that
holds every member.

The group plan is refused with every reason when any member's own preflight refuses it,
when the members' heartbeats contradict the group (fleet/groups.py), or when they do not
all run the same release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from repo_server.auth.service import Principal, audit
from repo_server.catalog.release_models import Release
from repo_server.catalog.releases import get_release, list_releases
from repo_server.errors import ValidationFailed
from repo_server.fleet.group_models import HaGroup
from repo_server.fleet.groups import get_group, heartbeat_problems
from repo_server.fleet.models import Node
from repo_server.fleet.notify import announce
from repo_server.upgrades import preflight
from repo_server.upgrades.ha_plan import WRITE_POLICIES, HaPlan, ha_upgrade_steps
from repo_server.upgrades.jobs import JobService, PreflightFailed, verdict_dict
from repo_server.upgrades.models import Job, Step


@dataclass
class GroupPlan:
    group: HaGroup
    to: str
    write_policy: str
    verdicts: list[preflight.Verdict]
    problems: list[str] = field(default_factory=list)
    plan: HaPlan = field(default_factory=HaPlan)

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.verdicts)

    def reasons(self) -> list[str]:
        return self.problems + [
            f"{v.node}: {r.message} ({r.remedy})" for v in self.verdicts for r in v.reasons
        ]

    def start(self, jobs: JobService, what: str, job: Job, who: Principal, **details: Any) -> Job:
        """Queue ``job`` with this plan's steps, holding every member, or refuse ``what``
        (the change, as the error names it) with every reason and start nothing."""
        if not self.ok:
            jobs.session.rollback()
            reasons = self.reasons()
            raise PreflightFailed(f"{what} is refused: " + "; ".join(reasons), reasons=reasons)
        job.plan = {
            "group": self.group.name,
            "members": [verdict_dict(v) for v in self.verdicts],
            "step_count": len(self.plan.steps),
            **job.plan,
        }
        job.steps = job_steps(self.plan)
        nodes = [m.node for m in self.group.members]
        return create_group_job(jobs, job, nodes, who, group=self.group.name, **details)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group.name,
            "to": self.to,
            "write_policy": self.write_policy,
            "ok": self.ok,
            "problems": self.problems,
            "members": [verdict_dict(v) for v in self.verdicts],
            "steps": plan_steps(self.plan),
            "marks": self.plan.marks_by_seq,
        }


def plan_steps(plan: HaPlan) -> list[dict[str, Any]]:
    """A group plan's steps as the API shows them, each with its member and stage."""
    return [
        {
            "seq": i,
            "batch": s.batch,
            "node": s.member.node.name,
            "stage": s.stage,
            "name": s.spec.name,
            "title": s.spec.title,
            "params": s.spec.params,
        }
        for i, s in enumerate(plan.steps, start=1)
    ]


def role_options(group: HaGroup) -> dict[str, Any]:
    """Who is who in the group, as a group job keeps it (ha_recovery.Roles reads it)."""
    return {
        "group": group.name,
        "primary": group.primary.node_id,
        "failover": group.failover.node_id,
        "others": [m.node_id for m in group.others],
        "ha_ids": {str(m.node_id): m.ha_id for m in group.members},
    }


def job_steps(plan: HaPlan) -> list[Step]:
    """A group plan's steps as a job's, each bound to its member's node."""
    return [
        Step(
            seq=i,
            batch=s.batch,
            node_id=s.member.node_id,
            name=s.spec.name,
            params=s.spec.params,
            message=s.spec.title,
        )
        for i, s in enumerate(plan.steps, start=1)
    ]


def create_group_job(
    jobs: JobService,
    job: Job,
    nodes: list[Node],
    who: Principal,
    action: str = "job.create",
    **details: Any,
) -> Job:
    """Queue ``job`` (its steps set), holding ``nodes`` (every member), audited as
    ``action`` with ``details``, and wake every member's agent."""
    jobs.hold(job, nodes)
    audit(
        jobs.session,
        who.actor,
        action,
        f"job:{job.id}",
        nodes=[n.name for n in nodes],
        kind=job.kind,
        **details,
    )
    for node in nodes:
        announce(jobs.session, jobs.notifier, node.id)
    jobs.session.commit()
    return job


def plan_group(
    group: HaGroup,
    release: Release,
    releases: list[Release],
    write_policy: str,
    options: preflight.UpgradeOptions,
    active: dict[int, int],
    changed: Mapping[int, datetime],
) -> GroupPlan:
    """The group's plan from what the caller loaded: its members' nodes, every release,
    the active job of each member node that has one (a fleet rollout's plan checks hundreds
    of groups, and loads them all at once)."""
    verdicts = [
        preflight.check(
            member.node,
            release,
            releases,
            options,
            active.get(member.node_id),
            group=group.name,
            member=True,
            changed_at=changed.get(member.node_id),
        )
        for member in group.members
    ]
    problems = heartbeat_problems(group)
    primary_ha = (group.primary.node.inventory or {}).get("ha") or {}
    if primary_ha.get("read_only"):
        problems.append(
            f"the primary {group.primary.node.name} is read-only already: another "
            "procedure may be running; find out why, then 'high-availability read-only "
            "mode false' and plan again"
        )
    result = GroupPlan(group, release.nso_version, write_policy, verdicts, problems)
    if result.ok:
        by_node = {m.node_id: v for m, v in zip(group.members, verdicts)}
        result.plan = ha_upgrade_steps(group, by_node, release, write_policy)
    return result


class GroupUpgrades:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.session = jobs.session

    def plan(
        self, name: str, to: str, write_policy: str, options: preflight.UpgradeOptions
    ) -> GroupPlan:
        if write_policy not in WRITE_POLICIES:
            raise ValidationFailed(
                f"write policy {write_policy!r} is unknown: choose safe (no write without a "
                "secondary behind it) or available (writes as soon as the primary is back)",
                field="write_policy",
            )
        group = get_group(self.session, name)
        release = get_release(self.session, to)
        active = {}
        for member in group.members:
            job = self.jobs.active_job(member.node)
            if job is not None:
                active[member.node_id] = job.id
        changed = preflight.last_step_ends(self.session, [m.node_id for m in group.members])
        return plan_group(
            group, release, list_releases(self.session), write_policy, options, active, changed
        )

    def start(
        self,
        name: str,
        to: str,
        write_policy: str,
        options: preflight.UpgradeOptions,
        who: Principal,
    ) -> Job:
        group = get_group(self.session, name)
        self.jobs.lock_nodes([member.node for member in group.members])
        planned = self.plan(name, to, write_policy, options)
        release = get_release(self.session, to)
        source = planned.verdicts[0].source_version
        job = Job(
            kind="ha_upgrade",
            source_version=source,
            target_version=release.nso_version,
            release_id=release.id,
            options={**asdict(options), **role_options(group), "write_policy": write_policy},
            plan={"marks": planned.plan.marks_by_seq},
            created_by=who.actor,
        )
        return planned.start(
            self.jobs,
            f"the upgrade of group {name} to {to}",
            job,
            who,
            write_policy=write_policy,
            source_version=source,
            target_version=release.nso_version,
        )
