"""HA groups: register them, and check what the members' heartbeats say against them.

A group description that contradicts what NSO reports is refused: the upgrade's order
(who is made read-only first, who takes over, who is stopped) follows it, and a wrong
description would upgrade the wrong node first. The checks read each member's last
inventory (docs/agent-protocol.md, "Heartbeat and inventory"): HA mode, current id,
connected secondaries, crypto keys fingerprint, load paths, running version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.db import Base
from repo_server.errors import Conflict, NotFound, ValidationFailed
from repo_server.fleet.group_models import HaGroup, HaGroupMember
from repo_server.fleet.models import Node
from repo_server.fleet.service import NODE_NAME_CHARS, get_node

MIN_MEMBERS = 2
MAX_MEMBERS = 8
# As the agent takes an HA id (agent/trust.py): one it refuses would fail the job later.
HA_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)


class GroupRefused(ValidationFailed):
    code = "group_contradicts_nodes"


@dataclass
class MemberSpec:
    node: str
    ha_id: str
    role: str  # primary | secondary
    failover: bool = False


def get_group(session: Session, name: str) -> HaGroup:
    group = session.scalar(select(HaGroup).where(HaGroup.name == name))
    if group is None:
        raise NotFound(f"no HA group named {name!r}: list groups with 'nso-repo group ls'")
    return group


def list_groups(session: Session) -> list[HaGroup]:
    return list(session.scalars(select(HaGroup).order_by(HaGroup.name)))


def group_sizes(session: Session, limit: int) -> tuple[list[tuple[str, int]], int]:
    """The first ``limit`` groups by name with their member counts, and how many there are
    (one query each, no group or member loaded)."""
    rows = session.execute(
        select(HaGroup.name, func.count(HaGroupMember.node_id))
        .join(HaGroupMember, HaGroupMember.group_id == HaGroup.id, isouter=True)
        .group_by(HaGroup.id, HaGroup.name)
        .order_by(HaGroup.name)
        .limit(limit)
    ).all()
    total = session.scalar(select(func.count()).select_from(HaGroup)) or 0
    return [(str(name), int(count)) for name, count in rows], int(total)


def group_of(session: Session, node: Node) -> Optional[HaGroup]:
    """The group ``node`` is a member of, if any."""
    return session.scalar(
        select(HaGroup)
        .join(HaGroupMember, HaGroupMember.group_id == HaGroup.id)
        .where(HaGroupMember.node_id == node.id)
    )


def _check_shape(name: str, members: list[MemberSpec]) -> None:
    if not name or len(name) > 128 or not set(name) <= NODE_NAME_CHARS:
        raise ValidationFailed(
            f"group name {name!r} is not valid: use 1 to 128 letters, digits, '-', '_' or '.'",
            field="name",
        )
    if not MIN_MEMBERS <= len(members) <= MAX_MEMBERS:
        raise ValidationFailed(
            f"a group has {MIN_MEMBERS} to {MAX_MEMBERS} members, not {len(members)}: name "
            "the primary and its secondaries (--member NODE=HA_ID:primary ...)",
            field="members",
        )
    for member in members:
        if member.role not in ("primary", "secondary"):
            raise ValidationFailed(
                f"member {member.node}: nominal role {member.role!r} is neither primary nor "
                "secondary",
                field="members",
            )
        if not HA_ID.fullmatch(member.ha_id) or len(member.ha_id) > 128 or ".." in member.ha_id:
            raise ValidationFailed(
                f"member {member.node}: HA id {member.ha_id!r} is not valid: use the ha-node id "
                "of NSO's high-availability configuration",
                field="members",
            )
        if member.failover and member.role != "secondary":
            raise ValidationFailed(
                f"member {member.node} is the primary: only a secondary is a failover-primary",
                field="members",
            )
    for what, values in (
        ("node", [m.node for m in members]),
        ("HA id", [m.ha_id for m in members]),
    ):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValidationFailed(f"{what} {', '.join(twice)} named twice", field="members")
    primaries = [m for m in members if m.role == "primary"]
    if len(primaries) != 1:
        raise ValidationFailed(
            f"a group has exactly one nominal primary, not {len(primaries)}", field="members"
        )
    secondaries = [m for m in members if m.role == "secondary"]
    failovers = [m for m in secondaries if m.failover]
    if len(secondaries) == 1 and not failovers:
        secondaries[0].failover = True  # the only secondary is the one that takes over
    elif len(failovers) != 1:
        raise ValidationFailed(
            f"name exactly one secondary as the failover-primary (:failover), not "
            f"{len(failovers)}: it takes over while the primary is upgraded",
            field="members",
        )


def add_group(session: Session, name: str, members: list[MemberSpec], who: Principal) -> HaGroup:
    """Register group ``name``; refused when a member's heartbeat contradicts it."""
    name = name.strip()
    _check_shape(name, members)
    nodes = [get_node(session, m.node) for m in members]
    for node in nodes:
        other = group_of(session, node)
        if other is not None:
            raise Conflict(
                f"{node.name} is a member of group {other.name} already: remove it there first "
                f"('nso-repo group rm {other.name}')"
            )
    group = HaGroup(name=name, created_by=who.actor)
    group.members = [
        HaGroupMember(
            node=node,
            ha_id=spec.ha_id,
            nominal_role=spec.role,
            failover_primary=spec.failover,
            position=i,
        )
        for i, (spec, node) in enumerate(zip(members, nodes))
    ]
    problems = heartbeat_problems(group)
    if problems:
        session.rollback()
        raise GroupRefused(
            f"group {name} contradicts what its members report: " + "; ".join(problems),
            problems=problems,
        )
    session.add(group)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"group {name} exists already, or one of its nodes joined another group meanwhile: "
            "see 'nso-repo group ls'"
        ) from None
    audit(
        session,
        who.actor,
        "group.add",
        f"group:{name}",
        members=[_member_dict(m) for m in group.members],
    )
    session.commit()
    return group


def remove_group(session: Session, name: str, who: Principal) -> None:
    group = get_group(session, name)
    busy = _active_rollouts_of(session, group.id)
    if busy:
        raise Conflict(
            f"group {name} is a target of rollout {', '.join(map(str, busy))}, still to be "
            "upgraded: cancel that rollout (nso-repo rollout cancel) or wait for it, then "
            "remove the group",
            rollouts=busy,
        )
    members = [_member_dict(m) for m in group.members]
    session.delete(group)
    audit(session, who.actor, "group.remove", f"group:{name}", members=members)
    session.commit()


def _active_rollouts_of(session: Session, group_id: int) -> list[int]:
    """The running or paused fleet rollouts in which the group is a target still to do.
    Their tables are read by name: rollouts/ builds on fleet/, not the other way round."""
    tables = Base.metadata.tables
    targets, rollouts = tables.get("rollout_targets"), tables.get("rollouts")
    if targets is None or rollouts is None:
        return []
    return list(
        session.scalars(
            select(rollouts.c.id)
            .join(targets, targets.c.rollout_id == rollouts.c.id)
            .where(
                targets.c.group_id == group_id,
                targets.c.state.in_(("pending", "running")),
                rollouts.c.state.in_(("running", "paused")),
            )
            .distinct()
        )
    )


def _member_dict(member: HaGroupMember) -> dict[str, Any]:
    return {
        "node": member.node.name,
        "ha_id": member.ha_id,
        "nominal_role": member.nominal_role,
        "failover_primary": member.failover_primary,
    }


def heartbeat_problems(group: HaGroup) -> list[str]:
    """Every way the members' last heartbeats contradict the group description; [] when
    they agree. Unknown is a problem too: a plan built on a guess could upgrade the node
    that serves writes first."""
    problems: list[str] = []
    ha_of: dict[str, dict[str, Any]] = {}
    for member in group.members:
        node = member.node
        inv = node.inventory or {}
        if node.inventory_at is None:
            problems.append(
                f"{node.name} has sent no heartbeat yet: enroll and start its agent "
                "(nso-agent run), then try again"
            )
            continue
        ha = inv.get("ha")
        if not isinstance(ha, dict):
            problems.append(
                f"{node.name} reports no HA state (NSO down, its CLI unreachable, or an older "
                "agent): check 'nso-agent status' on the host"
            )
            continue
        ha_of[node.name] = ha
        if not ha.get("enabled"):
            problems.append(f"HA is disabled on {node.name}: enable it (high-availability enable)")
            continue
        if ha.get("mode") != member.nominal_role:
            problems.append(
                f"{node.name} is in HA mode {ha.get('mode')!r}, but the group names it the "
                f"nominal {member.nominal_role}: bring the cluster back to its nominal roles "
                "first, or describe it as it is"
            )
        if ha.get("current_id") != member.ha_id:
            problems.append(
                f"{node.name} is HA node {ha.get('current_id')!r}, not {member.ha_id!r}"
            )
        primary_id = ha.get("primary_id")
        if member is not group.primary and primary_id not in (None, group.primary.ha_id):
            # Another cluster's node with the same HA id: the primary's list of connected
            # ids would not tell them apart.
            problems.append(
                f"{node.name} is a secondary of HA node {primary_id!r}, not of the group's "
                f"primary {group.primary.ha_id!r}: it belongs to another cluster"
            )
    primary = group.primary
    connected = ha_of.get(primary.node.name, {}).get("connected_secondaries")
    if isinstance(connected, list) and ha_of.get(primary.node.name, {}).get("mode") == "primary":
        missing = [m.ha_id for m in group.members if m is not primary and m.ha_id not in connected]
        if missing:
            problems.append(
                f"the primary {primary.node.name} has no connected secondary {', '.join(missing)} "
                f"(connected: {', '.join(map(str, connected)) or 'none'}): the group must be whole "
                "before it is upgraded"
            )
    for member in group.members:
        if member is not primary:
            problems += _differences(primary.node, member.node)
    return problems


def _differences(primary: Node, node: Node) -> list[str]:
    """How ``node``'s facts differ from the primary's where NSO needs them equal."""
    mine, theirs = node.inventory or {}, primary.inventory or {}
    found = []

    def differs(fact: str) -> bool:
        return (
            mine.get(fact) is not None
            and theirs.get(fact) is not None
            and (mine[fact] != theirs[fact])
        )

    if differs("running_version"):
        found.append(
            f"{node.name} runs NSO {mine['running_version']} and the primary {primary.name} "
            f"{theirs['running_version']}: NSO forms no cluster across releases"
        )
    if differs("crypto_keys_fingerprint"):
        found.append(
            f"{node.name}'s crypto keys differ from the primary {primary.name}'s: NSO refuses "
            "it as a secondary ('Token mismatch'); copy /etc/ncs/ncs.crypto_keys from the primary"
        )
    if differs("load_paths"):
        found.append(
            f"{node.name}'s load paths {mine['load_paths']} differ from the primary "
            f"{primary.name}'s {theirs['load_paths']}: make ncs.conf's load-path the same"
        )
    return found
