"""What the console's pages show, shaped from the models: a node's row in the fleet, a
job's timeline. Plain functions of the data, no request in sight."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from repo_server.db import utcnow
from repo_server.fleet.models import Node
from repo_server.upgrades import ha_windows
from repo_server.upgrades.models import Job


def age(moment: Optional[datetime], now: Optional[datetime] = None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago'; 'never' for None."""
    if moment is None:
        return "never"
    seconds = max(0, int(((now or utcnow()) - moment).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def listed(inventory: Any, key: str) -> list[Any]:
    """``inventory[key]`` when the inventory is a dict and that is a list, else []."""
    value = inventory.get(key) if isinstance(inventory, dict) else None
    return value if isinstance(value, list) else []


def node_row(node: Node, rollout: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A node as the fleet table shows it: releases, HA, read-only, agent, packages, patches."""
    # Inventories stored before heartbeats were checked may hold anything: what is not
    # the documented shape is shown as unknown, never a failed page.
    inv = node.inventory if isinstance(node.inventory, dict) else {}
    ha: dict[str, Any] = inv["ha"] if isinstance(inv.get("ha"), dict) else {}
    packages = [p for p in listed(inv, "packages") if isinstance(p, dict)]
    patches = [p for p in listed(inv, "patches") if isinstance(p, dict)]
    return {
        "name": node.name,
        "hostname": node.hostname,
        "running": node.running_version,
        "assigned": node.assigned_version,
        "status": inv.get("status"),
        "ha_mode": ha.get("mode") if ha.get("enabled") else None,
        "ha_role": ha.get("assigned_role"),
        "read_only": ha.get("read_only"),
        "last_seen": age(node.last_seen_at),
        "seen_at": node.last_seen_at,
        "packages": [
            {"name": p.get("name"), "version": p.get("version"), "oper": p.get("oper_status")}
            for p in packages
        ],
        "packages_down": sum(1 for p in packages if p.get("oper_status") not in (None, "up")),
        "packages_all_up": bool(packages) and all(p.get("oper_status") == "up" for p in packages),
        # Loaded only when NSO listed it: an agent that could not ask NSO (stopped, its CLI
        # down) leaves `loaded` out, and those files are shown as such.
        "patches": [p.get("module") for p in patches if p.get("loaded") is True],
        "patches_unknown": [p.get("module") for p in patches if p.get("loaded") is None],
        "patches_unloaded": [p.get("module") for p in patches if p.get("loaded") is False],
        "labels": node.labels or [],
        "rollout": rollout,
    }


def _percent(moment: datetime, start: datetime, span: float) -> float:
    return round(100 * (moment - start).total_seconds() / span, 2)


def timeline(job: Job) -> Optional[dict[str, Any]]:
    """The job's steps per node as bars over time, with an HA job's write windows drawn
    across them; None before a step started."""
    started = [s for s in job.steps if s.started_at is not None]
    if not started:
        return None
    now = utcnow()
    windows = ha_windows.spans(job)
    start = min(s.started_at for s in started if s.started_at)
    end = max([s.finished_at or now for s in started] + [w["end"] for w in windows] + [start])
    span = max((end - start).total_seconds(), 1.0)
    rows: dict[str, list[dict[str, Any]]] = {}
    for step in started:
        began = step.started_at or start
        finish = step.finished_at or now
        left = _percent(began, start, span)
        rows.setdefault(step.node.name, []).append(
            {
                "left": left,
                "width": max(0.5, _percent(finish, start, span) - left),
                "state": step.state,
                "title": f"{step.seq}. {step.name}: {step.state}, "
                f"{(finish - began).total_seconds():.1f} s",
            }
        )
    return {
        "seconds": round(span, 1),
        "rows": rows,
        "windows": [
            {
                "kind": w["kind"],
                "open": w["open"],
                "left": _percent(w["start"], start, span),
                "width": max(
                    0.5, _percent(w["end"], start, span) - _percent(w["start"], start, span)
                ),
                "seconds": round((w["end"] - w["start"]).total_seconds(), 1),
            }
            for w in windows
        ],
    }
