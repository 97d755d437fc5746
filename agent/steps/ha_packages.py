"""The steps of a package upgrade on an HA group (docs/ha-upgrades.md, "Package upgrades on
an HA group"): each member's HA role checked first, ``packages ha sync`` on the primary,
and what every member loads afterwards. Staging, backups and ``software packages install``
are the single-node steps (``packages.py``).

NSO sets the primary read-only while ``packages ha sync`` runs and puts the previous mode
back when it succeeds, but leaves the node read-WRITE when it fails (the guide, "package
upgrade in an HA setup"): ``ha_sync_packages`` records the mode first and puts it back,
confirmed, before it reports a failure.
"""

from __future__ import annotations

import time
from typing import Any

from agent import trust
from agent.errors import AgentError, CliError, StepFailed
from agent.nso import HA_SYNC_VARIANTS
from agent.steps.context import StepContext
from agent.steps.ha import _describe, check_role
from agent.steps.package_links import EXTRA_DIR, restore_package_links

NSO_SAID_MAX = 1200  # characters of NSO's output a failure message quotes (the end of it)
# How long a rerun waits for a sync an earlier attempt sent to end, and how often it looks.
SYNC_SETTLE_S = 600.0
SYNC_POLL_S = 2.0


def _packages(ctx: StepContext) -> list[tuple[str, str]]:
    """(name, version) of each entry of the ``packages`` param, both checked."""
    found = []
    for i, item in enumerate(trust.listed(ctx.params, "packages", "packages")):
        if not isinstance(item, dict):
            raise trust.refuse(f"packages[{i}]", item, "expected {name, version}")
        found.append(
            (
                trust.package_name(item.get("name"), f"packages[{i}].name"),
                trust.package_version(item.get("version"), f"packages[{i}].version"),
            )
        )
    return found


def ha_package_check(ctx: StepContext) -> dict[str, Any]:
    """The member has the role the group gives it, as ``ha_check`` checks it, but may be
    read-only: an operator may hold the cluster read-only on purpose, and the sync keeps
    the primary's mode as it finds it."""
    return check_role(ctx, "package upgrade", read_only_allowed=True)


def ha_sync_packages(ctx: StepContext) -> dict[str, Any]:
    """On the primary: ``packages ha sync and-reload { wait-commit-queue-empty }`` (or
    ``and-add``). ``restore_links`` (a job's way back): first the package links the backup
    saved are put back, so the sync brings every member back to them."""
    variant = ctx.params.get("sync")
    if variant not in HA_SYNC_VARIANTS:
        raise trust.refuse("sync", variant, "expected and-reload or and-add")
    targets = _packages(ctx)
    saved = trust.checked_path(ctx, "restore_links", EXTRA_DIR)
    # A restarted agent runs the step again with NSO's mode possibly changed by the first
    # attempt: the mode before is the one recorded then.
    before = ctx.journal.fact("read_only_before")
    if not isinstance(before, bool):
        st = ctx.nso.show_ha_status()
        if st["mode"] != "primary":
            raise StepFailed(
                f"packages ha sync runs on the HA primary, and this node is not one "
                f"({_describe(st)}): nothing was changed; check the cluster's roles, then "
                "retry the step"
            )
        before = st["read_only"]
        ctx.journal.update("read_only_recorded", read_only_before=before)
    if ctx.journal.fact("sync_sent"):
        # An earlier attempt sent the sync and the agent lost track (restarted, or the CLI
        # went away): never send it twice. Wait for NSO to settle, then judge what it did.
        failures, said = _earlier_sync(ctx, targets, before)
    else:
        if saved is not None:
            ctx.progress(10, "putting back the package links saved at the backup")
            restore_package_links(ctx, saved)
        ctx.progress(
            30, f"packages ha sync {variant} (read-only mode {str(before).lower()} before)"
        )
        ctx.journal.update("sync_sent", sync_sent=True)
        try:
            synced = ctx.nso.packages_ha_sync(str(variant))
            failures, said = synced.failures, synced.output
        except CliError as exc:
            failures, said = [str(exc)], exc.output or str(exc)
    if failures:
        raise StepFailed(
            f"packages ha sync {variant} failed; NSO said:\n{said.strip()[-NSO_SAID_MAX:]}\n"
            f"{_primary_loads(ctx, targets)}{_read_only_back(ctx, before)}. The job reads "
            "what each member loads now and says the way back "
            f"('nso-repo job show {ctx.job_id}'); find the cause in NSO's words above and in "
            "ncs.log on the members"
        )
    # NSO puts the mode before back after a successful sync: confirmed, set if it did not.
    return {"read_only_before": before, "read_only": ctx.nso.ensure_ha_read_only(before)}


def _earlier_sync(
    ctx: StepContext, targets: list[tuple[str, str]], before: bool
) -> tuple[list[str], str]:
    """The outcome of a sync an earlier attempt sent: (failures, what to say). NSO holds the
    primary read-only while it syncs; with read-only off before, a mode still on means the
    sync still runs, so the step waits (SYNC_SETTLE_S at most) rather than turn it off
    under NSO. Then the sync succeeded if this primary loads the job's packages, all up."""
    ctx.progress(30, "an earlier attempt sent the sync: waiting for NSO to finish it")
    deadline = time.monotonic() + SYNC_SETTLE_S
    while not before and ctx.nso.ha_read_only_mode() and time.monotonic() < deadline:
        time.sleep(SYNC_POLL_S)
    loaded = ctx.nso.package_states()
    missing = [
        f"{name} {version}"
        for name, version in targets
        if loaded.get(name, (None, None)) != (version, "up")
    ]
    if not missing:
        return [], ""
    said = (
        "an earlier attempt of this step sent 'packages ha sync' and lost track of it (the "
        "agent restarted, or the CLI went away); it was not sent again. This primary does "
        f"not load {', '.join(missing)} up"
    )
    return [said], said


def _read_only_back(ctx: StepContext, before: bool) -> str:
    """Read-only mode put back to ``before`` (NSO leaves it off after a failed sync)."""
    word = str(before).lower()
    try:
        ctx.nso.ensure_ha_read_only(before)
    except AgentError as exc:
        return (
            f"Read-only mode could NOT be put back to {word} ({exc}): set it on this node "
            f"by hand, 'high-availability read-only mode {word}'"
        )
    return (
        f"Read-only mode is back to {word}, as before the sync (confirmed by 'show "
        "high-availability status read-only-mode')"
    )


def _primary_loads(ctx: StepContext, targets: list[tuple[str, str]]) -> str:
    """Whether this primary reloaded: the versions of the job's packages it loads now."""
    if not targets:
        return ""
    try:
        seen = [(name, version, ctx.nso.package_version(name)) for name, version in targets]
    except AgentError as exc:
        return f"What this primary loads could not be read ({exc}). "
    shown = ", ".join(f"{name} {got or 'not loaded'}" for name, _, got in seen)
    did = "reloaded" if all(got == version for _, version, got in seen) else "did not reload"
    return f"This primary {did}: it loads {shown}. "


def ha_verify_packages(ctx: StepContext) -> dict[str, Any]:
    """What this member loads (every package's name, version and oper-status) and its
    read-only mode. Unless ``survey`` (after a failure, so the job can say what each member
    runs), it must load exactly ``packages``, each up, and the primary (``primary``) be as
    read-only as before the sync."""
    loaded = [
        {"name": name, "version": version, "oper_status": status}
        for name, (version, status) in sorted(ctx.nso.package_states().items())
        if status is not None
    ]
    read_only = ctx.nso.ha_read_only_mode()
    if not trust.flag(ctx.params, "survey"):
        problems = _differences(loaded, dict(_packages(ctx)))
        if trust.flag(ctx.params, "primary"):
            before = ctx.param("read_only_before")
            if not isinstance(before, bool):
                problems.append("the sync step recorded no read-only mode to compare with")
            elif before != read_only:
                problems.append(
                    f"read-only mode is {str(read_only).lower()}, it was "
                    f"{str(before).lower()} before the sync: 'high-availability read-only "
                    f"mode {str(before).lower()}'"
                )
        if problems:
            raise StepFailed(
                "this member is not as the package upgrade should leave it: "
                + "; ".join(problems)
                + ". NSO runs and takes writes: the job says what each member loads and "
                "the way back",
                {"nso_running": True},
            )
    return {"loaded": loaded, "read_only": read_only}


def _differences(loaded: list[dict[str, Any]], expected: dict[str, str]) -> list[str]:
    have = {p["name"]: p for p in loaded}
    problems = []
    for name, version in sorted(expected.items()):
        got = have.get(name)
        if got is None:
            problems.append(f"{name} is not loaded (expected {version})")
        elif got["version"] != version:
            problems.append(f"{name} {got['version']} is loaded, expected {version}")
        elif got["oper_status"] != "up":
            problems.append(f"{name} is {got['oper_status']}, not up")
    extra = sorted(set(have) - set(expected))
    if extra:
        problems.append(f"{', '.join(extra)} loaded, which the job does not expect")
    return problems
