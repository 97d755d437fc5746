"""Why a node does not run the release assigned to it, for the fleet listing: its target in
the latest rollout that named it (or its HA group), in words."""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from repo_server.fleet.group_models import HaGroupMember
from repo_server.fleet.models import Node
from repo_server.rollouts.models import Rollout, RolloutTarget
from repo_server.rollouts.planning import same_version


def node_statuses(session: Session, nodes: list[Node]) -> dict[int, Optional[dict[str, Any]]]:
    """node id -> its rollout status (None: no rollout ever named it). Three queries for a
    page of nodes, whatever its size."""
    ids = [n.id for n in nodes]
    if not ids:
        return {}
    group_of = {
        node_id: group_id
        for node_id, group_id in session.execute(
            select(HaGroupMember.node_id, HaGroupMember.group_id).where(
                HaGroupMember.node_id.in_(ids)
            )
        )
    }
    rows = session.execute(
        select(RolloutTarget, Rollout.state, Rollout.reason)
        .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
        .where(
            or_(
                RolloutTarget.node_id.in_(ids),
                RolloutTarget.group_id.in_(set(group_of.values())),
            )
        )
        .order_by(RolloutTarget.id)
    ).all()
    latest: dict[tuple[str, int], tuple[RolloutTarget, str, Optional[str]]] = {}
    for target, state, reason in rows:  # later rows win: the latest rollout
        key = ("node", target.node_id) if target.node_id else ("group", target.group_id or 0)
        latest[key] = (target, state, reason)
    out: dict[int, Optional[dict[str, Any]]] = {}
    for node in nodes:
        group_id = group_of.get(node.id)
        found = latest.get(("group", group_id)) if group_id else latest.get(("node", node.id))
        out[node.id] = _status(node, *found) if found else None
    return out


def _status(
    node: Node, target: RolloutTarget, rollout_state: str, rollout_reason: Optional[str]
) -> dict[str, Any]:
    return {
        "rollout": target.rollout_id,
        "rollout_state": rollout_state,
        "target": target.name,
        "target_state": target.state,
        "wave": target.wave,
        "job_id": target.job_id,
        "why": _why(node, target, rollout_state, rollout_reason),
    }


def _why(
    node: Node, target: RolloutTarget, rollout_state: str, rollout_reason: Optional[str]
) -> str:
    if node.assigned_version and same_version(node.running_version, node.assigned_version):
        return "runs the assigned release"
    if target.state == "pending" and rollout_state == "paused":
        return f"rollout {target.rollout_id} is paused: {rollout_reason or 'by an operator'}"
    if target.state == "pending" and not target.reason:
        return f"queued in wave {target.wave} of rollout {target.rollout_id}"
    if target.state == "succeeded":
        return "upgraded; its next heartbeat reports the release"
    return f"{target.state}: {target.reason or ''}".rstrip(": ")
