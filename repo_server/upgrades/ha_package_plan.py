"""Package upgrades on an HA group: the steps, each on a member, and what a failed job says.

The guide's "package upgrade in an HA setup": on the primary, ``software packages fetch``
and ``install ... replace-existing``, then ``packages ha sync and-reload
{ wait-commit-queue-empty }``, which sends the primary's packages to the secondaries and
reloads every member in one go (``and-add`` when the change only adds NED packages). Around
it, as for every change here: the builds staged on every member first, each member's HA
role checked, a proven backup of every member (the action takes none), and every member
verified at the end: the same packages, each up, the primary as read-only as before.

NSO leaves the primary read-write when the sync fails; the agent puts the mode back before
it reports (agent/steps/ha_packages.py). The job then reads what each member loads and
ends ``needs_attention``, saying member by member what it found and the way back: ``nso-repo
job rollback`` (the primary's saved package links, then the sync again) or the commands
that finish by hand (docs/ha-upgrades.md, "Package upgrades on an HA group").
"""

from __future__ import annotations

from typing import Any, Optional

from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.fleet.group_models import HaGroup
from repo_server.upgrades import plans
from repo_server.upgrades.ha_plan import HaPlan, ha_step, role_params
from repo_server.upgrades.ha_recovery import Roles, WayBack, handed
from repo_server.upgrades.models import Job, Step
from repo_server.upgrades.plans import StepSpec
from repo_server.upgrades.step_payloads import node_context

UPGRADE, ROLLBACK = "ha_package_upgrade", "ha_package_rollback"
KINDS = (UPGRADE, ROLLBACK)
SYNC_STEP = "ha_sync_packages"
# The start of what a failed job says about each member: written once.
MEMBERS_NOW = "What each member loads now:"


def is_ned(artifact: Artifact) -> bool:
    """A NED package: one with a NED component, its ned-ids read from its package metadata
    at upload. A signed NED file's content is not read there (only its name says NED):
    it is not taken for one, so its change is an ``and-reload``, right whatever it holds."""
    return bool((artifact.meta or {}).get("ned_ids"))


def sync_variant(
    artifacts: list[Artifact], loaded: dict[str, str], remove: tuple[str, ...] = ()
) -> str:
    """``and-add`` when the change only adds NED packages the primary does not load (nothing
    replaced or removed: the guide's lighter variant), else ``and-reload``."""
    adds_neds = all(is_ned(a) and a.name not in loaded for a in artifacts)
    return "and-add" if artifacts and adds_neds and not remove else "and-reload"


def sync_command(variant: str) -> str:
    return f"packages ha sync {variant}" + (
        " { wait-commit-queue-empty }" if variant == "and-reload" else ""
    )


def _named(versions: dict[str, Optional[str]]) -> list[dict[str, Any]]:
    return [{"name": n, "version": v} for n, v in sorted(versions.items())]


def sync_step(variant: str, targets: dict[str, Optional[str]], **params: Any) -> StepSpec:
    return ha_step(
        SYNC_STEP,
        f"{sync_command(variant)}: every member loads the primary's packages; read-only as "
        "before, also when it fails",
        sync=variant,
        packages=_named(targets),
        **params,
    )


def verify_step(expected: dict[str, str], primary: bool) -> StepSpec:
    return ha_step(
        "ha_verify_packages",
        "exactly the expected packages, each up"
        + (", read-only as before the sync" if primary else ""),
        packages=_named(dict(expected)),
        primary=primary,
    )


def survey_step() -> StepSpec:
    return ha_step(
        "ha_verify_packages", "read what this member loads now", packages=[], survey=True
    )


def check_step(primary: bool, **roles: Any) -> StepSpec:
    return ha_step(
        "ha_package_check",
        "its nominal HA role" + (", every secondary connected" if primary else ""),
        **roles,
    )


def package_steps(
    group: HaGroup,
    artifacts: list[Artifact],
    signed: Optional[Release],
    after: dict[str, str],
    variant: str,
    remove: tuple[str, ...] = (),
) -> HaPlan:
    """The steps of the group's package upgrade to ``artifacts``; ``after``: what every
    member must load at the end. ``remove``: packages the primary's install step
    deinstalls; the sync takes them off the secondaries (``after`` leaves them out, so
    every member is verified without them)."""
    single = {s.name: s for s in plans.package_upgrade_steps(artifacts, False, signed, remove)}
    primary = group.primary
    members = [primary, group.failover, *group.others]
    plan = HaPlan()
    if "prestage_packages" in single:  # not when the change only removes packages
        with plan.together():
            for member in members:
                plan.add(member, single["prestage_packages"], "0 pre-stage")
    with plan.together():
        for member in members:
            plan.add(
                member, check_step(member is primary, **role_params(member, members)), "0 check"
            )
    with plan.together():
        for member in members:
            plan.add(member, single["backup"], "1 backups")
    plan.add(primary, single["install_packages"], "2 install on the primary")
    # What it takes out too: the agent waits for those to go when it lost track of the sync.
    out = {"remove": list(remove)} if remove else {}
    plan.add(primary, sync_step(variant, {a.name: a.version for a in artifacts}, **out), "3 sync")
    for member in members:
        plan.add(member, verify_step(after, member is primary), "4 verify")
    return plan


def _planned(job: Job) -> int:
    return int(job.plan.get("step_count") or len(job.steps))


def way_back(job: Job, failed: Step) -> WayBack:
    """What the job does when ``failed`` failed: nothing before the primary's load path
    changed (``unchanged``); else read what each member loads (when a reload may have
    happened), then end ``needs_attention`` with it and the way back."""
    roles = Roles.of(job)
    cause = f"{failed.name} failed on {failed.node.name}: {failed.message or 'no message'}"
    if failed.seq > _planned(job):
        # The members are read one after the other: the rest are skipped, the job ends here.
        return WayBack("needs_attention", f"{cause} (while reading the members); {describe(job)}")
    first_change = "install_packages" if job.kind == UPGRADE else SYNC_STEP
    if not handed(job, roles.primary, first_change):
        return WayBack(
            "unchanged",
            f"{cause}; nothing was changed on the group (staged builds and backups stay for "
            "the next try)",
        )
    if failed.name == "install_packages":
        removed = job.options.get("remove") or []
        may = ["link some of the new builds"] if job.options.get("packages") else []
        may += [f"no longer link {', '.join(removed)}"] if removed else []
        return WayBack(
            "needs_attention",
            f"{cause}; no member reloaded, but /var/opt/ncs/packages on "
            f"{roles.names[roles.primary]} may {' or '.join(may)}. " + describe(job, read=False),
        )
    steps = [(node_id, survey_step()) for node_id in [roles.primary, *roles.secondaries]]
    return WayBack("needs_attention", cause, steps)


def finished_error(job: Job) -> str:
    """A failed job's error once the members were read: with what each one loads."""
    error = job.error or ""
    if job.outcome != "needs_attention" or MEMBERS_NOW in error:
        return error
    return f"{error}; {describe(job)}"


def _survey(job: Job, node_id: int) -> Optional[Step]:
    found = [
        s
        for s in job.steps
        if s.node_id == node_id and s.seq > _planned(job) and s.name == "ha_verify_packages"
    ]
    return found[-1] if found else None


def cancelled(job: Job, sync_ran: bool) -> str:
    """What to check on the group of a cancelled job: with its sync handed out, the
    primary's read-only mode too (NSO holds it read-only while it syncs, and leaves it
    read-write when the sync fails); then the way back."""
    roles = Roles.of(job)
    primary = roles.names[roles.primary]
    text = ""
    if sync_ran:
        was = read_only_before(job, roles.primary)
        # A rollback's options name no variant: its sync step does (and-reload).
        sync = job.options.get("sync") or next(
            (s.params.get("sync") for s in job.steps if s.name == SYNC_STEP), "and-reload"
        )
        text = (
            f"its sync ('{sync_command(str(sync))}') was handed out on "
            f"{primary} and may have run: NSO holds the primary read-only while it syncs and "
            "leaves it read-write when the sync fails"
            + (
                f"; before the job it was read-only {str(was).lower()}: check it, and set it "
                f"back with 'high-availability read-only mode {str(was).lower()}' on {primary}"
                if was is not None
                else "; check its read-only mode"
            )
            + ". "
        )
    return text + describe(job, read=False)


def read_only_before(job: Job, primary: int) -> Optional[bool]:
    check = next(
        (s for s in job.steps if s.node_id == primary and s.name == "ha_package_check"), None
    )
    if check is not None and isinstance(check.result.get("read_only"), bool):
        return bool(check.result["read_only"])
    before = job.options.get("read_only_before")
    return before if isinstance(before, bool) else None


def _member(job: Job, node_id: int, roles: Roles, changed: list[str]) -> str:
    primary = node_id == roles.primary
    name = roles.names[node_id] + (" (primary)" if primary else "")
    survey = _survey(job, node_id)
    if survey is None or survey.state != "succeeded":
        why = survey.message if survey is not None and survey.state == "failed" else "not read"
        return f"{name}: unknown ({why})"
    before, after = job.options.get("before") or {}, job.options.get("after") or {}
    loaded = {str(p.get("name")): p for p in survey.result.get("loaded") or []}

    def version(package: str) -> Optional[str]:
        return loaded[package].get("version") if package in loaded else None

    if all(version(n) == after.get(n) for n in changed):
        did = "reloaded"
    elif all(version(n) == before.get(n) for n in changed):
        did = "did not reload"
    else:
        did = "reloaded part of the change"
    text = f"{name} {did}: it loads " + ", ".join(f"{n} {version(n) or '(none)'}" for n in changed)
    down = [f"{n} {p.get('oper_status')}" for n, p in sorted(loaded.items())]
    down = [d for d in down if not d.endswith(" up")]
    if down:
        text += f", not up: {', '.join(down)}"
    mode = survey.result.get("ha_mode")  # None: an older nso-agent did not say
    role = "primary" if primary else "secondary"
    if isinstance(mode, str) and mode != role:
        follows = survey.result.get("primary_id")
        text += f", HA mode {mode} where the group makes it {role}" + (
            f" (it follows {follows})" if follows else ""
        )
    # The writer's read-only mode against the primary's before the job: after a failover
    # the writer is a member the group calls secondary.
    if mode == "primary" or (mode is None and primary):
        now, was = survey.result.get("read_only"), read_only_before(job, roles.primary)
        shown = str(now).lower()
        text += f", read-only {shown}" + (
            ", as before the job"
            if now == was
            else f" (before the job: {str(was).lower()}; 'high-availability read-only mode "
            f"{str(was).lower()}' on it)"
        )
    return text


def _backups(job: Job, roles: Roles) -> list[str]:
    """The job's own proven backups, by member; for a rollback also those of the upgrade it
    rolls back (``options.backups``), older."""
    found = []
    for node_id in [roles.primary, *roles.secondaries]:
        file = node_context(job, node_id).get("backup_file")
        if file:
            found.append(f"{roles.names[node_id]} {file}")
    kept = job.options.get("backups")
    if isinstance(kept, dict):
        of = job.options.get("rollback_of")
        found += [
            f"{roles.names.get(int(k), k)} {v}" + (f" (from job {of})" if of else "")
            for k, v in kept.items()
        ]
    return found


def _staged(files: list[str], name: str, version: str) -> str:
    """The staged file of ``name`` ``version`` as the install names it (``ncs-6.2-x-1.0``:
    NAME-VERSION alone matches every release's build kept side by side)."""
    suffix = f"-{name}-{version}.tar.gz"
    found = next((f for f in files if f.startswith("ncs-") and f.endswith(suffix)), None)
    return found[: -len(".tar.gz")] if found else f"{name}-{version}"


def describe(job: Job, read: bool = True) -> str:
    """Each member (``read``: from the survey steps) and the way back."""
    roles = Roles.of(job)
    before, after = job.options.get("before") or {}, job.options.get("after") or {}
    changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
    members = [roles.primary, *roles.secondaries]
    text = (
        f"{MEMBERS_NOW} " + "; ".join(_member(job, i, roles, changed) for i in members) + ". "
        if read
        else ""
    )
    primary = roles.names[roles.primary]
    of = job.options.get("rollback_of") or job.id
    text += (
        f"The way back, once the cause is fixed: 'nso-repo job rollback {of}' puts the "
        f"package links the backup saved back on {primary} and runs "
        f"'{sync_command('and-reload')}' there, so every member loads the packages it had "
        "before the job"
    )
    if job.kind == UPGRADE:
        sync = f"'{sync_command(str(job.options.get('sync')))}'"
        installed = any(s.name == "install_packages" and s.state == "succeeded" for s in job.steps)
        files = [str(f) for f in job.options.get("packages") or []]
        installs = [
            f"'software packages install package {_staged(files, n, after[n])} replace-existing'"
            for n in changed
            if after.get(n)
        ]
        staged = " (the builds are staged in /opt/ncs/packages)" if installs else ""
        installs += [
            f"'software packages deinstall package {n}-{before[n]}'"
            for n in changed
            if before.get(n) and not after.get(n)
        ]
        text += f"; or finish the upgrade by hand on {primary}: " + (
            sync + " (its install step ran there)"
            if installed
            else f"{'; '.join(installs)}{staged}, then {sync}"
        )
    backups = _backups(job, roles)
    if backups:
        text += (
            ". Proven backups (ncs-backup, read back): "
            + "; ".join(backups)
            + ". Restoring them ('ncs-backup --restore FILE' with NSO stopped, on every "
            "member) is the last resort: it loses every write made since"
        )
    return text
