"""A succeeded step's result held against what the step asked for.

The agent checks its own work (agent/steps/), and the server does not take its word for it:
where a step's parameters say what the node must run afterwards and its result says what
the node runs, the two are compared here. A success that contradicts its step (an older
or faulty agent, or a forged report) is recorded as the step's failure, with why, and the
job goes the way a failure of that step goes: never a job that succeeded on a node that
does not run what it says.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from repo_server.upgrades import ha_package_plan, ha_recovery
from repo_server.upgrades.models import Job, Step
from repo_server.upgrades.step_payloads import node_context

SHOWN = 10  # names a message lists, at most

Check = Callable[[Job, Step, dict[str, Any]], Optional[str]]


def contradiction(job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    """Why a succeeded ``result`` of ``step`` cannot be taken as a success; None when it
    agrees with the step (or the step's result says nothing the server can hold it to)."""
    released = _release_differs(step, result)
    if released is not None:
        return released
    if job.kind == "ha_upgrade":
        return ha_recovery.data_differs(job, step, result)
    check = _CHECKS.get(step.name)
    return check(job, step, result) if check is not None else None


# The steps that leave a node on their ``target_version``, and the key of their result
# that names the release it runs then.
_RELEASE_KEYS = {"switch_current": "current", "verify": "version", "ha_verify": "version"}


def _release_differs(step: Step, result: dict[str, Any]) -> Optional[str]:
    """A step that names the release the node runs afterwards, and another than its own:
    an upgrade's verify saying 6.1 after an upgrade to 6.2 is no success."""
    key, wanted = _RELEASE_KEYS.get(step.name), step.params.get("target_version")
    if key is None or key not in result or not isinstance(wanted, str):
        return None
    if result[key] == wanted:
        return None
    return _refused(step, f"it says the node is on {result[key]!s} and the step's is {wanted}")


def _names(values: Any) -> set[str]:
    return {str(v) for v in values} if isinstance(values, list) else set()


def _listed(names: set[str]) -> str:
    shown = sorted(names)
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    return (", ".join(shown[:SHOWN]) + more) or "none"


def _refused(step: Step, why: str) -> str:
    return (
        f"the agent reported {step.name} succeeded, but {why}: not taken as a success. Check "
        f"the node and its nso-agent version ('nso-agent status'), then roll it out again"
    )


def _patch_applied(_job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    wanted, said = _names(step.params.get("modules")), _names(result.get("modules"))
    if said == wanted:
        return None
    return _refused(
        step, f"it names the modules {_listed(said)} and the patch is {_listed(wanted)}"
    )


def _patch_removed(_job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    wanted = _names(step.params.get("modules"))
    removed, kept = _names(result.get("modules")), _names(result.get("kept"))
    if removed | kept == wanted and not removed & kept:
        return None
    return _refused(
        step,
        f"it names {_listed(removed)} removed and {_listed(kept)} kept, and the patch is "
        f"{_listed(wanted)}",
    )


def _packages_verified(job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    if step.params.get("survey"):
        return None  # a reading after a failure: whatever the member loads is the answer
    wanted = {
        str(p.get("name")): p.get("version")
        for p in step.params.get("packages") or []
        if isinstance(p, dict)
    }
    loaded = {
        str(p.get("name")): p
        for p in result.get("loaded") or []
        if isinstance(p, dict) and p.get("name")
    }
    problems = [
        f"{name} {loaded[name].get('version') if name in loaded else '(none)'} where the "
        f"job expects {version}"
        for name, version in sorted(wanted.items())
        if name not in loaded or loaded[name].get("version") != version
    ]
    down = sorted(n for n in set(wanted) & set(loaded) if loaded[n].get("oper_status") != "up")
    if down:
        problems.append(f"{_listed(set(down))} not up")
    extra = set(loaded) - set(wanted)
    if extra:
        problems.append(f"{_listed(extra)} loaded, which the job does not expect")
    role = "primary" if step.params.get("primary") else "secondary"
    if result.get("ha_mode", role) != role:  # an older nso-agent does not say
        problems.append(f"its HA mode is {result.get('ha_mode')}, where the group makes it {role}")
    if step.params.get("primary"):
        # The mode the sync ended in, confirmed by its step: the mode before it, or the
        # one a rollback's sync was told to end in (read_only_after).
        synced = node_context(job, step.node_id)
        before = synced.get("read_only")
        if not isinstance(before, bool):
            before = synced.get("read_only_before")
        if not isinstance(before, bool):
            before = ha_package_plan.read_only_before(job, step.node_id)
        if not isinstance(before, bool) or result.get("read_only") is not before:
            problems.append(
                f"its read-only mode is {result.get('read_only')!s}, and the sync ended it "
                f"{before!s}"
            )
    if not problems:
        return None
    return _refused(step, "it reports " + "; ".join(problems[:SHOWN]))


def _synced(job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    """A sync ends in the mode it is told (a rollback's ``read_only_after``), else in the
    mode the primary had before it: the one its agent read just before the sync, which is
    the one the job's check of the primary read. An agent's word that it left another is no
    success: the primary would stay read-only (or read-write) and nobody be told."""
    wanted = step.params.get("read_only_after")
    if isinstance(wanted, bool):
        if result.get("read_only") is wanted:
            return None
        return _refused(
            step,
            f"it left the primary read-only {result.get('read_only')!s} and the step ends it "
            f"{wanted!s}, the mode before the upgrade",
        )
    before = result.get("read_only_before")
    checked = node_context(job, step.node_id).get("read_only")
    if isinstance(checked, bool) and before is not checked:
        return _refused(
            step,
            f"it says the primary was read-only {before!s} before the sync, and the job's "
            f"check read it {checked!s}",
        )
    if isinstance(before, bool) and result.get("read_only") is before:
        return None
    return _refused(
        step,
        f"it left the primary read-only {result.get('read_only')!s}, and it was "
        f"{before!s} before the sync",
    )


def _ned_migrated(_job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    """The migration the step asked for: a dry-run or not as asked, to its ned-id, of the
    devices it names (a confirmed one: exactly those its dry-run showed), each in a state
    that kind of run may leave it in."""
    params, found = step.params, result.get("ned_migration")
    if not isinstance(found, dict):
        return _refused(step, "its result has no ned_migration")
    dry = params.get("dry_run") is True
    asked = "a dry-run" if dry else "a migration"
    if found.get("dry_run") is not dry:
        return _refused(
            step, f"it reports dry_run {found.get('dry_run')!s} and the step is {asked}"
        )
    if found.get("new_ned_id") != params.get("new_ned_id"):
        return _refused(
            step,
            f"it reports a move to {found.get('new_ned_id')!s} and the step's ned-id is "
            f"{params.get('new_ned_id')}",
        )
    entries = [e for e in found.get("devices") or [] if isinstance(e, dict)]
    states = {"dry_run", "already"} if dry else {"migrated", "already"}
    odd = {
        str(e.get("device"))
        for e in entries
        if e.get("state") not in states or e.get("new_ned_id") != params.get("new_ned_id")
    }
    if odd:
        return _refused(
            step, f"it reports {_listed(odd)} in a state {asked} does not leave a device in"
        )
    said, expected = {str(e.get("device")) for e in entries}, params.get("expected_devices")
    whole = found.get("truncated") is not True
    if isinstance(expected, list):
        wanted = _names(expected)
        if said - wanted or found.get("devices_total") != len(wanted) or (whole and said != wanted):
            return _refused(
                step,
                f"it reports the devices {_listed(said)} and its dry-run showed {_listed(wanted)}",
            )
    missing = _names(params.get("devices")) - said
    if whole and missing:
        return _refused(step, f"it reports nothing of {_listed(missing)}, which the step names")
    return None


_CHECKS: dict[str, Check] = {
    "apply_patch": _patch_applied,
    "remove_patch": _patch_removed,
    "ha_sync_packages": _synced,
    "ha_verify_packages": _packages_verified,
    "ned_migrate": _ned_migrated,
}
