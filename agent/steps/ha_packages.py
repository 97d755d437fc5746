"""The steps of a package upgrade on an HA group (docs/ha-upgrades.md, "Package upgrades on
an HA group"): each member's HA role checked first, ``packages ha sync`` on the primary,
and what every member loads afterwards. Staging, backups and ``software packages install``
are the single-node steps (``packages.py``).

NSO sets the primary read-only while ``packages ha sync`` runs and puts the previous mode
back when it succeeds, but leaves the node read-WRITE when it fails (the guide, "package
upgrade in an HA setup"): ``ha_sync_packages`` records the mode first and puts it back,
confirmed, before it reports a failure. It changes the mode only once NSO has ended the
sync: never while NSO may still hold it read-only for the sync.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent import packages as pkgs
from agent import trust
from agent.errors import AgentError, CliError, StepFailed
from agent.nso import HA_SYNC_VARIANTS
from agent.nso_cli import CliLost
from agent.steps.context import StepContext
from agent.steps.ha import _describe, check_role
from agent.steps.package_links import EXTRA_DIR, restore_package_links
from agent.steps.packages import removals

NSO_SAID_MAX = 1200  # characters of NSO's output a failure message quotes (the end of it)
# How long the sync may run, counted from when it was sent: the CLI's wait for its answer,
# and the wait for one whose end the agent did not see (the CLI went away, the agent
# restarted). One bound for both: a shorter wait would give up on a sync NSO still runs
# and put read-only mode back under it. A step may carry another (``sync_timeout``).
SYNC_TIMEOUT_S = 3600.0
SYNC_POLL_S = 2.0  # how often that wait reads NSO, at most
# NSO copies the packages to the secondaries before it holds the primary read-only: until
# then a sync looks like one that failed when the primary was read-write before (read-
# write, the old packages). Such a look is taken as the end only this long after the sync
# was sent (at most a quarter of its bound), however steady.
SYNC_SETTLE_S = 600.0

# Package name -> (package-version, oper-status), as `show packages` gives them.
PackageStates = dict[str, tuple[Optional[str], Optional[str]]]


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
    saved are put back, so the sync brings every member back to them. ``sync_timeout``:
    how long the sync may run (SYNC_TIMEOUT_S).

    When the agent does not see the sync end (the CLI went away while it ran, or the agent
    restarted after sending it), it is never sent again: the step waits, within that same
    bound, for NSO to end it, judges it by what this primary loads, and only then puts
    read-only mode back. If NSO does not settle in time the outcome is unknown and the mode
    is left as NSO holds it, and the step says so."""
    variant = ctx.params.get("sync")
    if variant not in HA_SYNC_VARIANTS:
        raise trust.refuse("sync", variant, "expected and-reload or and-add")
    targets = _packages(ctx)
    saved = trust.checked_path(ctx, "restore_links", EXTRA_DIR)
    bound = trust.seconds(ctx.params.get("sync_timeout"), "sync_timeout", SYNC_TIMEOUT_S)
    # A rollback's sync ends in the mode the group had before the upgrade, not in the one a
    # failed upgrade may have left (NSO leaves read-write; a lost sync may leave read-only).
    after = ctx.params.get("read_only_after")
    if after is not None and not isinstance(after, bool):
        raise trust.refuse("read_only_after", after, "expected true or false")
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
    judged = ctx.journal.fact("sync_said")
    if ctx.journal.fact("sync_sent") and isinstance(judged, str):
        # An earlier attempt judged the ended sync, then stopped in what follows (links,
        # read-only mode), which changes what a new look would judge by: its verdict
        # stands, and only what follows it runs again (each part may run twice).
        sync = Sync(str(variant), targets, before, bound, time.monotonic(), after)
        ctx.progress(60, "an earlier attempt saw the sync end: finishing after it")
        said = judged
    elif ctx.journal.fact("sync_sent"):
        # An earlier attempt sent the sync and the agent lost track (restarted, or the CLI
        # went away): never send it twice. Wait for NSO to settle, then judge what it did.
        sync = Sync(str(variant), targets, before, bound, _earlier_deadline(ctx, bound), after)
        ctx.progress(30, "an earlier attempt sent the sync: waiting for NSO to end it")
        said = _lost_sync(ctx, sync, EARLIER)
    else:
        if saved is not None:
            ctx.progress(10, "putting back the package links saved at the backup")
            if ctx.journal.fact("links_before_restore") is None:
                # What the load path linked before: NSO loads it until a sync succeeds.
                links = pkgs.current_links(ctx.paths.load_dir)
                ctx.journal.update("links_recorded", links_before_restore=links)
            restore_package_links(ctx, saved)
        ctx.progress(
            30, f"packages ha sync {variant} (read-only mode {str(before).lower()} before)"
        )
        ctx.journal.update("sync_sent", sync_sent=True, sync_sent_at=time.time())
        sync = Sync(str(variant), targets, before, bound, time.monotonic() + bound, after)
        try:
            synced = ctx.nso.packages_ha_sync(sync.variant, timeout=bound)
            said = _nso_said(synced.output) if synced.failures else _unlike_success(ctx, sync)
        except CliLost as exc:
            # Not a refusal: NSO may still be syncing, holding the primary read-only.
            ctx.progress(60, f"{exc}; waiting for NSO to end the sync")
            said = _lost_sync(ctx, sync, f"{exc}. It was not sent again")
        except CliError as exc:
            said = _nso_said(exc.output or str(exc))
    # Kept before the links or the mode change: a rerun judging again would read them as
    # the sync's doing (a success whose mode was set read-write taken for a failure).
    ctx.journal.update("sync_judged", sync_said=said)
    if said and saved is not None:
        said += _links_after_failure(ctx)
    if said:
        raise StepFailed(
            f"packages ha sync {variant} failed; {said}\n"
            f"{_primary_loads(ctx, targets)}{_read_only_back(ctx, before)}. The job reads "
            "what each member loads now and says the way back "
            f"('nso-repo job show {ctx.job_id}'); find the cause in ncs.log on the members (and "
            "in NSO's words above, when it answered)"
        )
    return {"read_only_before": before, "read_only": _mode_after_success(ctx, sync)}


EARLIER = (
    "An earlier attempt of this step sent 'packages ha sync' (or stopped just before it "
    "went out) and lost track of it (the agent restarted, or the CLI went away); it was not "
    "sent again"
)


@dataclass
class Sync:
    """A sync the step sent: what it should load, the read-only mode before it, and when
    the wait for its end gives up (``bound`` seconds after it was sent)."""

    variant: str
    targets: list[tuple[str, str]]
    before: bool
    bound: float
    deadline: float  # time.monotonic()
    after: Optional[bool] = None  # the mode to end in when it succeeds; None: ``before``


def _earlier_deadline(ctx: StepContext, bound: float) -> float:
    """The deadline of a sync an earlier attempt sent: ``bound`` after it was sent, as the
    journal recorded it (a journal without the time: ``bound`` from now)."""
    sent_at = ctx.journal.fact("sync_sent_at")
    left = bound
    if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool):
        left = min(bound, max(0.0, sent_at + bound - time.time()))
    return time.monotonic() + left


def _nso_said(output: str) -> str:
    return f"NSO said:\n{output.strip()[-NSO_SAID_MAX:]}"


def _unlike_success(ctx: StepContext, sync: Sync) -> str:
    """A sync NSO answered without a failure the agent can read, checked on this primary
    (what the sync prints is not documented: the answer alone is not taken): it loads what
    the step expects, each up, and NSO did not leave it read-write when it was read-only
    before. What is wrong, for the failure; empty when nothing is."""
    goal = _expected(ctx, sync.targets)
    try:
        # Read only when it was read-only before: only then does the mode say anything.
        held = ctx.nso.ha_read_only_mode() if sync.before else False
        wrong = _wrong(goal, ctx.nso.package_states(), sync.before, held)
    except AgentError as exc:
        wrong = [f"what this primary loads could not be read ({exc})"]
    if not wrong:
        return ""
    return f"NSO's answer named no failure, but {'; '.join(wrong)} ({goal.judged_by})"


def _missing(loaded: PackageStates, expected: dict[str, str]) -> list[str]:
    """The expected packages this node does not load at their version, up."""
    return [
        f"{name} {version} up (loaded: {_shown(loaded.get(name))})"
        for name, version in sorted(expected.items())
        if loaded.get(name, (None, None)) != (version, "up")
    ]


def _mode_after_success(ctx: StepContext, sync: Sync) -> bool:
    """NSO puts the mode before back after a successful sync: confirmed, set if it did not
    (it has ended the sync, so the mode is the step's to set); or the step's
    ``read_only_after``."""
    wanted = sync.before if sync.after is None else sync.after
    moved = _failed_over(ctx)
    if moved is not None:
        word = str(wanted).lower()
        raise StepFailed(
            f"packages ha sync {sync.variant} ended as it should on this node, but {moved}. "
            f"Read-only mode was NOT touched; the primary was to end read-only {word}: on the "
            "node that serves writes now check the roles and the mode ('show "
            f"high-availability status'; 'high-availability read-only mode {word}'). "
            f"'nso-repo job show {ctx.job_id}' says what each member loads and its HA mode"
        )
    try:
        return ctx.nso.ensure_ha_read_only(wanted)
    except AgentError as exc:
        word = str(wanted).lower()
        raise StepFailed(
            f"packages ha sync {sync.variant} succeeded, but read-only mode could NOT be "
            f"confirmed as {word}, as the step ends it ({exc}): on this node check 'show "
            "high-availability status read-only-mode' and set it with 'high-availability "
            f"read-only mode {word}' ('nso-repo job show {ctx.job_id}' says what each member "
            "loads; the sync is not to be sent again)"
        ) from None


def _lost_sync(ctx: StepContext, sync: Sync, how: str) -> str:
    """A sync whose end the agent did not see: what went wrong (empty: it succeeded), once
    NSO has ended it. Raises StepFailed, read-only untouched, when NSO has not by the
    sync's deadline: the step must not turn read-only off under a sync, nor call it back
    while NSO may still leave the primary read-write."""
    goal = _expected(ctx, sync.targets)
    poll = min(SYNC_POLL_S, sync.bound / 10)
    # A verdict counts once two looks in a row agree: the first may catch NSO between
    # two of its own steps. Two looks at least, even past the deadline.
    seen: Optional[list[str]] = None
    looks = 0
    settled_at = sync.deadline - sync.bound + min(SYNC_SETTLE_S, sync.bound / 4)
    while True:
        looks += 1
        try:
            verdict = _verdict(ctx, goal, sync.before)
            last = "NSO still holds this primary read-only, or it does not load them yet"
        except AgentError as exc:  # NSO restarting, the CLI away: look again
            verdict, last = None, f"NSO could not be read: {exc}"
        if verdict and not sync.before and time.monotonic() < settled_at:
            # Read-write with the old packages: failed, or still copying them out.
            verdict, last = None, "this primary is read-write and does not load them yet"
        if verdict is not None and verdict == seen:
            break
        seen = verdict
        if looks >= 2 and time.monotonic() >= sync.deadline:
            raise StepFailed(_unknown(ctx, sync, how, last))
        time.sleep(poll)
    if verdict:
        return f"{how}. Once NSO had settled: {'; '.join(verdict)} ({goal.judged_by})"
    ctx.log(f"the sync succeeded: this primary loads {goal.judged_by}, each up")
    return ""


def _verdict(ctx: StepContext, goal: Goal, before: bool) -> Optional[list[str]]:
    """What a sync NSO has ended did to this primary (what is wrong; empty: it succeeded),
    or None while it may still run. NSO holds the primary read-only while it syncs, puts
    the mode before back when it succeeds and leaves it read-write when it fails.

    Read-only as before, with every expected package up, is no proof the sync ended when
    it takes packages out: the rollback of an upgrade that added one, or an upgrade that
    only removes one, starts from a primary that loads all the others already. Until NSO
    no longer loads those it takes out, it may still run."""
    held = ctx.nso.ha_read_only_mode()
    if held and not before:
        return None
    loaded = ctx.nso.package_states()
    if held and (_missing(loaded, goal.packages) or _beside(loaded, goal)):
        return None  # read-only as before: a sync still running looks the same
    return _wrong(goal, loaded, before, held)


def _wrong(goal: Goal, loaded: PackageStates, before: bool, held: bool) -> list[str]:
    """What is wrong with a sync NSO has ended, seen on this primary (empty: nothing)."""
    missing = _missing(loaded, goal.packages)
    wrong = [f"this primary does not load {', '.join(missing)}"] if missing else []
    beside = _beside(loaded, goal)
    if beside:
        wrong.append(f"this primary still loads {', '.join(beside)}, which the sync takes out")
    if not goal.packages and not goal.whole:
        wrong.append("there is nothing to judge the sync by, so it is not taken as succeeded")
    if before and not held:
        wrong.append("NSO left this primary read-write, as it does when the sync fails")
    return wrong


def _beside(loaded: PackageStates, goal: Goal) -> list[str]:
    """The packages the sync takes out that this primary still loads."""
    return sorted(set(loaded) & goal.taken_out)


def _shown(state: Optional[tuple[Optional[str], Optional[str]]]) -> str:
    if state is None:
        return "none"
    return f"{state[0] or '(no version)'}, {state[1] or 'no oper-status'}"


# An HA node id as the server takes it in a result (repo_server/upgrades/results.py).
_HA_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class Goal:
    """What this primary loads, each up, once the sync succeeded: ``packages`` by name,
    ``whole`` when they are every package of the load path (an empty one: none at all), and
    ``taken_out``, the packages it loads no more; ``judged_by`` says how the step knows."""

    packages: dict[str, str]
    whole: bool
    judged_by: str
    taken_out: frozenset[str] = frozenset()


def _expected(ctx: StepContext, targets: list[tuple[str, str]]) -> Goal:
    """The step's packages, else (a rollback's sync, or one that only removes packages,
    names none) every package in the load path. Taken out: the step's ``remove``, and what
    the load path linked before this step put the saved links back (a rollback's). A load
    path that cannot be read gives nothing to judge by."""
    out = set(removals(ctx))
    recorded = ctx.journal.fact("links_before_restore")
    for target in recorded.values() if isinstance(recorded, dict) else ():
        if target:
            with contextlib.suppress(OSError):  # a relative link points from the load path
                out.add(pkgs.package_identity(ctx.paths.load_dir / str(target))[0])
    if targets:
        goal = dict(targets)
        return Goal(goal, False, "the step's packages", frozenset(out - set(goal)))
    load_dir = ctx.paths.load_dir
    where = ctx.paths.host_path(load_dir)
    try:
        entries = sorted(load_dir.iterdir())
    except OSError as exc:
        return Goal({}, False, f"{where} could not be read: {exc.strerror or exc}")
    found = dict(pkgs.package_identity(entry) for entry in entries)
    found = {name: version for name, version in found.items() if version}
    judged_by = f"judged by the packages in {where}, as the step names none"
    return Goal(found, True, judged_by, frozenset(out - set(found)))


def _unknown(ctx: StepContext, sync: Sync, how: str, last: str) -> str:
    """The failure when NSO did not end the sync in time: read-only is not touched."""
    word = str(sync.before).lower()
    try:
        now = f"it is {str(ctx.nso.ha_read_only_mode()).lower()} now"
    except AgentError as exc:
        now = f"it could not be read ({exc})"
    return (
        f"packages ha sync {sync.variant}: the outcome is UNKNOWN. {how}. The agent waited "
        f"until the sync's bound ({sync.bound:.0f} s after it was sent) and NSO did not "
        f"settle ({last}). Read-only mode was NOT touched: {now}, it was {word} before the "
        "sync; NSO holds the primary read-only while it syncs, puts the mode back when it "
        "succeeds and leaves the node read-write when it fails. On this primary check ncs.log, "
        "'show packages' and 'show high-availability status read-only-mode'; once NSO has "
        "ended the sync, set the mode back with 'high-availability read-only mode "
        f"{word}'. 'nso-repo job show {ctx.job_id}' says what each member loads and the "
        "way back"
    )


def _links_after_failure(ctx: StepContext) -> str:
    """The load path after a sync that failed (NSO has ended it) once this step had put the
    saved links back. When NSO loads just what the load path linked before the step (it
    reloaded nothing), those links go back: the load path again links what NSO loads, else
    a restart, and every plan built on the heartbeats, would take the saved set for what
    runs. When it loads anything else, NSO reloaded some of it: the links stay, said."""
    load_dir = ctx.paths.load_dir
    where = ctx.paths.host_path(load_dir)
    recorded = ctx.journal.fact("links_before_restore")
    kept = (
        f"\n{where} holds the links saved at the backup, which this step put back before the "
        "sync: a restart of NSO loads them. Roll back again once the cause is fixed, or "
        "relink it by hand to what NSO loads."
    )
    if not isinstance(recorded, dict) or not all(recorded.values()):
        return kept  # not recorded (an older attempt), or an entry that was no link
    links = {str(name): Path(str(target)) for name, target in recorded.items()}
    try:
        linked = dict(pkgs.package_identity(load_dir / target) for target in links.values())
        loads = {n: v for n, (v, _) in ctx.nso.package_states().items() if v}
    except (AgentError, OSError) as exc:
        return kept + f" (what NSO loads could not be compared: {exc})"
    if loads != linked:
        return kept
    try:
        pkgs.relink_named(load_dir, links)
    except (OSError, ValueError) as exc:
        return (
            f"\nThe links saved at the backup, which this step had put in {where}, could NOT "
            f"be taken out again ({exc}): {where} differs from what NSO loads; relink it by "
            "hand before NSO restarts."
        )
    ctx.log(f"relinked {where} to the {len(links)} links it held before this step")
    return (
        f"\nNSO reloaded nothing: the links this step had put in {where} (those saved at the "
        "backup) were taken out again, and it links what NSO loads, as before the step."
    )


def _failed_over(ctx: StepContext) -> Optional[str]:
    """Why this node is no longer the HA primary it was when the step began (a failover
    during the sync: NSO restarted, the node joined the new primary), in words; None while
    it is primary, or when its HA status cannot be read (its read-only mode is then still
    the step's to put back)."""
    try:
        st = ctx.nso.show_ha_status()
    except AgentError:
        return None
    if st["enabled"] and st["mode"] == "primary":
        return None
    acting = st["primary_id"]
    return (
        f"this node is no longer the HA primary ({_describe(st)}): the cluster failed over "
        "during the sync" + (f", and {acting} serves writes now" if acting else "")
    )


def _read_only_back(ctx: StepContext, before: bool) -> str:
    """Read-only mode put back to ``before`` (NSO leaves it off after a failed sync), on
    this node while it is the primary; after a failover the writer is another node, whose
    mode is said, not set: the roles are the operator's to look at first."""
    word = str(before).lower()
    moved = _failed_over(ctx)
    if moved is not None:
        return (
            f"Read-only mode was NOT touched: {moved}. The primary was read-only {word} "
            f"before the sync: on the node that serves writes now check it ('show "
            f"high-availability status') and set it with 'high-availability read-only mode "
            f"{word}'"
        )
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
    read-only as the sync left it."""
    loaded = [
        {"name": name, "version": version, "oper_status": status}
        for name, (version, status) in sorted(ctx.nso.package_states().items())
        if status is not None
    ]
    st = ctx.nso.show_ha_status()
    # Read on its own: unknown is not read-write (show_ha_status takes a missing line so).
    read_only = ctx.nso.ha_read_only_mode()
    mode = st["mode"] if st["enabled"] and st["mode"] in ("primary", "secondary") else "none"
    if not trust.flag(ctx.params, "survey"):
        problems = _differences(loaded, dict(_packages(ctx)))
        role = "primary" if trust.flag(ctx.params, "primary") else "secondary"
        if mode != role:
            problems.append(
                f"HA mode is {mode}, and the group makes this member {role} ({_describe(st)}): "
                "the cluster failed over, or this member left it"
            )
        if trust.flag(ctx.params, "primary"):
            # The mode the sync step ended in and confirmed: the one before it, or a
            # rollback's read_only_after.
            ended = ctx.param("read_only")
            if not isinstance(ended, bool):
                ended = ctx.param("read_only_before")
            if not isinstance(ended, bool):
                problems.append("the sync step recorded no read-only mode to compare with")
            elif ended != read_only:
                problems.append(
                    f"read-only mode is {str(read_only).lower()}, and the sync ended it "
                    f"{str(ended).lower()}: 'high-availability read-only mode "
                    f"{str(ended).lower()}'"
                )
        if problems:
            raise StepFailed(
                "this member is not as the package upgrade should leave it: "
                + "; ".join(problems)
                + ". NSO runs and takes writes: the job says what each member loads and "
                "the way back",
                {"nso_running": True},
            )
    follows = st["primary_id"]
    return {
        "loaded": loaded,
        "read_only": read_only,
        "ha_mode": mode,
        "primary_id": follows if follows and _HA_ID.fullmatch(follows) else None,
    }


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
