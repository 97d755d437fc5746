"""A rollout's plan: which targets a selection names, their waves, and each target's
preflight. No writes: `nso-repo rollout plan` shows it, `rollout create` stores it.

A standalone node is one target; an HA group is one target, upgraded by the group plan
(upgrades/ha_jobs.py). A node selected by label, release or `all` brings its whole group;
a group member named alone is refused (a single-node upgrade would take it out of its
cluster).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, cast

from sqlalchemy import select
from sqlalchemy.orm import Session, defer, selectinload

from repo_server.catalog.release_models import Release
from repo_server.catalog.releases import get_release, list_releases
from repo_server.catalog.versions import NsoVersion
from repo_server.db import among, dialect_of
from repo_server.errors import Conflict, NotFound, ValidationFailed
from repo_server.fleet.group_models import HaGroup, HaGroupMember
from repo_server.fleet.models import Node
from repo_server.rollouts.models import ROLLOUT_ACTIVE, TARGET_OPEN, Rollout, RolloutTarget
from repo_server.upgrades import preflight
from repo_server.upgrades.ha_jobs import plan_group
from repo_server.upgrades.ha_plan import WRITE_POLICIES
from repo_server.upgrades.models import Job, Step

MAX_NAMES = 10_000


def same_version(running: Optional[str], release: str) -> bool:
    """Whether a node's reported version is the release (6.2.0 is 6.2)."""
    if not running:
        return False
    try:
        return NsoVersion.parse(running) == NsoVersion.parse(release)
    except ValueError:
        return running == release


class NoTargets(Conflict):
    code = "no_targets"


class RolloutOverlap(Conflict):
    code = "rollout_overlap"


class GateNotMet(Conflict):
    code = "gate_not_met"


@dataclass
class Selection:
    nodes: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    all: bool = False

    @property
    def empty(self) -> bool:
        return not (self.nodes or self.groups or self.labels or self.versions or self.all)


@dataclass
class Options:
    canary: int = 0
    waves: list[int] = field(default_factory=lambda: [100])
    success_threshold: int = 100
    error_threshold: int = 0
    concurrency: int = 1
    job_minutes: int = 60
    write_policy: str = "safe"
    gates: list[str] = field(default_factory=list)
    allow_extra_packages: bool = False
    strip_removed_ncs_conf: bool = False

    def checked(self) -> Options:
        if not 0 <= self.canary <= MAX_NAMES:
            raise ValidationFailed(f"canary: 0 to {MAX_NAMES} targets", field="canary")
        if not self.waves or any(not 0 < w <= 100 for w in self.waves):
            raise ValidationFailed(
                f"waves {self.waves}: give cumulative percentages from 1 to 100 (10,50,100)",
                field="waves",
            )
        if any(b <= a for a, b in zip(self.waves, self.waves[1:])) or self.waves[-1] != 100:
            raise ValidationFailed(
                f"waves {self.waves}: each wave is a cumulative share of the targets, so they "
                "must grow and the last must be 100 (10,50,100)",
                field="waves",
            )
        for name in ("success_threshold", "error_threshold"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValidationFailed(f"{name} is a percentage: 0 to 100", field=name)
        if not 1 <= self.concurrency <= 1000:
            raise ValidationFailed("concurrency: 1 to 1000 targets at once", field="concurrency")
        if not 1 <= self.job_minutes <= 24 * 60:
            raise ValidationFailed(
                "job_minutes: how long one target's job may take, 1 to 1440", field="job_minutes"
            )
        if self.write_policy not in WRITE_POLICIES:
            raise ValidationFailed(
                f"write policy {self.write_policy!r} is unknown: choose safe or available",
                field="write_policy",
            )
        return self

    def upgrade_options(self) -> preflight.UpgradeOptions:
        return preflight.UpgradeOptions(
            allow_extra_packages=self.allow_extra_packages,
            strip_removed_ncs_conf=self.strip_removed_ncs_conf,
        )


@dataclass
class PlannedTarget:
    kind: str  # node | group
    name: str
    node_ids: list[int]
    node_names: list[str]
    group_id: Optional[int] = None
    node_id: Optional[int] = None
    group: Optional[HaGroup] = None  # loaded with its members' nodes
    wave: int = 0
    state: str = "pending"  # pending | refused | succeeded (runs the release already)
    reason: Optional[str] = None
    reasons: list[str] = field(default_factory=list)
    # The loaded patches the move to the release leaves behind: {node, module, patch_id}.
    drops_patches: list[dict[str, Optional[str]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "nodes": self.node_names,
            "wave": self.wave,
            "state": self.state,
            "reason": self.reason,
            "reasons": self.reasons,
            "drops_patches": self.drops_patches,
        }


@dataclass
class Plan:
    release: Release
    options: Options
    selection: Selection
    targets: list[PlannedTarget]

    @property
    def wave_count(self) -> int:
        return max((t.wave for t in self.targets), default=-1) + 1

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.targets:
            counts[t.state] = counts.get(t.state, 0) + 1
        return {
            "release": self.release.nso_version,
            "selection": asdict(self.selection),
            "options": asdict(self.options),
            "counts": counts,
            "waves": [
                {"wave": w, "size": sum(1 for t in self.targets if t.wave == w)}
                for w in range(self.wave_count)
            ],
            "targets": [t.as_dict() for t in self.targets],
        }


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in values if v.strip()))


def plan(session: Session, release: str, selection: Selection, options: Options) -> Plan:
    """The rollout's targets, waves and verdicts; refused as a whole when nothing is
    selected, when a target is in another active rollout, or when a gate is not met."""
    options = options.checked()
    selection = Selection(
        _unique(selection.nodes),
        _unique(selection.groups),
        _unique(selection.labels),
        _unique(selection.versions),
        selection.all,
    )
    if selection.empty:
        raise ValidationFailed(
            "select the targets: nodes, groups, labels, versions (what they run now) or all",
            field="select",
        )
    if sum(len(x) for x in (selection.nodes, selection.groups, selection.labels)) > MAX_NAMES:
        raise ValidationFailed(f"at most {MAX_NAMES} names in a selection", field="select")
    chosen = get_release(session, release)
    targets = _targets(session, selection)
    if not targets:
        raise NoTargets(
            "the selection names no node: nothing to roll out ('nso-repo node ls' shows the "
            "fleet, with --version and --match)",
            selection=asdict(selection),
        )
    check_overlap(
        session,
        {i for t in targets for i in t.node_ids},
        {t.group_id for t in targets if t.group_id is not None},
    )
    _check_gates(session, options.gates, chosen)
    _preflight(session, chosen, targets, options)
    _assign_waves(targets, options)
    return Plan(chosen, options, selection, targets)


def _targets(session: Session, selection: Selection) -> list[PlannedTarget]:
    groups = list(
        session.scalars(
            select(HaGroup).options(selectinload(HaGroup.members).selectinload(HaGroupMember.node))
        )
    )
    group_of = {m.node_id: g for g in groups for m in g.members}
    by_name = {g.name: g for g in groups}
    unknown_groups = [g for g in selection.groups if g not in by_name]
    rows = session.execute(
        select(Node.id, Node.name, Node.running_version, Node.labels).order_by(Node.name)
    ).all()
    names = {row.name: row for row in rows}
    unknown_nodes = [n for n in selection.nodes if n not in names]
    if unknown_nodes or unknown_groups:
        what = [
            *([f"no node named {', '.join(unknown_nodes[:10])}"] if unknown_nodes else []),
            *([f"no HA group named {', '.join(unknown_groups[:10])}"] if unknown_groups else []),
        ]
        raise NotFound(
            "; ".join(what) + ": nothing was planned. List them with 'nso-repo node ls' and "
            "'nso-repo group ls'",
            nodes=unknown_nodes[:100],
            groups=unknown_groups[:100],
        )
    members = [n for n in selection.nodes if names[n].id in group_of]
    if members:
        raise ValidationFailed(
            "; ".join(f"{n} is a member of HA group {group_of[names[n].id].name}" for n in members)
            + ": select the group (an HA group is upgraded as one target)",
            field="select",
            members=members,
        )
    ordered: list[PlannedTarget] = []
    seen_nodes: set[int] = set()
    seen_groups: set[int] = set()

    def add_group(group: HaGroup) -> None:
        if group.id in seen_groups:
            return
        seen_groups.add(group.id)
        ordered.append(
            PlannedTarget(
                "group",
                group.name,
                [m.node_id for m in group.members],
                [m.node.name for m in group.members],
                group_id=group.id,
                group=group,
            )
        )

    def add_node(row: Any) -> None:
        group = group_of.get(row.id)
        if group is not None:
            add_group(group)
        elif row.id not in seen_nodes:
            seen_nodes.add(row.id)
            ordered.append(PlannedTarget("node", row.name, [row.id], [row.name], node_id=row.id))

    # Named targets first, in the order given (the first is the canary), then the rest
    # by name.
    for name in selection.nodes:
        add_node(names[name])
    for name in selection.groups:
        add_group(by_name[name])
    labels, versions = {x.lower() for x in selection.labels}, set(selection.versions)
    for row in rows:
        if (
            selection.all
            or (labels and labels & set(row.labels or []))
            or (versions and (row.running_version or "none") in versions)
        ):
            add_node(row)
    return ordered


def check_overlap(
    session: Session, node_ids: set[int], group_ids: set[int], besides: Optional[int] = None
) -> None:
    """No node (nor group) is an open target of another active rollout (than ``besides``)."""
    wanted, wanted_groups = node_ids, group_ids
    rows = session.execute(
        select(
            RolloutTarget.rollout_id,
            RolloutTarget.name,
            RolloutTarget.node_id,
            RolloutTarget.group_id,
        )
        .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
        .where(
            Rollout.state.in_(ROLLOUT_ACTIVE),
            RolloutTarget.state.in_(TARGET_OPEN),
            Rollout.id != (besides or 0),
        )
    ).all()
    member_groups: dict[int, set[int]] = {}
    for group_id, node_id in session.execute(select(HaGroupMember.group_id, HaGroupMember.node_id)):
        member_groups.setdefault(group_id, set()).add(node_id)
    clashes = sorted(
        {
            (row.rollout_id, row.name)
            for row in rows
            if (row.node_id in wanted)
            or (row.group_id in wanted_groups)
            or (member_groups.get(row.group_id or -1, set()) & wanted)
        }
    )
    if clashes:
        raise RolloutOverlap(
            "these targets are already in an active rollout: "
            + ", ".join(f"{name} (rollout {rid})" for rid, name in clashes[:20])
            + ": cancel that rollout or leave them out",
            targets=[{"rollout": rid, "name": name} for rid, name in clashes[:100]],
        )


def _check_gates(session: Session, gates: list[str], release: Release) -> None:
    """Every node of every gate (a node or a group name) runs the release already."""
    problems = gate_problems(session, gates, release.nso_version)
    if problems:
        raise GateNotMet(
            f"the promotion gate is not met for NSO {release.nso_version}: "
            + "; ".join(problems)
            + ": upgrade the gate first, then create the rollout",
            problems=problems,
        )


def gate_problems(session: Session, gates: list[str], version: str) -> list[str]:
    problems = []
    for gate in _unique(gates):
        group = session.scalar(
            select(HaGroup)
            .where(HaGroup.name == gate)
            .options(selectinload(HaGroup.members).selectinload(HaGroupMember.node))
        )
        nodes = (
            [m.node for m in group.members]
            if group is not None
            else list(session.scalars(select(Node).where(Node.name == gate)))
        )
        if not nodes:
            problems.append(f"gate {gate} is no node or HA group")
        for node in nodes:
            if not same_version(node.running_version, version):
                problems.append(
                    f"gate {gate}: {node.name} runs {node.running_version or 'no NSO'}, not {version}"
                )
    return problems


def _preflight(
    session: Session, release: Release, targets: list[PlannedTarget], options: Options
) -> None:
    """Each target's verdict now. A node busy with a job is no refusal: the rollout waits
    for it. A target that runs the release already counts as done."""
    releases = list_releases(session)
    upgrade_options = options.upgrade_options()
    wanted = [t.node_ids[0] for t in targets if t.kind == "node"]
    nodes: dict[int, Node] = {}
    for i in range(0, len(wanted), 1000):
        nodes.update(
            (n.id, n)
            for n in session.scalars(
                select(Node).where(Node.id.in_(wanted[i : i + 1000])).options(defer(Node.labels))
            )
        )
    # When each node's last step ended (an inventory sent before is no base for a plan),
    # and the job that holds it now, if any (the target waits for it).
    ids = [i for t in targets for i in t.node_ids]
    changed = preflight.last_step_ends(session, ids)
    active = preflight.holders(session, ids)
    pending = _patches_underway(session, active, release.nso_version)
    for target in targets:
        if target.kind == "node":
            node = nodes[target.node_ids[0]]
            if same_version(node.running_version, release.nso_version):
                target.state, target.reason = "succeeded", f"runs {release.nso_version} already"
                continue
            verdict = preflight.check(
                node,
                release,
                releases,
                upgrade_options,
                active.get(node.id),
                changed_at=changed.get(node.id),
            )
            reasons = [f"{r.message} ({r.remedy})" for r in verdict.reasons]
            target.drops_patches = [{"node": node.name, **p} for p in verdict.drops_patches]
            names = {node.id: node.name}
        else:
            group_plan = plan_group(
                cast(HaGroup, target.group),  # _targets sets it on every group target
                release,
                releases,
                options.write_policy,
                upgrade_options,
                active,
                changed,
            )
            if all(
                same_version(v.source_version, release.nso_version) for v in group_plan.verdicts
            ):
                target.state, target.reason = "succeeded", f"runs {release.nso_version} already"
                continue
            reasons = group_plan.reasons()
            target.drops_patches = [
                {"node": v.node, **p} for v in group_plan.verdicts for p in v.drops_patches
            ]
            names = {m.node.id: m.node.name for m in cast(HaGroup, target.group).members}
        target.drops_patches += _not_listed(target.drops_patches, names, pending)
        if reasons and not waits(reasons):
            target.state = "refused"
            target.reasons = reasons
            target.reason = (
                "refused by preflight: "
                + reasons[0]
                + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
            )


def _patches_underway(
    session: Session, active: dict[int, int], version: str
) -> dict[int, list[dict[str, Any]]]:
    """Node id -> the patches that a patch job holding it now applies for another release
    than ``version``: the target waits for that job, then leaves them behind, and no
    heartbeat shows them yet."""
    jobs = {
        job_id
        for job_id, options, release in session.execute(
            select(Job.id, Job.options, Job.target_version).where(
                among(Job.id, set(active.values()), dialect_of(session)), Job.kind == "patch"
            )
        )
        if (options or {}).get("action") == "apply" and not same_version(release, version)
    }
    found: dict[int, list[dict[str, Any]]] = {}
    if not jobs:
        return found
    for job_id, node_id, params in session.execute(
        select(Step.job_id, Step.node_id, Step.params).where(
            among(Step.job_id, jobs, dialect_of(session))
        )
    ):
        if active.get(node_id) == job_id and isinstance(params, dict):
            found[node_id] = [
                {"module": str(m), "patch_id": params.get("patch_id"), "job": job_id}
                for m in params.get("modules") or []
            ]
    return found


def _not_listed(
    listed: list[dict[str, Any]],
    names: dict[int, str],
    pending: dict[int, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """The patches underway on these nodes (`_patches_underway`) their heartbeats do not
    list already."""
    seen = {(d.get("node"), d.get("module")) for d in listed}
    return [
        {"node": name, **p}
        for node_id, name in names.items()
        for p in pending.get(node_id, [])
        if (name, p["module"]) not in seen
    ]


# Refusals that pass by themselves, so that a rollout waits instead of refusing: another
# job holds the node (preflight's job_active), or the node has not reported since such a
# job ended (inventory_behind).
PASSING = ("is still running on", preflight.BEHIND)


def passing(reason: str) -> bool:
    """A preflight reason (its text) that passes by itself: the target waits for it."""
    return any(words in reason for words in PASSING)


def waits(reasons: list[str]) -> bool:
    """Whether a target refused for ``reasons`` waits instead: one of them passes by itself
    (the others may come from an inventory sent before, or while, a job ran; all are
    checked again once it passes)."""
    return any(passing(r) for r in reasons)


def _assign_waves(targets: list[PlannedTarget], options: Options) -> None:
    """Waves are made of the targets to upgrade: the canary (the first ``canary`` of
    them) is wave 0, the rest fill the waves by cumulative share, empty waves dropped.
    Targets refused by preflight or on the release already join the last wave: a canary is
    a target that really upgrades, and a retried refusal goes last."""
    todo = [t for t in targets if t.state == "pending"]
    canary = min(options.canary, len(todo))
    rest = len(todo) - canary
    bounds = [math.ceil(rest * p / 100) for p in options.waves]
    waves: list[list[PlannedTarget]] = [todo[:canary]] if canary else []
    start = 0
    for bound in bounds:
        waves.append(todo[canary + start : canary + bound])
        start = bound
    number = 0
    for wave in waves:
        if not wave:
            continue
        for target in wave:
            target.wave = number
        number += 1
    for target in targets:
        if target.state != "pending":
            target.wave = max(number - 1, 0)
