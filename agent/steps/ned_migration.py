"""A major NED upgrade's migration (the guide's ``migrate`` action): move devices, named one
by one or by device group, to a new ned-id whose NED package is loaded beside the old one.

With ``dry_run`` NSO only reports what it would change; the operator reads that and then
confirms the real migration (docs/upgrades.md, "Major NED upgrade"). Every name is checked
before it reaches NSO (agent/ned.py), and every device is looked at before anything changes:
one that does not exist, or a group that does not, fails the step with nothing migrated.
Running the step again is safe: a device already on the new ned-id is not migrated twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from agent import ned, trust
from agent.errors import AgentError, NsoError, StepFailed
from agent.nso_cli import CliLost
from agent.steps.context import StepContext

MAX_TARGETS = 1000  # devices plus device groups one step may name
# What a result may carry (repo_server/upgrades/results.py checks the same): NSO's lines
# are cut to TEXT_MAX characters, and each device's lists shortened until the whole result
# fits RESULT_BUDGET bytes of JSON; the totals say how much there was, the log has it all.
TEXT_MAX = 512
ITEMS_MAX = 100
RESULT_BUDGET = 120_000
NOTHING = "nothing was migrated"  # what a refusal before any migrate says


def ned_migrate(ctx: StepContext) -> dict[str, Any]:
    params = ctx.params
    new_id = ned.ned_id(params.get("new_ned_id"), "new_ned_id")
    dry_run = trust.boolean(params.get("dry_run"), "dry_run")
    try:
        return _migrate(ctx, params, new_id, dry_run)
    except (StepFailed, NsoError) as exc:
        if dry_run:
            raise
        raise _said_with_earlier_moves(ctx, exc, new_id) from None


def _migrate(
    ctx: StepContext, params: dict[str, Any], new_id: str, dry_run: bool
) -> dict[str, Any]:
    # A device's ned-id reads back bare (`router-nc-2.0`), whether the request named it so
    # or prefixed (`x:router-nc-2.0`): compare with the bare one.
    target = ned.bare_ned_id(new_id)
    devices = [
        ned.device_name(v, f"devices[{i}]")
        for i, v in enumerate(trust.listed(params, "devices", "device names"))
    ]
    groups = [
        ned.group_name(v, f"device_groups[{i}]")
        for i, v in enumerate(trust.listed(params, "device_groups", "device group names"))
    ]
    if not devices and not groups:
        raise StepFailed(
            "the step names no device and no device group: nothing to migrate; name them "
            "in the request (devices, device_groups)"
        )
    if len(devices) + len(groups) > MAX_TARGETS:
        raise trust.refuse("devices", len(devices) + len(groups), f"at most {MAX_TARGETS}")

    members = {g: _members(ctx, g) for g in groups}
    targets = list(dict.fromkeys([*devices, *(d for g in groups for d in members[g])]))
    _check_as_dry_run(params, targets)
    current = _ned_ids(ctx, targets)
    # What the devices ran before the step's first attempt: what the result reports.
    before = current if dry_run else _first_ned_ids(ctx, current)
    missing = [d for d in targets if current[d] is None]
    if missing:
        raise StepFailed(
            f"NSO has no device {', '.join(missing[:20])}"
            + (f" (and {len(missing) - 20} more)" if len(missing) > 20 else "")
            + f": {NOTHING}; check the names (show running-config devices device)"
        )
    _check_ned_ids_as_dry_run(params, before)
    ctx.progress(10, f"{len(targets)} device(s) to {new_id}" + (" (dry-run)" if dry_run else ""))

    run = _Run(devices, groups, members, current, target, new_id)
    if not dry_run:
        _check_loss_as_dry_run(ctx, params, run)
        # From here NSO may move devices: a rerun's refusal says what this attempt moved.
        ctx.journal.update("migrating", migrate_sent=True)
    try:
        reported = _send(ctx, run, dry_run)
    except CliLost as exc:
        if dry_run:
            raise
        # NSO may have run the command, and may be running it still: what a read-back
        # shows now is not how it ends.
        raise StepFailed(
            f"lost the NSO CLI while it migrated devices to {new_id}: {exc}; NSO may have "
            "migrated some or all of them, and may still be at it: check each device's "
            "ned-id by hand (show running-config devices device D device-type) before "
            "running the migration again",
            result={"changed": True},
        ) from None
    except NsoError as exc:
        raise _failed(ctx, exc, new_id, dry_run, before) from None

    try:
        after = _ned_ids(ctx, targets)
    except NsoError as exc:
        raise StepFailed(
            f"the {'dry-run' if dry_run else 'migration'} to {new_id} ran, but reading the "
            f"devices' ned-ids back failed: {exc}; check them by hand",
            result={"changed": not dry_run},
        ) from None
    wrong = [d for d in targets if after[d] != (before[d] if dry_run else target)]
    if wrong:
        raise StepFailed(
            f"after the {'dry-run' if dry_run else 'migration'} NSO shows "
            + ", ".join(f"{d} on {after[d]}" for d in wrong[:20])
            + f"; expected {'no change' if dry_run else new_id}: check them by hand",
            result={"changed": any(after[d] != before[d] for d in targets)},
        )
    if not dry_run and params.get("expected_lost_data") is not None:
        # What NSO says the migration itself lost, against what the operator confirmed:
        # config written between the check's dry-run and the migrate.
        lost = _unseen_loss(_shown_loss(params["expected_lost_data"]), reported)
        if lost:
            raise StepFailed(
                f"the devices were migrated to {new_id}, but NSO says they lost data the "
                f"confirmed dry-run did not show ({'; '.join(lost[:20])}): it was written "
                "while the migration ran; restore it from the device or from the backup",
                result={"changed": True},
            )
    entries = [_entry(d, before[d], new_id, dry_run, reported.get(d), members) for d in targets]
    return {"ned_migration": _bounded(new_id, dry_run, entries)}


@dataclass(frozen=True)
class _Run:
    """What one step migrates: the devices and groups it names, each group's devices, and
    each device's ned-id now."""

    devices: list[str]
    groups: list[str]
    members: dict[str, list[str]]
    current: dict[str, Optional[str]]
    target: str  # the new ned-id, bare
    new_id: str  # as the step names it


def _send(ctx: StepContext, run: _Run, dry_run: bool) -> dict[str, ned.Migration]:
    """``migrate`` for each device and group of ``run`` that has a device to move: what NSO
    printed, by device."""
    reported: dict[str, ned.Migration] = {}
    steps = len(run.devices) + len(run.groups)
    for i, device in enumerate(run.devices):
        if run.current[device] != run.target:
            reported.update(ctx.nso.migrate_ned("device", device, run.new_id, dry_run))
        ctx.progress(10 + 80 * (i + 1) // steps, f"{device} done")
    for group in run.groups:
        # NSO migrates the whole group; a member on the new ned-id already has nothing to do.
        if any(run.current[d] != run.target for d in run.members[group]):
            answer = ctx.nso.migrate_ned("device-group", group, run.new_id, dry_run)
            _only_members(answer, run.members[group], group, dry_run)
            for device, found in answer.items():
                reported.setdefault(device, found)
    return reported


def _check_loss_as_dry_run(ctx: StepContext, params: dict[str, Any], run: _Run) -> None:
    """A confirmed migration loses no data its dry-run did not show (``expected_lost_data``:
    by device, the lost-data blocks shown and how many there were). Config written through
    NSO since (a leaf the new NED does not model) would be deleted unread: the same
    migration runs again as a dry-run right before, and nothing is migrated when it would
    lose more, or other, data than the operator read."""
    raw = params.get("expected_lost_data")
    if raw is None:
        return  # a dry-run, or a server that does not say
    shown = _shown_loss(raw)
    ctx.progress(8, "the dry-run again: the data it loses must be what was confirmed")
    try:
        fresh = _send(ctx, run, True)
    except (NsoError, StepFailed) as exc:
        # Said without `changed`: a rerun's failure then reads back what moved before.
        raise StepFailed(
            f"the dry-run that checks the migration against the confirmed one failed: {exc}; "
            f"{NOTHING}"
        ) from None
    unseen = _unseen_loss(shown, fresh)
    if unseen:
        raise StepFailed(
            "since the confirmed dry-run, the migration would lose data it did not show ("
            + "; ".join(unseen[:20])
            + f"): the devices' config changed; {NOTHING}. Run the dry-run again, read it, "
            "and confirm that one"
        )


def _unseen_loss(
    shown: dict[str, tuple[int, list[dict[str, str]]]], reported: dict[str, ned.Migration]
) -> list[str]:
    """Each device that loses more data, or other data, than ``shown``, in words."""
    unseen: list[str] = []
    for device, found in sorted(reported.items()):
        total, blocks = shown.get(device, (0, []))
        now = [_fields(b) for b in found.lost_data]
        whole = len(blocks) == total  # the confirmed result listed every block
        new = [b for b in now if b not in blocks] if whole else []
        if len(now) > total or new:
            what = "; ".join(" ".join(b.values()) for b in (new or now)[:5])
            unseen.append(f"{device} would lose {len(now)} (shown: {total}): {what}")
    return unseen


def _shown_loss(raw: Any) -> dict[str, tuple[int, list[dict[str, str]]]]:
    """``expected_lost_data`` checked: device -> (how many blocks, the blocks shown)."""
    if not isinstance(raw, dict) or len(raw) > MAX_TARGETS:
        raise trust.refuse("expected_lost_data", type(raw).__name__, "a map of device to loss")
    shown: dict[str, tuple[int, list[dict[str, str]]]] = {}
    for device, loss in raw.items():
        name = ned.device_name(device, "expected_lost_data")
        total = loss.get("total") if isinstance(loss, dict) else None
        blocks = loss.get("blocks") if isinstance(loss, dict) else None
        if (
            not isinstance(total, int)
            or isinstance(total, bool)
            or not isinstance(blocks, list)
            or not 0 <= len(blocks) <= total
            or not all(
                isinstance(b, dict) and all(isinstance(v, str) for v in b.values()) for b in blocks
            )
        ):
            raise trust.refuse(
                f"expected_lost_data[{name}]", type(loss).__name__, "{total, blocks}"
            )
        shown[name] = (total, [_fields(b) for b in blocks])
    return shown


def _members(ctx: StepContext, group: str) -> list[str]:
    """The devices NSO's ``migrate`` on ``group`` moves: those it names and, at any depth,
    those of the groups it nests (each group read once). A nested group's devices left out
    would be migrated without the operator being shown their changes and lost data."""
    found: list[str] = []
    seen: set[str] = set()
    todo = [group]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if len(seen) > MAX_TARGETS:
            raise StepFailed(
                f"device group {group} nests more than {MAX_TARGETS} groups: nothing was "
                "migrated; name smaller groups or the devices"
            )
        read = ctx.nso.device_group_members(name)
        if read is None:
            within = f" (nested in {group})" if name != group else ""
            raise StepFailed(
                f"NSO has no device group {name}{within}: nothing was migrated; check the "
                "name (show running-config devices device-group)"
            )
        devices, nested = read
        # Names NSO gives us go into commands too: the same grammar as the server's.
        source = f"NSO's device group {name}"
        found += [ned.device_name(d, f"member of {name}", source) for d in devices]
        todo += [ned.group_name(g, f"group nested in {name}", source) for g in nested]
    return list(dict.fromkeys(found))


def _only_members(
    answer: dict[str, ned.Migration], members: list[str], group: str, dry_run: bool
) -> None:
    """NSO's answer names only devices the agent found in the group: one it names besides
    (a kind of membership the agent does not read) was left out of what the operator is
    shown, and of every check after the migration."""
    strays = [d for d in answer if d not in members]
    if strays:
        raise StepFailed(
            f"NSO's answer to migrating device group {group} names "
            f"{', '.join(strays[:20])}, not found among the group's members "
            f"({', '.join(members[:20])}): "
            + (
                "the dry-run cannot show what the migration would do; "
                if dry_run
                else "NSO may have migrated those too: check them by hand; "
            )
            + "name the devices to migrate instead of the group",
            result={"changed": not dry_run},
        )


def _ned_ids(ctx: StepContext, devices: list[str]) -> dict[str, Optional[str]]:
    return {d: ctx.nso.device_ned_id(d) for d in devices}


def _check_as_dry_run(params: dict[str, Any], targets: list[str]) -> None:
    """A confirmed migration moves exactly the devices its dry-run showed the operator
    (``expected_devices``): a device group that gained or lost members since would move
    devices whose changes and lost data nobody read. Nothing is migrated then."""
    if params.get("expected_devices") is None:
        return  # a dry-run, or a server that does not say
    expected = [
        ned.device_name(v, f"expected_devices[{i}]")
        for i, v in enumerate(trust.listed(params, "expected_devices", "device names"))
    ]
    shown, now = set(expected), set(targets)
    added = [d for d in targets if d not in shown]
    gone = [d for d in expected if d not in now]
    if added or gone:
        said = [
            *([f"now also {', '.join(added[:20])}"] if added else []),
            *([f"no longer {', '.join(gone[:20])}"] if gone else []),
        ]
        raise StepFailed(
            "the devices to migrate differ from those the confirmed dry-run showed ("
            + "; ".join(said)
            + f"): a device group changed since; {NOTHING}. Run the dry-run again, "
            "read it, and confirm that one"
        )


def _check_ned_ids_as_dry_run(params: dict[str, Any], before: dict[str, Optional[str]]) -> None:
    """A confirmed migration moves each device from the ned-id its dry-run showed
    (``expected_ned_ids``): a device moved since, through NSO (one the dry-run showed
    ``already`` on the new ned-id, now back on the old one), would change in ways nobody
    read. ``before`` is each device's ned-id before this step's first attempt."""
    raw = params.get("expected_ned_ids")
    if raw is None:
        return  # a dry-run, or a server that does not say
    if not isinstance(raw, dict) or len(raw) > MAX_TARGETS:
        raise trust.refuse("expected_ned_ids", type(raw).__name__, "a map of device to ned-id")
    shown = {
        ned.device_name(d, "expected_ned_ids"): None
        if v is None
        else ned.bare_ned_id(ned.ned_id(v, f"expected_ned_ids[{d}]"))
        for d, v in raw.items()
    }
    moved = [d for d in before if d in shown and before[d] != shown[d]]
    if moved:
        raise StepFailed(
            "since the confirmed dry-run, "
            + ", ".join(f"{d} moved from {shown[d]} to {before[d]}" for d in moved[:20])
            + f": its changes and lost data were not shown; {NOTHING}. Run the dry-run "
            "again, read it, and confirm that one"
        )


def _first_ned_ids(ctx: StepContext, current: dict[str, Optional[str]]) -> dict[str, Optional[str]]:
    """Each device's ned-id before this step's first attempt (kept in the journal): an
    attempt after a crash finds some devices migrated already, and must still say it
    migrated them (the job's outcome depends on it), not that they were there before."""
    saved = ctx.journal.fact("ned_ids_before")
    first = dict(current)
    if isinstance(saved, dict):
        first.update(
            {d: v for d, v in saved.items() if d in first and (v is None or isinstance(v, str))}
        )
    ctx.journal.update("ned_ids_read", ned_ids_before=first)
    return first


def _failed(
    ctx: StepContext,
    exc: NsoError,
    new_id: str,
    dry_run: bool,
    before: dict[str, Optional[str]],
) -> StepFailed:
    """NSO refused: say so in its words, and which devices it had migrated by then (read
    back, not assumed), so the job says whether the node changed."""
    what = "dry-run" if dry_run else "migration"
    moved: list[str] = []
    if not dry_run:
        try:
            moved = _moved_since(ctx, before, ned.bare_ned_id(new_id))
        except NsoError as read:
            # Not known which devices moved: say so, never "none".
            return StepFailed(
                f"NSO refused the {what} to {new_id}: {exc}; reading the devices' ned-ids "
                f"back then failed too ({read}): some may have been migrated, check them "
                "by hand before running the migration again",
                result={"changed": True},
            )
    done = (
        f"; already on {new_id}: {', '.join(moved[:20])}" + (" ..." if len(moved) > 20 else "")
        if moved
        else "; no device was migrated"
    )
    return StepFailed(
        f"NSO refused the {what} to {new_id}: {exc}{done}; fix the cause and run the "
        "migration again (a dry-run first): devices already on the new ned-id are skipped",
        result={"changed": bool(moved)},
    )


def _moved_since(ctx: StepContext, before: dict[str, Any], target: str) -> list[str]:
    """The devices on ``target`` now that were on another ned-id ``before`` (read back from
    NSO: raises as `_ned_ids` does)."""
    after = _ned_ids(ctx, [d for d, was in before.items() if was != target])
    return [d for d, now in after.items() if now == target]


def _said_with_earlier_moves(ctx: StepContext, exc: AgentError, new_id: str) -> StepFailed:
    """A real migration's failure, with what this step's attempts migrated: a failure
    that decided nothing about it (a check before any migrate, in an attempt after a
    crash that had migrated devices) must not say nothing was. The ned-ids read before
    the first attempt are in the journal, and whether an attempt got to migrate."""
    result = dict(exc.result) if isinstance(exc, StepFailed) else {}
    saved = ctx.journal.fact("ned_ids_before")
    began = ctx.journal.fact("migrate_sent") is True
    plain = exc if isinstance(exc, StepFailed) else StepFailed(str(exc))
    if "changed" in result or not began or not isinstance(saved, dict):
        return plain
    try:
        first = {d: v for d, v in saved.items() if isinstance(d, str)}
        moved = _moved_since(ctx, first, ned.bare_ned_id(new_id))
    except AgentError as read:
        return StepFailed(
            f"{str(exc).replace(NOTHING, 'this attempt migrated nothing')}; an earlier "
            f"attempt of this step may have migrated devices, and reading them back failed "
            f"({read}): check them by hand",
            result={**result, "changed": True},
        )
    if not moved:
        return plain
    return StepFailed(
        f"{str(exc).replace(NOTHING, 'this attempt migrated nothing')}; an earlier attempt "
        f"of this step had migrated {', '.join(moved[:20])}"
        + (" ..." if len(moved) > 20 else "")
        + f" to {new_id} (read back now)",
        result={**result, "changed": True},
    )


def _entry(
    device: str,
    old: Optional[str],
    new_id: str,
    dry_run: bool,
    found: Optional[ned.Migration],
    members: dict[str, list[str]],
) -> dict[str, Any]:
    modified = [_fields(f) for f in (found.modified_paths if found else [])]
    lost = [_fields(f) for f in (found.lost_data if found else [])]
    return {
        "device": device,
        "groups": [g for g, names in members.items() if device in names],
        "old_ned_id": old,
        "new_ned_id": new_id,
        "state": "already"
        if old == ned.bare_ned_id(new_id)
        else "dry_run"
        if dry_run
        else "migrated",
        "modified_paths": modified,
        "modified_paths_total": len(modified),
        "lost_data": lost,
        "lost_data_total": len(lost),
    }


def _fields(block: dict[str, str]) -> dict[str, str]:
    """The parts of one NSO block that travel: ``path``, ``info``, ``value``, cut short."""
    return {k: _cut(v) for k, v in block.items() if k in ("path", "info", "value")}


def _cut(text: str) -> str:
    text = text.replace("\x00", "")  # the server keeps no NUL (repo_server/upgrades/results.py)
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 3] + "..."


def _bounded(new_id: str, dry_run: bool, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The result within the server's limits: each device's lists shortened (then devices
    left out) until it fits; ``truncated`` says so, and the totals stay whole."""
    result: dict[str, Any] = {
        "new_ned_id": new_id,
        "dry_run": dry_run,
        "devices_total": len(entries),
        "lost_data_total": sum(e["lost_data_total"] for e in entries),
        "truncated": False,
    }
    cap, shown = ITEMS_MAX, len(entries)
    while True:
        kept = [
            {**e, "modified_paths": e["modified_paths"][:cap], "lost_data": e["lost_data"][:cap]}
            for e in entries[:shown]
        ]
        result["devices"] = kept
        result["truncated"] = shown < len(entries) or any(
            e["modified_paths_total"] > cap or e["lost_data_total"] > cap for e in entries[:shown]
        )
        if len(json.dumps(result)) <= RESULT_BUDGET or shown == 0:
            return result
        if cap > 0:
            cap //= 2
        else:
            shown //= 2
