"""Package upgrades on an HA group: plan one (each member's package preflight, the group's
checks, every step on every member), start it as one job that holds every member, and roll
it back (the primary's saved package links, synced to every member).

The plan is refused with every reason when a member's own package preflight refuses it,
when the members' heartbeats contradict the group (fleet/groups.py: among them load paths
that differ, which ``packages ha sync`` refuses), or when a member's load paths are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from repo_server.auth.service import Principal
from repo_server.catalog.releases import live_artifact, signed_release_containing
from repo_server.errors import Conflict
from repo_server.fleet.group_models import HaGroup
from repo_server.fleet.groups import get_group, heartbeat_problems
from repo_server.fleet.models import Node
from repo_server.upgrades import preflight, results
from repo_server.upgrades.ha_jobs import GroupPlan, create_group_job, role_options
from repo_server.upgrades.ha_package_plan import (
    KINDS,
    ROLLBACK,
    UPGRADE,
    check_step,
    package_steps,
    read_only_before,
    sync_step,
    sync_variant,
    verify_step,
)
from repo_server.upgrades.ha_recovery import Roles
from repo_server.upgrades.jobs import JobService
from repo_server.upgrades.models import Job, Step
from repo_server.upgrades.plans import StepSpec, backup_step
from repo_server.upgrades.step_payloads import node_context


@dataclass
class GroupPackagePlan(GroupPlan):
    packages: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # deinstalled in the same reload
    sync: str = ""
    before: dict[str, str] = field(default_factory=dict)  # what the primary loads now
    after: dict[str, str] = field(default_factory=dict)  # what every member loads after

    def as_dict(self) -> dict[str, Any]:
        shown = super().as_dict()
        for key in ("to", "write_policy", "marks"):  # an NSO upgrade's, not this change's
            del shown[key]
        return {**shown, "packages": self.packages, "remove": self.remove, "sync": self.sync}


def _versions(node: Node) -> dict[str, str]:
    """The packages ``node`` reported, by name: what the group loads before the change."""
    listed = (node.inventory or {}).get("packages")
    return {
        str(p["name"]): str(p.get("version") or "")
        for p in (listed if isinstance(listed, list) else [])
        if isinstance(p, dict) and p.get("name")
    }


def _packages_differ(group: HaGroup, theirs: dict[str, str], settled: bool) -> list[str]:
    """Members that load other packages than the primary: the change is planned from the
    primary's packages, and ``packages ha sync`` gives every secondary the primary's, so a
    package only a secondary loads would go unsaid, and one it loads at another version
    would be replaced where the plan says added (``and-add`` reloads nothing). Only when
    ``settled``: no job holds a member and each has reported since its last step ended
    (else the members' own refusals say to wait; their heartbeats differ only in time).
    ``theirs``: the primary's packages (`_versions`)."""
    primary = group.primary.node
    problems = []
    for member in group.members:
        node = member.node
        if not settled or node.id == primary.id:
            continue
        if node.inventory_at is None or primary.inventory_at is None:
            continue  # a member that never reported: heartbeat_problems says so
        mine = _versions(node)
        differs = sorted(
            f"{name} {_version_shown(mine, name)} (the primary: {_version_shown(theirs, name)})"
            for name in set(mine) | set(theirs)
            if mine.get(name) != theirs.get(name)
        )
        if differs:
            problems.append(
                f"{node.name} loads other packages than the primary {primary.name}: "
                + ", ".join(differs[:5])
                + (f" and {len(differs) - 5} more" if len(differs) > 5 else "")
                + ": a sync would give it the primary's unsaid; make the members load the "
                "same packages first ('packages ha sync and-reload' on the primary gives "
                "every secondary the primary's), then plan again"
            )
    return problems


def _version_shown(versions: dict[str, str], name: str) -> str:
    if name not in versions:
        return "not loaded"
    return versions[name] or "version unknown"


def _load_paths_unknown(group: HaGroup) -> list[str]:
    """Members whose load paths nobody knows: whether ``packages ha sync`` would refuse
    them (it does when they differ) cannot be told."""
    return [
        f"{m.node.name} did not report its load paths (ncs.conf's load-path): packages ha "
        "sync refuses members whose load paths differ, so they must be known; check that "
        "nso-agent can read /etc/ncs/ncs.conf ('nso-agent status'), then plan again"
        for m in group.members
        if m.node.inventory_at is not None
        and not isinstance((m.node.inventory or {}).get("load_paths"), list)
    ]


class GroupPackageUpgrades:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.session = jobs.session

    def plan(
        self, name: str, filenames: list[str], remove: tuple[str, ...] = ()
    ) -> GroupPackagePlan:
        """``remove``: packages (by name) every member stops loading in the same reload,
        checked on each member as a single node's package upgrade checks them."""
        group = get_group(self.session, name)
        artifacts = [live_artifact(self.session, filename) for filename in filenames]
        verdicts = []
        ended = preflight.last_step_ends(self.session, [m.node_id for m in group.members])
        settled = True
        for member in group.members:
            active = self.jobs.active_job(member.node)
            settled = (
                settled
                and active is None
                and not preflight.inventory_behind(
                    member.node.inventory_at, ended.get(member.node_id)
                )
            )
            # As a member: the group's own checks (its heartbeats, then ha_package_check on
            # every member) take the place of the single-node HA refusal.
            verdicts.append(
                preflight.check_package_upgrade(
                    member.node,
                    artifacts,
                    active.id if active else None,
                    remove,
                    member=True,
                    changed_at=ended.get(member.node_id),
                )
            )
        before = _versions(group.primary.node)
        planned = GroupPackagePlan(
            group,
            "",
            "",
            verdicts,
            heartbeat_problems(group)
            + _load_paths_unknown(group)
            + _packages_differ(group, before, settled)
            + self._left_read_only(group),
            packages=[a.filename for a in artifacts],
            remove=list(remove),
            sync=sync_variant(artifacts, before, remove),
            before=before,
        )
        if planned.ok:
            changed = {**before, **{str(a.name): str(a.version) for a in artifacts}}
            planned.after = {n: v for n, v in changed.items() if n not in remove}
            signed = signed_release_containing(self.session, artifacts) if artifacts else None
            planned.plan = package_steps(
                group, artifacts, signed, planned.after, planned.sync, remove
            )
        return planned

    def _left_read_only(self, group: HaGroup) -> list[str]:
        """The group's last job on its members (patch jobs aside) needs attention and its
        primary, read-write before it, reports read-only now: a sync that job lost may still
        hold it, or left it so. A new change would take that mode for the one to keep (its
        check reads it as the mode before) and close the way back that ends read-write: the
        old job's rollback."""
        primary = group.primary.node
        ha = (primary.inventory or {}).get("ha")
        if not isinstance(ha, dict) or ha.get("read_only") is not True:
            return []
        # A patch rolled out since changed no mode and no package: it must not hide this.
        job = self.jobs.last_change([m.node for m in group.members])
        if job is None or job.kind not in KINDS or job.outcome != "needs_attention":
            return []
        if read_only_before(job, primary.id) is not False:
            return []
        # A rollback is not rolled back: the upgrade it undoes is, again.
        undo = int(job.options.get("rollback_of") or 0) if job.kind == ROLLBACK else job.id
        again = " again" if job.kind == ROLLBACK else ""
        return [
            f"job {job.id} ({job.kind}) needs attention and left {primary.name} read-only, "
            "read-write before it: NSO may still hold it for that job's sync. Roll job "
            f"{undo} back{again} ('nso-repo job rollback {undo}': it ends read-write), or, "
            f"sure that no sync runs, set 'high-availability read-only mode false' on "
            f"{primary.name}; then plan again"
        ]

    def start(
        self, name: str, filenames: list[str], who: Principal, remove: tuple[str, ...] = ()
    ) -> Job:
        group = get_group(self.session, name)
        self.jobs.lock_nodes([member.node for member in group.members])
        planned = self.plan(name, filenames, remove)
        removal = {"remove": planned.remove} if planned.remove else {}
        running = planned.verdicts[0].source_version
        job = Job(
            kind=UPGRADE,
            source_version=running,
            target_version=running,
            options={
                **role_options(group),
                "packages": planned.packages,
                **removal,
                "sync": planned.sync,
                "before": planned.before,
                "after": planned.after,
            },
            plan={"sync": planned.sync},
            created_by=who.actor,
        )
        return planned.start(
            self.jobs,
            f"the package upgrade of group {name}",
            job,
            who,
            packages=planned.packages,
            **removal,
            sync=planned.sync,
        )


def rollback_packages(jobs: JobService, done: Job, who: Principal) -> Job:
    """Every member of ``done``'s group back on the packages it loaded before: on the
    primary the package links its backup saved go back into the load path, and
    ``packages ha sync and-reload`` brings the secondaries along; then every member is
    verified against what the primary loaded before ``done``."""
    if not (done.state == "succeeded" or done.outcome == "needs_attention"):
        raise Conflict(
            f"job {done.id} is a {done.state} {done.kind}"
            + (f" ({done.outcome})" if done.outcome else "")
            + "; only a package upgrade that succeeded or needs attention can be rolled back "
            "(one that failed unchanged changed nothing)"
        )
    roles = Roles.of(done)
    primary = roles.primary
    saved = results.checked_context(done.id, node_context(done, primary)).get("extra_dir")
    if not saved:
        raise Conflict(
            f"job {done.id} recorded no package links of {roles.names[primary]} (its backup "
            "did not finish): nothing to roll back to; check /var/opt/ncs/packages there by hand"
        )
    nodes = list(done.nodes)
    jobs.lock_nodes(nodes)
    for node in nodes:
        active = jobs.active_job(node)
        if active is not None:
            raise Conflict(f"job {active.id} is running on {node.name}: wait for it first")
    jobs.check_nothing_since(done, list(done.nodes))
    before = dict(done.options.get("before") or {})
    members = [primary, *roles.secondaries]
    # A rollback changes every member as the upgrade did: the roles checked again (a
    # failover since would make the sync run on a secondary) and a fresh proven backup of
    # each member first, for the writes made since the upgrade's own backups.
    steps: list[tuple[int, StepSpec, Optional[int]]] = [
        (i, check_step(i == primary, **_roles_of(roles, i)), 1) for i in members
    ]
    steps += [(i, backup_step(), 2) for i in members]
    # It ends in the mode the group had before the upgrade, whatever a failed upgrade left.
    was = read_only_before(done, primary)
    ending = {} if was is None else {"read_only_after": was}
    steps += [(primary, sync_step("and-reload", {}, restore_links=saved, **ending), None)]
    steps += [(i, verify_step(before, i == primary), None) for i in members]
    # The upgrade's own backups, named with the rollback's when it says the way back.
    backups = {
        str(i): node_context(done, i).get("backup_file")
        for i in members
        if node_context(done, i).get("backup_file")
    }
    job = Job(
        kind=ROLLBACK,
        source_version=done.target_version,
        target_version=done.source_version,
        options={
            **{k: done.options.get(k) for k in ("group", "primary", "failover", "others")},
            "ha_ids": done.options.get("ha_ids"),
            "rollback_of": done.id,
            "before": done.options.get("after"),
            "after": before,
            "backups": backups,
            "read_only_before": was,
        },
        plan={"rollback_of": done.id, "step_count": len(steps)},
        created_by=who.actor,
    )
    job.steps = [
        Step(
            seq=i,
            batch=batch,
            node_id=node_id,
            name=spec.name,
            params=spec.params,
            message=spec.title,
        )
        for i, (node_id, spec, batch) in enumerate(steps, start=1)
    ]
    return create_group_job(jobs, job, nodes, who, action="job.rollback", of_job=done.id)


def _roles_of(roles: Roles, node_id: int) -> dict[str, Any]:
    """`role_params` of a member, from the roles a job recorded."""
    primary = node_id == roles.primary
    return {
        "mode": "primary" if primary else "secondary",
        "ha_id": roles.ha_ids[node_id],
        "secondaries": [roles.ha_ids[i] for i in roles.secondaries] if primary else [],
    }
