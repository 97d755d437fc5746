"""What an HA group upgrade left each member in, read from the steps that succeeded, and the
commands that finish by hand: what a job that stops ``needs_attention`` (or is cancelled)
says, so that no member is left stopped, read-only, without its HA role or on another
release without the job saying so.

Only what the members' agents reported done counts: a step handed out but not reported is
named as such ("at step ..."), never assumed done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from repo_server.upgrades.job_states import STEP_HANDED_OUT
from repo_server.upgrades.models import Job, Step


@dataclass
class Member:
    name: str
    primary: bool
    release: str
    running: bool
    read_only: bool
    role: str  # the HA role it took last: "primary", "secondary", "acting primary", "none"
    busy: Optional[str] = None  # a step handed out and not reported

    def shown(self) -> str:
        if not self.running:
            text = f"{self.name} is stopped, on NSO {self.release}"
        else:
            text = (
                f"{self.name} runs NSO {self.release}"
                + ("" if self.role == "none" else f" as {self.role}")
                + (", without its HA role" if self.role == "none" else "")
                + (", read-only" if self.read_only else "")
            )
        return text + (f" (step {self.busy} was under way)" if self.busy else "")


def _member(job: Job, node_id: int, name: str, primary: bool) -> Member:
    source, target = job.source_version or "?", job.target_version or "?"
    state = Member(name, primary, source, True, False, "primary" if primary else "secondary")
    for step in sorted((s for s in job.steps if s.node_id == node_id), key=lambda s: s.seq):
        if step.state in STEP_HANDED_OUT:
            state.busy = step.name
        if step.state != "succeeded":
            continue
        _apply(state, step, source, target)
    return state


def _apply(state: Member, step: Step, source: str, target: str) -> None:
    name, params = step.name, step.params or {}
    if name == "switch_current":
        state.release = target
    elif name == "recover":
        state.release, state.running, state.role = source, True, "none"
        state.read_only = params.get("read_only") is True
    elif name == "stop":
        state.running = False
    elif name == "start":
        state.running, state.role = True, "none"
        state.read_only = params.get("read_only") is True
    elif name == "ha_read_only":
        state.read_only = params.get("mode") is True
    elif name == "ha_be_primary":
        state.role = "acting primary"
    elif name == "ha_enable":
        state.role = str(params.get("mode") or "none")


def members(job: Job) -> list[Member]:
    o = job.options
    names = {n.id: n.name for n in job.nodes}
    order = [int(o["primary"]), int(o["failover"]), *[int(i) for i in o.get("others", [])]]
    return [_member(job, i, names[i], i == order[0]) for i in order]


def describe(job: Job) -> str:
    """The group member by member, and the commands that finish by hand."""
    group = members(job)
    primary = group[0]
    releases = {m.release for m in group}
    joined = [m for m in group[1:] if m.running and m.role == "secondary"]
    parts = [m.shown() for m in group]
    if len(releases) > 1:
        parts.insert(0, "the group is on mixed versions")
    if primary.running and not primary.read_only and primary.role != "secondary":
        parts.append(
            f"{primary.name} takes writes" + ("" if joined else " with no secondary behind them")
        )
    elif not any(m.running and not m.read_only and m.role in ("primary", "none") for m in group):
        parts.append("no member takes writes")
    todo = []
    for m in group[1:]:
        if m.running and m.role == "secondary":
            if m.read_only:
                todo.append(f"on {m.name}: 'high-availability read-only mode false'")
            continue
        if m.release != primary.release:
            todo.append(
                f"on {m.name}: fix the cause, point /opt/ncs/current at ncs-{primary.release} "
                f"and link the {primary.release} package builds into /var/opt/ncs/packages "
                "(the job staged them)"
            )
        elif not m.running:
            todo.append(f"on {m.name}: fix the cause")
        todo.append(
            f"on {m.name}: "
            + ("start NSO with package reload, then " if not m.running else "")
            + "'high-availability enable' (it joins the primary)"
        )
    if primary.running and primary.role in ("none", "secondary"):
        todo.insert(0, f"on {primary.name}: 'high-availability enable' (it takes the primary role)")
    elif not primary.running:
        todo.insert(0, f"on {primary.name}: fix the cause and start NSO")
    if primary.read_only:
        todo.append(
            f"on {primary.name}, once 'show high-availability' lists every secondary: "
            "'high-availability read-only mode false'"
        )
    return (
        "; ".join(parts)
        + ". To finish by hand: "
        + ("; ".join(todo) if todo else "check each member with 'show high-availability'")
    )
