"""Patch rollouts: apply (or remove) an emergency patch bundle on every node that runs its
release, or on the named nodes and groups, as jobs the agents pick up at once.

One job per standalone node, one per HA group (every targeted member, the secondaries'
steps in one batch, then the primary's: patches are local files, never replicated). The
whole target set is checked before anything is written, and a refusal creates nothing.

A rollout may reach a thousand nodes and its latency is the point of it, so the service
reads every target in a constant number of queries and writes jobs, steps, holds and
links with one bulk INSERT per table, in one transaction that also wakes the agents.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional, cast

from sqlalchemy import (
    ColumnElement,
    and_,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repo_server.auth.audit_events import audit_state_changes
from repo_server.auth.service import Principal, audit, audit_refusal
from repo_server.catalog.filenames import a_kind
from repo_server.catalog.models import Artifact
from repo_server.db import among, dialect_of, utcnow
from repo_server.errors import AppError, Conflict, NotFound, ValidationFailed
from repo_server.fleet.group_models import HaGroup, HaGroupMember
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier, announce
from repo_server.patches import signing
from repo_server.patches.models import ACTIONS, PatchRollout, patch_rollout_jobs
from repo_server.rollouts.models import Rollout, RolloutTarget
from repo_server.upgrades.models import Job, NodeHold, Step, job_nodes
from repo_server.upgrades.plans import StepSpec, artifact_ref
from repo_server.upgrades.preflight import (
    INVENTORY_MAX_AGE,
    holders,
    inventory_behind,
    inventory_stale,
)

JOB_KIND = "patch"
# Names a refused request's audit keeps (the request may name thousands, or be hostile).
MAX_AUDITED = 50
STEP_NAMES = {"apply": "apply_patch", "remove": "remove_patch"}
# What a node of a rollout shows, by its step's state.
NODE_STATES = {
    "pending": "queued",
    "dispatched": "running",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "skipped": "skipped",
}
# How many names an error message lists before "and N more" (details list them all).
SHOWN = 10


class ReleaseMismatch(Conflict):
    code = "release_mismatch"


class NoTargets(Conflict):
    code = "no_targets"


class NodeBusy(Conflict):
    code = "node_busy"


class NoHeartbeat(Conflict):
    code = "no_heartbeat"


class InventoryStale(Conflict):
    code = "inventory_stale"


class InventoryBehind(Conflict):
    code = "inventory_behind"


class GroupMember(Conflict):
    code = "group_member"


class RolloutPending(Conflict):
    code = "rollout_pending"


@dataclass
class Target:
    """A node the rollout patches, as its last heartbeat describes it."""

    id: int
    name: str
    reported_at: Optional[datetime]  # its last inventory; None: it never sent one
    running_version: Optional[str]
    status: Optional[str]
    ha_mode: Optional[str]
    group: Optional[str] = None
    nominal_role: Optional[str] = None
    moved_at: Optional[datetime] = None  # when its last job that moves releases ended

    @property
    def behind(self) -> bool:
        """Its last inventory predates the end of its last upgrade or rollback: the release
        it names may be the one the node has left (its agent heartbeats after each job)."""
        return inventory_behind(self.reported_at, self.moved_at)

    @property
    def heard(self) -> bool:
        """It has sent an inventory."""
        return self.reported_at is not None

    def stale(self, now: datetime) -> bool:
        """Its last inventory is too old to say what it runs now (as an upgrade's
        preflight: INVENTORY_MAX_AGE); its agent may be down."""
        return inventory_stale(self.reported_at, now)

    @property
    def primary(self) -> bool:
        """Whether it serves writes: its HA mode says so, else its nominal role in the group
        (patched last, after every secondary)."""
        if self.ha_mode in ("primary", "secondary"):
            return self.ha_mode == "primary"
        return self.nominal_role == "primary"


@dataclass
class Plan:
    """The jobs of a rollout: (group or None, targets in step order, how many batch)."""

    jobs: list[tuple[Optional[str], list[Target], int]] = field(default_factory=list)


# A job that may move a node to another release: an upgrade, an HA upgrade, a rollback of
# one (package jobs, NED migrations and patches keep the release: source == target).
_MOVES_RELEASE = and_(
    Job.source_version.is_not(None),
    Job.target_version.is_not(None),
    Job.target_version != "",
    Job.source_version != Job.target_version,
)


def _moved_at(*where: Any) -> Any:
    """When the node's last job that moves releases (and matches ``where``) ended: a
    correlated scalar subquery on ``nodes``, NULL without one."""
    return (
        select(func.max(Job.finished_at))
        .join(job_nodes, job_nodes.c.job_id == Job.id)
        .where(job_nodes.c.node_id == Node.id, _MOVES_RELEASE, *where)
        .correlate(Node)
        .scalar_subquery()
    )


def _by_node(names: list[str]) -> str:
    """The CLI options that name ``names`` one by one."""
    return " ".join(f"--node {n}" for n in names)


def _behind_reason(target: Target) -> str:
    moved = target.moved_at
    return (
        f"{target.name}'s last inventory (NSO {target.running_version or 'not running'}) "
        f"was sent before its last upgrade or rollback ended"
        + (f" ({moved:%Y-%m-%d %H:%M:%S} UTC)" if moved else "")
        + ", so what it runs now is unknown until its agent's next heartbeat"
    )


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class PatchRollouts:
    def __init__(self, session: Session, notifier: Notifier) -> None:
        self.session = session
        self.notifier = notifier
        # The audit of step and job states, as for every other job's session.
        audit_state_changes(session)

    # -- starting ---------------------------------------------------------------------

    def start(
        self,
        patch: str,
        who: Principal,
        action: str = "apply",
        nodes: Optional[list[str]] = None,
        groups: Optional[list[str]] = None,
        all_affected: bool = False,
    ) -> dict[str, Any]:
        """Check the whole target set, then create every job in one transaction and wake
        the agents; refused with nothing created (docs/patches.md, "Refusals"), and audited
        either way: an emergency change that was refused is part of the incident's story."""
        try:
            return self._start(patch, who, action, nodes or [], groups or [], all_affected)
        except AppError as exc:
            audit_refusal(
                self.session,
                who.actor,
                "patch.rollout_refused",
                f"patch:{patch[:255]}",
                exc,
                change=action[:32],
                all_affected=all_affected,
                nodes=[n[:128] for n in (nodes or [])[:MAX_AUDITED]],
                groups=[g[:128] for g in (groups or [])[:MAX_AUDITED]],
            )
            raise

    def _start(
        self,
        patch: str,
        who: Principal,
        action: str,
        nodes: list[str],
        groups: list[str],
        all_affected: bool,
    ) -> dict[str, Any]:
        nodes, groups = _unique(nodes), _unique(groups)
        if action not in ACTIONS:
            raise ValidationFailed(
                f"action {action!r} is unknown: use apply or remove", field="action"
            )
        if all_affected and (nodes or groups):
            raise ValidationFailed(
                "all_affected (--all-affected) patches every node that runs the bundle's "
                "release: name nodes and groups without it, or use it alone",
                field="all_affected",
            )
        if not all_affected and not nodes and not groups:
            raise ValidationFailed(
                "name the nodes to patch (nodes, groups; --node, --group), or ask for every "
                "node that runs the bundle's release (all_affected; --all-affected)",
                field="nodes",
            )
        bundle = self.bundle(patch)
        vsn = bundle.nso_version
        chosen = self._selection(nodes, groups, all_affected, vsn)
        targets = self._targets(chosen)
        now = utcnow()  # one reading of the inventories' age for the whole request
        holds = self._holds(targets)
        left_out: dict[str, str] = {}
        moving = self._moving(targets, vsn) if action == "apply" else {}
        if all_affected:
            targets, left_out = self._affected(targets, vsn, now, holds)
            # A moving member takes its whole group out: a group goes whole or not at all.
            moved = {t.group: moving[t.name] for t in targets if t.name in moving and t.group}
            for target in targets:
                why = moving.get(target.name) or moved.get(target.group or "")
                if why:
                    left_out[target.name] = (
                        why
                        if target.name in moving
                        else (f"its HA group {target.group} has a member that {why}")
                    )
            targets = [t for t in targets if t.name not in left_out]
        elif moving:
            names = sorted(moving)
            raise RolloutPending(
                f"{_listed([f'{n} ({moving[n]})' for n in names])}: its upgrade would leave "
                f"{patch} behind (a patch belongs to its release), and nobody would be told. "
                "Pause that rollout first ('nso-repo rollout pause ID'), patch, and roll out "
                "the new release's build of the patch after the upgrade; or leave those nodes "
                "out; nothing was started",
                nodes=moving,
            )
        if not targets and left_out:
            raise NoTargets(
                f"every node on NSO {vsn}, the release {patch} is built for, was left out: "
                + "; ".join(f"{n}: {r}" for n, r in sorted(left_out.items())[:20])
                + (f" (and {len(left_out) - 20} more)" if len(left_out) > 20 else ""),
                nso_version=vsn,
                left_out=left_out,
            )
        if not targets:
            raise NoTargets(
                f"no node runs NSO {vsn}, the release {patch} is built for, by their last "
                "heartbeats: nothing to patch ('nso-repo node ls' shows what each runs)",
                nso_version=vsn,
            )
        # From here on, exactly the nodes locked and read: a node that starts to match the
        # request meanwhile (a heartbeat of another one) is not this rollout's.
        chosen = self._exactly([t.id for t in targets])
        if not all_affected:
            self._whole_groups(targets, vsn, now)
        self._check(targets, patch, vsn, now, holds, action)
        plan = _plan(targets)
        rollout = PatchRollout(
            artifact_id=bundle.id,
            filename=bundle.filename,
            patch_id=bundle.name,
            nso_version=vsn,
            action=action,
            request={"nodes": nodes, "groups": groups, "all_affected": all_affected},
            created_by=who.actor,
        )
        self.session.add(rollout)
        self.session.flush()
        job_ids = self._create_jobs(rollout, bundle, plan, chosen)
        queued = [
            {
                "node": t.name,
                "group": group,
                "job_id": job_id,
                "state": "queued",
                "result": None,
                "message": None,
                "finished_at": None,
            }
            for (group, members, _), job_id in zip(plan.jobs, job_ids)
            for t in members
        ]
        audit(
            self.session,
            who.actor,
            "patch.rollout",
            f"patch-rollout:{rollout.id}",
            patch=bundle.filename,
            change=action,
            nso_version=vsn,
            all_affected=all_affected,
            nodes=nodes,
            groups=groups,
            jobs={n["node"]: n["job_id"] for n in queued},
            # Bounded: the answer lists them all, the audit row only says who and how many.
            left_out=sorted(left_out)[:MAX_AUDITED],
            left_out_count=len(left_out),
        )
        for target in targets:
            announce(self.session, self.notifier, target.id)
        self.session.commit()
        answer = _rollout_dict(rollout)
        answer["nodes"] = queued
        answer["counts"] = {"queued": len(targets)}
        answer["state"] = "running"
        answer["left_out"] = [{"node": n, "reason": r} for n, r in sorted(left_out.items())]
        return answer

    def _holds(self, targets: list[Target]) -> dict[int, int]:
        """node id -> the job holding it, of the targets (locked: no hold comes or goes
        meanwhile)."""
        return holders(self.session, [t.id for t in targets])

    def _affected(
        self, targets: list[Target], vsn: str, now: datetime, holds: dict[int, int]
    ) -> tuple[list[Target], dict[str, str]]:
        """all_affected: the targets that can take the patch now, and why each other one is
        left out (node name -> reason). A node whose inventory is stale may not run the
        release any more, nor take a step: its job would hold it, queued, until someone
        cancels it. A node held by a job is kept whatever its inventory's age (its agent
        heartbeats between steps, and a step may run longer): `_check` refuses it as busy.
        An HA group goes whole or not at all: a member left without the patch would serve
        writes without the fix after a failover."""
        why = {
            t.name: (
                f"no inventory since {t.reported_at:%Y-%m-%d %H:%M:%S} UTC: its agent may be "
                "down; patch it by name once it reports again"
            )
            for t in targets
            if t.stale(now) and t.reported_at is not None and t.id not in holds
        }
        for t in targets:
            if t.behind and t.name not in why:
                why[t.name] = _behind_reason(t) + "; patch it by name after that heartbeat"
        groups = sorted({t.group for t in targets if t.group is not None})
        sizes = self._group_sizes(groups)
        for group in groups:
            members = [t for t in targets if t.group == group]
            if len(members) == sizes.get(group) and not any(m.name in why for m in members):
                continue
            ready = [m.name for m in members if m.name not in why]
            # By name only when no member may have moved onto the release unsaid.
            by_name = ready and not any(m.behind and not m.stale(now) for m in members)
            for member in members:
                why.setdefault(
                    member.name,
                    f"HA group {group} has members that do not run NSO {vsn} now or do not "
                    f"report: patch the group by name (--group {group}) once all of them run "
                    "it"
                    + (
                        f", or the members that do now by name ({_by_node(ready)})"
                        if by_name
                        else ""
                    ),
                )
        return [t for t in targets if t.name not in why], why

    def _moving(self, targets: list[Target], vsn: str) -> dict[str, str]:
        """Node name -> why, for each target a running fleet rollout is about to move to
        another release (its target pending, alone or with its HA group): that upgrade
        leaves a patch of ``vsn`` behind. A paused rollout moves nothing meanwhile."""
        if not targets:
            return {}
        ids = [t.id for t in targets]
        groups = sorted({t.group for t in targets if t.group is not None})
        rows = self.session.execute(
            select(RolloutTarget.node_id, HaGroup.name, Rollout.id, Rollout.target_version)
            .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
            .outerjoin(HaGroup, HaGroup.id == RolloutTarget.group_id)
            .where(
                Rollout.state == "running",
                RolloutTarget.state == "pending",
                Rollout.target_version != vsn,
                or_(
                    among(RolloutTarget.node_id, ids, dialect_of(self.session)),
                    HaGroup.name.in_(groups),
                ),
            )
        ).all()
        by_id = {t.id: t for t in targets}
        by_group: dict[str, list[Target]] = defaultdict(list)
        for target in targets:
            if target.group is not None:
                by_group[target.group].append(target)
        why: dict[str, str] = {}
        for node_id, group, rollout_id, version in rows:
            said = f"waits in fleet rollout {rollout_id} for its upgrade to NSO {version}"
            alone = [by_id[node_id]] if node_id in by_id else []
            for target in [*alone, *by_group.get(group or "", [])]:
                why.setdefault(target.name, said)
        return why

    def _group_sizes(self, groups: list[str]) -> dict[str, int]:
        """HA group name -> how many members it has."""
        if not groups:
            return {}
        return dict(
            self.session.execute(
                select(HaGroup.name, func.count(HaGroupMember.node_id))
                .join(HaGroupMember, HaGroupMember.group_id == HaGroup.id)
                .where(HaGroup.name.in_(groups))
                .group_by(HaGroup.name)
            ).all()
        )

    def _whole_groups(self, targets: list[Target], vsn: str, now: datetime) -> None:
        """Named nodes: an HA group takes a patch, or loses it, on every member that can
        (runs its release and reports), or on none. A member patched alone leaves the others
        without the fix (patches are local files, not replicated), and they serve writes
        without it after a failover; it would also take it before its secondaries. Members
        that cannot (left on another release, quiet) do not stop the others."""
        named = {t.id for t in targets}
        groups = sorted({t.group for t in targets if t.group is not None})
        if not groups:
            return
        inv = Node.inventory
        others = self.session.execute(
            select(
                HaGroup.name,
                Node.id,
                Node.name,
                Node.inventory_at,
                inv["running_version"].as_string(),
                _moved_at(),
            )
            .join(HaGroupMember, HaGroupMember.group_id == HaGroup.id)
            .join(Node, Node.id == HaGroupMember.node_id)
            .where(HaGroup.name.in_(groups))
        ).all()
        left = defaultdict(list)
        # A member whose inventory predates its last upgrade may run the release now: the
        # group is not to be patched in part until it reports. A quiet one (its agent
        # down) does not stop the others, as below.
        behind = [
            Target(node_id, name, heard, running, None, None, moved_at=moved)
            for _, node_id, name, heard, running, moved in others
            if node_id not in named
            and inventory_behind(heard, moved)
            and not inventory_stale(heard, now)
        ]
        if behind:
            raise InventoryBehind(
                f"{_listed([_behind_reason(t) for t in behind])}: a group takes a patch on "
                "every member that can or on none, so wait for that heartbeat ('nso-repo "
                "node ls' shows it) and name the group; nothing was started",
                nodes=[t.name for t in behind],
            )
        for group, node_id, name, heard, running, _ in others:
            if node_id in named or running != vsn or heard is None:
                continue
            if inventory_stale(heard, now):
                continue
            left[group].append(name)
        if left:
            said = [f"{_listed(sorted(names))} of HA group {g}" for g, names in left.items()]
            raise GroupMember(
                f"the request leaves out {'; '.join(said)}, on NSO {vsn} and reporting: a group "
                "takes a patch on every member that can, secondaries first, or on none (a "
                "member left without it serves writes without the fix after a failover). Name "
                "the group instead ("
                + ", ".join(f"--group {g}" for g in sorted(left))
                + ") or those members too; nothing was started",
                groups={g: sorted(names) for g, names in left.items()},
            )

    def bundle(self, filename: str) -> Artifact:
        bundle = self.session.scalar(select(Artifact).where(Artifact.filename == filename))
        if bundle is not None and bundle.deleted:
            # Its name stays reserved: "upload it" alone would be refused (name_reserved).
            raise NotFound(
                f"patch bundle {filename} was deleted from the catalog: to roll it (or its "
                f"removal) out again, an admin frees its name ('nso-repo release-name "
                f"{filename}'), then upload the same file (docs/patches.md)",
                patch=filename,
            )
        if bundle is None:
            raise NotFound(
                f"no patch bundle {filename} in the catalog: upload it first "
                f"('nso-repo upload {filename}'); list bundles with 'nso-repo ls patches'",
                patch=filename,
            )
        if bundle.kind != "patch":
            raise ValidationFailed(
                f"{filename} is {a_kind(bundle.kind)}, not a patch bundle "
                "(nso-<VSN>-patch-<ID>.tar.gz): name the bundle to roll out",
                field="patch",
            )
        return bundle

    def _selection(
        self, nodes: list[str], groups: list[str], all_affected: bool, vsn: str
    ) -> ColumnElement[bool]:
        """Which nodes the request names, as a condition on ``nodes`` (every later query
        joins on it, so none carries a list of a thousand ids); NotFound naming every
        unknown node and group."""
        if all_affected:
            # Also the nodes whose inventory predates their last upgrade's end: one may run
            # the bundle's release now, and is listed as left out rather than not at all.
            moved_since = _moved_at(Job.target_version == vsn) > Node.inventory_at
            return or_(Node.inventory["running_version"].as_string() == vsn, moved_since)
        found = self._ids(Node, nodes)
        known_groups = self._ids(HaGroup, groups)
        unknown_nodes = [n for n in nodes if n not in found]
        unknown_groups = [g for g in groups if g not in known_groups]
        if unknown_nodes or unknown_groups:
            what = [
                *([f"no node named {_listed(unknown_nodes)}"] if unknown_nodes else []),
                *([f"no HA group named {_listed(unknown_groups)}"] if unknown_groups else []),
            ]
            raise NotFound(
                "; ".join(what) + ": nothing was started. List them with 'nso-repo node ls' "
                "and 'nso-repo group ls'",
                nodes=unknown_nodes,
                groups=unknown_groups,
            )
        members = select(HaGroupMember.node_id).where(
            HaGroupMember.group_id.in_(list(known_groups.values()))
        )
        return or_(Node.name.in_(nodes), Node.id.in_(members))

    def _ids(self, model: type[Node] | type[HaGroup], names: list[str]) -> dict[str, int]:
        """Name -> id of the rows of ``model`` (nodes, groups) named ``names``."""
        if not names:
            return {}
        rows = self.session.execute(select(model.name, model.id).where(model.name.in_(names)))
        return {name: row_id for name, row_id in rows}

    def _targets(self, chosen: ColumnElement[bool]) -> list[Target]:
        """Every target as its last heartbeat describes it, and its HA group, locked against
        every other change to these nodes (JobService.lock_node) so two requests cannot both
        find a node free. Two queries, whatever the number of nodes; no inventory is loaded
        whole."""
        inv = Node.inventory
        query = select(
            Node.id,
            Node.name,
            Node.inventory_at,
            inv["running_version"].as_string(),
            inv["status"].as_string(),
            inv[("ha", "mode")].as_string(),
            _moved_at(),
        ).where(chosen)
        if self.session.get_bind().dialect.name == "postgresql":
            # In id order, so two rollouts over overlapping sets wait rather than deadlock.
            query = query.order_by(Node.id).with_for_update(of=Node)
        else:
            # SQLite: a write statement takes the database's write lock.
            self.session.execute(
                update(Node).where(chosen).values(id=Node.id),
                execution_options={"synchronize_session": False},
            )
        targets = sorted(
            (
                Target(i, name, heard, running, status, mode, moved_at=moved)
                for i, name, heard, running, status, mode, moved in self.session.execute(query)
            ),
            key=lambda t: t.name,
        )
        members = self.session.execute(
            select(HaGroupMember.node_id, HaGroup.name, HaGroupMember.nominal_role)
            .join(HaGroup, HaGroup.id == HaGroupMember.group_id)
            .join(Node, Node.id == HaGroupMember.node_id)
            .where(chosen)
        ).all()
        of = {node_id: (group, role) for node_id, group, role in members}
        for target in targets:
            target.group, target.nominal_role = of.get(target.id, (None, None))
        return targets

    def _exactly(self, ids: list[int]) -> ColumnElement[bool]:
        """The nodes of ``ids``: one array parameter on PostgreSQL, where a thousand bind
        parameters cost more to send than the rows they select."""
        return cast(ColumnElement[bool], among(Node.id, ids, dialect_of(self.session)))

    def _check(
        self,
        targets: list[Target],
        patch: str,
        vsn: str,
        now: datetime,
        holds: dict[int, int],
        action: str = "apply",
    ) -> None:
        """Refuse the whole request when any target may not take the patch now."""
        silent = [t.name for t in targets if not t.heard]
        if silent:
            raise NoHeartbeat(
                f"{_listed(silent)} sent no heartbeat yet, so what they run is unknown: "
                "enroll and start their agents (nso-agent run), then try again; nothing "
                "was started",
                nodes=silent,
            )
        behind = [t for t in targets if t.behind and t.id not in holds]
        if behind:
            raise InventoryBehind(
                f"{_listed([_behind_reason(t) for t in behind])}: wait for "
                f"{'its' if len(behind) == 1 else 'their'} agents' next heartbeat ('nso-repo "
                "node ls' shows it) and try again; nothing was started",
                nodes=[t.name for t in behind],
            )
        other = [t for t in targets if t.running_version != vsn]
        if other:
            said = [
                f"{t.name} runs NSO {t.running_version}"
                if t.running_version
                else f"{t.name} runs no NSO now (status {t.status or 'unknown'})"
                for t in other
            ]
            moved = action == "remove" and all(t.running_version for t in other)
            # Members reached through their group: the ones on the release go by name.
            grouped = {t.group for t in other if t.group}
            on_it = [t.name for t in targets if t.group in grouped and t.running_version == vsn]
            by_name = f" (the members on NSO {vsn} alone: {_by_node(on_it)})" if on_it else ""
            raise ReleaseMismatch(
                f"{patch} is built for NSO {vsn} exactly: {_listed(said)}. "
                + (
                    f"Its files stay in NSO {vsn}'s own patches folder "
                    f"(/opt/ncs/ncs-{vsn}/lib/ncs/patches), which the release they run does "
                    f"not load: they are inert until the node is back on {vsn} (a rollback), "
                    "when a removal works, or take them out by hand; nothing was started"
                    if moved
                    else "A patch is loaded into the release it was built for only: leave "
                    f"those nodes out{by_name} (or use all_affected, --all-affected), or start "
                    "NSO first; nothing was started"
                ),
                nso_version=vsn,
                nodes={t.name: t.running_version for t in other},
            )
        held = sorted((t.name, holds[t.id]) for t in targets if t.id in holds)
        if held:
            said = [f"{name} (job {job_id})" for name, job_id in held]
            raise NodeBusy(
                f"{_listed(said)} {'is' if len(held) == 1 else 'are'} held by a job now: a node "
                "takes one change at a time. Wait for it ('nso-repo job watch ID') or leave "
                "those nodes out; nothing was started",
                jobs={name: job_id for name, job_id in held},
            )
        # After the holds: a node busy with a long step heartbeats late, and is busy, not
        # silent.
        stale = [t.name for t in targets if t.stale(now)]
        if stale:
            raise InventoryStale(
                f"{_listed(stale)} sent no inventory in the last "
                f"{int(INVENTORY_MAX_AGE.total_seconds() // 60)} minutes, so what they run now "
                "is unknown and their agents may be down: check that nso-agent runs on those "
                "hosts ('nso-agent status'), or leave them out; nothing was started",
                nodes=stale,
            )

    def _create_jobs(
        self, rollout: PatchRollout, bundle: Artifact, plan: Plan, chosen: ColumnElement[bool]
    ) -> list[int]:
        """Every job, step, hold and link of the rollout: one bulk INSERT per table."""
        now = utcnow()
        spec = patch_step(rollout.action, bundle)
        jobs = [
            {
                "kind": JOB_KIND,
                "state": "queued",
                "source_version": bundle.nso_version,
                "target_version": bundle.nso_version,
                "options": {
                    "rollout": rollout.id,
                    "action": rollout.action,
                    "patch": bundle.filename,
                    **({"group": group} if group else {}),
                },
                "context": {},
                # Its place in the rollout: what maps the ids the INSERT returns back to
                # the jobs (RETURNING keeps no order on every backend).
                "plan": {"rollout": rollout.id, "position": i, "step_count": len(members)},
                "created_at": now,
                "created_by": rollout.created_by,
                "revision": 0,
            }
            for i, (group, members, _) in enumerate(plan.jobs)
        ]
        position = {
            job_plan["position"]: job_id
            for job_id, job_plan in self.session.execute(
                insert(Job).returning(Job.id, Job.plan), jobs
            )
        }
        job_ids = [position[i] for i in range(len(jobs))]
        holds = [
            {"node_id": t.id, "job_id": job_id}
            for job_id, (_, members, _) in zip(job_ids, plan.jobs)
            for t in members
        ]
        try:
            self.session.execute(insert(NodeHold), holds)
        except IntegrityError:
            self.session.rollback()
            raise NodeBusy(
                "another job took one of these nodes meanwhile: see 'nso-repo job ls' and try "
                "again; nothing was started"
            ) from None
        # Steps of a job over several nodes, in the plan's order (an HA group: its
        # secondaries in one batch, the primary last)...
        grouped = [
            {**step_row(spec, job_id, t.id), "seq": seq, "batch": 1 if seq <= batched else None}
            for job_id, (_, members, batched) in zip(job_ids, plan.jobs)
            if len(members) > 1
            for seq, t in enumerate(members, start=1)
        ]
        if grouped:
            self.session.execute(insert(Step), grouped)
        # ...and everything else follows from the holds of the targets, which are exactly
        # this rollout's (they are locked and were free): one INSERT ... SELECT each, not a
        # row per node.
        held = (
            select(NodeHold.job_id, NodeHold.node_id)
            .join(Node, Node.id == NodeHold.node_id)
            .where(chosen)
        ).subquery()
        self.session.execute(
            insert(job_nodes).from_select(
                ["job_id", "node_id"], select(held.c.job_id, held.c.node_id)
            )
        )
        self.session.execute(
            insert(patch_rollout_jobs).from_select(
                ["rollout_id", "job_id"],
                select(literal(rollout.id), held.c.job_id).distinct(),
            )
        )
        lone = step_row(spec, 0, 0)
        columns = [c for c in lone if c not in ("job_id", "node_id")]
        has_steps = select(Step.id).where(Step.job_id == held.c.job_id).exists()
        self.session.execute(
            insert(Step).from_select(
                ["job_id", "node_id", *columns],
                select(
                    held.c.job_id,
                    held.c.node_id,
                    *(literal(lone[c], Step.__table__.c[c].type) for c in columns),
                ).where(~has_steps),
            )
        )
        return job_ids

    # -- reading ----------------------------------------------------------------------

    def get(self, rollout_id: int) -> dict[str, Any]:
        """One rollout with every node's state and its agent's result: one query for the
        nodes, whatever their number."""
        rollout = self.session.get(PatchRollout, rollout_id)
        if rollout is None:
            raise NotFound(f"no patch rollout {rollout_id}: list them with 'nso-repo patch ls'")
        rows = self.session.execute(
            select(
                Node.name,
                Job.options,
                Step.job_id,
                Step.state,
                Step.result,
                Step.message,
                Step.finished_at,
            )
            .join(patch_rollout_jobs, patch_rollout_jobs.c.job_id == Step.job_id)
            .join(Job, Job.id == Step.job_id)
            .join(Node, Node.id == Step.node_id)
            .where(patch_rollout_jobs.c.rollout_id == rollout.id)
            .order_by(Node.name, Step.seq)
        ).all()
        nodes = [
            {
                "node": name,
                "group": (options or {}).get("group"),
                "job_id": job_id,
                "state": NODE_STATES.get(state, state),
                "result": result or None,
                "message": message,
                "finished_at": finished,
            }
            for name, options, job_id, state, result, message, finished in rows
        ]
        answer = _rollout_dict(rollout)
        answer["nodes"] = nodes
        answer["counts"] = dict(Counter(n["state"] for n in nodes))
        answer["state"] = _overall(answer["counts"])
        return answer

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest rollouts with how many of their nodes are in each state."""
        rollouts = list(
            self.session.scalars(select(PatchRollout).order_by(PatchRollout.id.desc()).limit(limit))
        )
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        if rollouts:
            rows = self.session.execute(
                select(patch_rollout_jobs.c.rollout_id, Step.state, func.count())
                .join(patch_rollout_jobs, patch_rollout_jobs.c.job_id == Step.job_id)
                .where(patch_rollout_jobs.c.rollout_id.in_([r.id for r in rollouts]))
                .group_by(patch_rollout_jobs.c.rollout_id, Step.state)
            ).all()
            for rollout_id, state, count in rows:
                shown = NODE_STATES.get(state, state)
                counts[rollout_id][shown] = counts[rollout_id].get(shown, 0) + int(count)
        answers = []
        for rollout in rollouts:
            answer = _rollout_dict(rollout)
            answer["counts"] = counts[rollout.id]
            answer["state"] = _overall(counts[rollout.id])
            answers.append(answer)
        return answers


def patch_step(action: str, bundle: Artifact) -> StepSpec:
    """The step every node of a rollout runs (docs/agent-protocol.md, "Emergency patches"):
    the bundle as every step names an artifact, what the agent checks it against (the
    patch id, the release it is built for, its modules, from the catalog's inspection)."""
    modules = [str(m) for m in (bundle.meta or {}).get("modules") or []]
    return StepSpec(
        STEP_NAMES[action],
        {
            "patch": artifact_ref(bundle),
            "patch_id": bundle.name,
            "nso_version": bundle.nso_version,
            "modules": modules,
            # For an agent that installs only what the release manager signed.
            **(signing.signed_params(bundle) if action == "apply" else {}),
        },
        f"{action} patch {bundle.name} ({', '.join(modules)}) "
        f"{'to' if action == 'apply' else 'from'} NSO {bundle.nso_version}",
    )


def step_row(spec: StepSpec, job_id: int, node_id: int) -> dict[str, Any]:
    """A pending step of ``spec``, alone in its job, as a row of ``steps``."""
    return {
        "job_id": job_id,
        "node_id": node_id,
        "seq": 1,
        "batch": None,
        "name": spec.name,
        "params": spec.params,
        "state": "pending",
        "attempt": 0,
        "progress": 0,
        "message": spec.title,
        "result": {},
    }


def _plan(targets: list[Target]) -> Plan:
    """One job per standalone node; one per HA group, its secondaries first (one batch:
    they take the patch at the same time), the member that serves writes last."""
    plan = Plan()
    grouped: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        if target.group is None:
            plan.jobs.append((None, [target], 0))
        else:
            grouped[target.group].append(target)
    for group, members in sorted(grouped.items()):
        claimed = [m for m in members if m.ha_mode == "primary"]
        if len(claimed) > 1:
            # Members that contradict each other (one's heartbeat lies, or a split brain):
            # every one that says it serves writes goes after the others, and the group's
            # nominal primary last, so no member's word puts the real writer first.
            primaries = sorted(claimed, key=lambda m: (m.nominal_role == "primary", m.name))
        else:
            primaries = [m for m in members if m.primary]
        secondaries = [m for m in members if m not in primaries]
        # A batch of one is no batch: a lone secondary's step runs alone anyway.
        batched = len(secondaries) if len(secondaries) > 1 else 0
        plan.jobs.append((group, secondaries + primaries, batched))
    return plan


def _overall(counts: dict[str, int]) -> str:
    """running while any node waits or works; succeeded when every node did; else failed."""
    if counts.get("queued") or counts.get("running"):
        return "running"
    if set(counts) <= {"succeeded"}:
        return "succeeded"
    return "failed"


def _rollout_dict(rollout: PatchRollout) -> dict[str, Any]:
    return {
        "id": rollout.id,
        "patch": rollout.filename,
        "patch_id": rollout.patch_id,
        "nso_version": rollout.nso_version,
        "action": rollout.action,
        "request": rollout.request,
        "created_by": rollout.created_by,
        "created_at": rollout.created_at,
        "url": f"/api/v1/patch-rollouts/{rollout.id}",
    }
