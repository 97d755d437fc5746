"""The HA steps of an HA-coordinated upgrade (docs/agent-protocol.md, "HA steps").

The server runs the choreography: it hands each member's agent these steps in the order of
the plan (read-only, be-primary, enable, wait for the secondaries, verify) between the
single-node steps (backup, stop, switch, start...). Each step here changes one node's HA
state, and first looks whether that state is already there, so a step run again by a
restarted agent ends in the same place. Every wait is bounded by the step's ``timeout``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from agent import trust
from agent.errors import AgentError, StepFailed
from agent.nso import HaStatus
from agent.steps import single_node
from agent.steps.context import StepContext
from agent.steps.shared import check_version

POLL = 0.2  # seconds between two looks at `show high-availability` while waiting
DEFAULT_TIMEOUTS = {"ha_be_primary": 60.0, "ha_enable": 120.0, "ha_wait_secondaries": 300.0}


def _timeout(ctx: StepContext) -> float:
    name = str(ctx.step.get("name"))
    return trust.seconds(ctx.params.get("timeout"), "timeout", DEFAULT_TIMEOUTS.get(name, 60.0))


def _wait_ha(
    ctx: StepContext, done: Callable[[HaStatus], bool], timeout: float
) -> tuple[HaStatus, bool]:
    """Look at ``show high-availability`` until ``done`` or ``timeout``: (last status, done)."""
    deadline = time.monotonic() + timeout
    while True:
        status = ctx.nso.show_ha_status()
        if done(status):
            return status, True
        if time.monotonic() >= deadline:
            return status, False
        time.sleep(POLL)


def _describe(st: HaStatus) -> str:
    """One node's HA state as an operator reads it in a message."""
    if not st["enabled"]:
        return "HA disabled"
    parts = [f"mode {st['mode']}"]
    if st["current_id"]:
        parts.append(f"current-id {st['current_id']}")
    if st["assigned_role"]:
        parts.append(f"assigned-role {st['assigned_role']}")
    if st["be_secondary_result"]:
        parts.append(f"be-secondary-result {st['be_secondary_result']!r}")
    parts.append(f"read-only {str(st['read_only']).lower()}")
    if st["mode"] == "primary":
        parts.append(f"connected secondaries [{', '.join(st['connected_secondaries'])}]")
    return "HA enabled, " + ", ".join(parts)


def _role_problems(st: HaStatus, mode: str, ha_id: str, secondaries: list[str]) -> list[str]:
    """How a node differs from the role the group gives it (empty: it has that role)."""
    problems = []
    if not st["enabled"]:
        problems.append("HA is disabled")
    if st["mode"] != mode:
        problems.append(f"mode is {st['mode']}, expected {mode}")
    if st["current_id"] != ha_id:
        problems.append(f"current-id is {st['current_id']}, expected {ha_id}")
    missing = [s for s in secondaries if s not in st["connected_secondaries"]]
    if missing:
        problems.append(f"secondaries not connected: {', '.join(missing)}")
    return problems


def _role_params(ctx: StepContext) -> tuple[str, str, list[str]]:
    """(mode, ha_id, secondaries) of ``ha_check`` and ``ha_verify``; a secondary has none."""
    p = ctx.params
    mode = trust.ha_mode(p.get("mode"), "mode")
    ha_id = trust.ha_id(p.get("ha_id"), "ha_id")
    return mode, ha_id, trust.ha_ids(p, "secondaries") if mode == "primary" else []


def ha_check(ctx: StepContext) -> dict[str, Any]:
    """The node has the role the group gives it and takes writes: nothing has started yet."""
    return check_role(ctx, "upgrade", read_only_allowed=False)


def check_role(ctx: StepContext, job: str, read_only_allowed: bool) -> dict[str, Any]:
    """The node has the role the group gives it (and, unless `read_only_allowed`, takes
    writes); StepFailed naming every difference, before `job` (the kind of job, as the
    operator starts it again) changed anything."""
    mode, ha_id, secondaries = _role_params(ctx)
    st = ctx.nso.show_ha_status()
    problems = _role_problems(st, mode, ha_id, secondaries)
    if st["read_only"] and not read_only_allowed:
        problems.append("read-only mode is on (another upgrade, or an operator, left it)")
    if problems:
        raise StepFailed(
            f"this node is not the HA {mode} {ha_id} the group describes: {'; '.join(problems)} "
            f"({_describe(st)}). Nothing was changed: bring the cluster back to its nominal "
            f"roles (or correct the group) and start the {job} again"
        )
    return {
        "ha_mode": st["mode"],
        "connected_secondaries": st["connected_secondaries"],
        "read_only": st["read_only"],
    }


def ha_read_only(ctx: StepContext) -> dict[str, Any]:
    on = trust.boolean(ctx.params.get("mode"), "mode")
    return {"read_only": ctx.nso.ensure_ha_read_only(on)}


def ha_be_primary(ctx: StepContext) -> dict[str, Any]:
    """``be-primary`` (unless primary already), then read-only mode as the step asks: an
    acting primary that took over by failover is read-only, one made by be-primary may not
    be, and the plan decides which it needs."""
    read_only = trust.boolean(ctx.params.get("read_only"), "read_only")
    timeout = _timeout(ctx)
    st = ctx.nso.show_ha_status()
    if st["mode"] == "primary":
        ctx.log("this node is HA primary already")
    else:
        ctx.progress(20, f"high-availability be-primary ({_describe(st)})")
        ctx.nso.ha_be_primary()
        st, done = _wait_ha(ctx, lambda s: s["mode"] == "primary", timeout)
        if not done:
            raise StepFailed(
                f"this node did not become HA primary within {timeout:.0f} s of "
                f"'high-availability be-primary' ({_describe(st)}); look at ncs.log and "
                "'show high-availability' on it, then retry the step"
            )
    return {"ha_mode": "primary", "read_only": ctx.nso.ensure_ha_read_only(read_only)}


def ha_enable(ctx: StepContext) -> dict[str, Any]:
    """``high-availability enable``: the node takes its role by its HA start-up settings
    (a secondary joins the acting primary). Done when its mode is the one asked."""
    mode = trust.ha_mode(ctx.params.get("mode"), "mode")
    timeout = _timeout(ctx)
    st = ctx.nso.show_ha_status()
    if st["enabled"] and st["mode"] == mode:
        ctx.log(f"HA is enabled and this node is {mode} already")
        return {"ha_mode": st["mode"], "read_only": st["read_only"]}
    if st["enabled"] and st["mode"] != "none":
        raise StepFailed(
            f"this node is HA {st['mode']}, the step asks for {mode} ({_describe(st)}); "
            "enable does not change a role a node has: check the cluster by hand"
        )
    ctx.progress(20, f"high-availability enable (expecting mode {mode})")
    ctx.nso.ha_enable()
    st, done = _wait_ha(ctx, lambda s: s["mode"] != "none", timeout)
    if not done or st["mode"] != mode:
        why = (
            f"NSO's be-secondary-result: {st['be_secondary_result']!r}"
            if st["be_secondary_result"]
            else _describe(st)
        )
        hint = (
            "a secondary joins only a primary of the same NSO version with the same crypto "
            "keys; fix that, then retry the step"
            if mode == "secondary"
            else "a primary that finds another acting primary joins it instead; check the "
            "cluster's roles, then retry the step"
        )
        raise StepFailed(
            f"this node is not HA {mode} {timeout:.0f} s after 'high-availability enable' "
            f"(mode {st['mode']}; {why}): {hint}"
        )
    return {"ha_mode": st["mode"], "read_only": st["read_only"]}


def ha_wait_secondaries(ctx: StepContext) -> dict[str, Any]:
    """On the primary: every listed secondary connected (they have the primary's data)."""
    wanted = trust.ha_ids(ctx.params, "secondaries")
    timeout = _timeout(ctx)
    st, _ = _wait_ha(
        ctx,
        lambda s: s["mode"] != "primary" or set(wanted) <= set(s["connected_secondaries"]),
        timeout,
    )
    missing = [s for s in wanted if s not in st["connected_secondaries"]]
    if st["mode"] != "primary" or missing:
        raise StepFailed(
            (
                f"this node is not HA primary ({_describe(st)}): secondaries connect only to "
                "a primary; check the cluster's roles"
                if st["mode"] != "primary"
                else f"secondaries {', '.join(missing)} did not connect within {timeout:.0f} s "
                f"({_describe(st)}); look at 'show high-availability' on them"
            )
            + ", then retry the step"
        )
    return {"connected_secondaries": st["connected_secondaries"]}


def ha_verify(ctx: StepContext) -> dict[str, Any]:
    """The member's role, and what ``verify`` checks (release, packages), after the
    upgrade; then the data fingerprint, which the server compares across the members: the
    data must be the primary's everywhere. A failure carries ``nso_running``."""
    mode, ha_id, secondaries = _role_params(ctx)
    verified = single_node.verify(ctx)
    version = verified["version"]
    try:
        st = ctx.nso.show_ha_status()
        problems = _role_problems(st, mode, ha_id, secondaries)
        try:
            check_version(ctx, version)  # the release a restart of this member would run
        except StepFailed as exc:
            problems.append(str(exc))
        if problems:
            raise StepFailed(
                f"HA member {ha_id} is not as the upgrade should leave it: "
                + "; ".join(problems)
                + f" ({_describe(st)}). NSO runs: finish by hand or roll back"
            )
        fingerprint, lines = ctx.nso.running_config_fingerprint()
    except AgentError as exc:  # NSO runs and takes writes: the server must not restore
        why = (
            str(exc)
            if isinstance(exc, StepFailed)
            else f"NSO runs but could not be verified: {exc}"
        )
        raise StepFailed(why, {"nso_running": True, "version": version}) from None
    return {
        "ha_mode": st["mode"],
        "connected_secondaries": st["connected_secondaries"],
        "version": version,
        "fingerprint": fingerprint,
        "fingerprint_lines": lines,
    }
