"""The single-node package-only upgrade (the guide's Package Upgrade), one function per step:
stage the builds, back up, ``software packages install ... replace-existing``,
``packages reload`` (refused if NSO would delete data, unless the job allows it), verify.
Its recovery, ``recover_packages``, is in ``recovery.py``."""

from __future__ import annotations

import time
from typing import Any

from agent import release_signature, trust
from agent.errors import CliError, StepFailed
from agent.nso import ReloadRefusedDataLoss
from agent.nso_cli import CliLost
from agent.steps.context import StepContext
from agent.steps.shared import check_packages, stage_package

# How long a reload whose answer was lost may take to show in what NSO loads.
RELOAD_SETTLE_S = 60.0


def prestage_packages(ctx: StepContext) -> dict[str, Any]:
    # With [trust] configured: only builds of a signed release, checked before any download.
    release_signature.check_step(ctx.config, ctx.params, "this package upgrade's prestage")
    artifacts = trust.package_artifacts(ctx.params)
    for i, artifact in enumerate(artifacts):
        ctx.progress(int(100 * i / max(1, len(artifacts))), f"staging {artifact.filename}")
        stage_package(ctx, artifact)
    return {"staged_packages": [a.filename for a in artifacts]}


def package_refs(ctx: StepContext) -> list[tuple[str, str, str]]:
    """(filename, name, version) of each package the step names, every value checked before
    it goes into a CLI command: the file's own metadata decides, and a name or version the
    server sends must agree with it."""
    checked = [
        trust.package_identity(a, f"packages[{i}]")
        for i, a in enumerate(trust.listed(ctx.params, "packages"))
    ]
    refs = []
    for i, (filename, name, version) in enumerate(checked):
        if not (ctx.paths.package_store / filename).exists():
            raise StepFailed(f"/opt/ncs/packages/{filename} is missing: run prestage_packages")
        own = trust.staged_identity(ctx.paths, filename)
        if name is not None and (name, version) != own:
            raise StepFailed(
                f"packages[{i}]: the server names it {name} {version}, but {filename} is "
                f"{own[0]} {own[1]} by its package-meta-data.xml: refused"
            )
        refs.append((filename, *own))
    return refs


def install_packages(ctx: StepContext) -> dict[str, Any]:
    installed = []
    for filename, name, version in package_refs(ctx):
        said = ctx.nso.install_package(name, version, filename)
        installed.append(said or f"installed {name}-{version}")
    for name in removals(ctx):
        # NSO shows the package until the reload: its version names the file to take out.
        loaded = ctx.nso.package_version(name)
        if loaded is None:
            installed.append(f"{name} is not loaded: nothing to deinstall")
            continue
        said = ctx.nso.deinstall_package(name, loaded)
        installed.append(said or f"deinstalled {name}-{loaded}")
    return {"installed": installed}


def removals(ctx: StepContext) -> list[str]:
    """The names of the packages the step takes out (``remove``), each checked."""
    return [
        trust.package_name(n, f"remove[{i}]")
        for i, n in enumerate(trust.listed(ctx.params, "remove", "package names"))
    ]


def reload_packages(ctx: StepContext) -> dict[str, Any]:
    try:
        return _reload(ctx)
    except CliLost as exc:
        return _reload_answer_lost(ctx, exc)


def _reload_answer_lost(ctx: StepContext, lost: CliLost) -> dict[str, Any]:
    """The CLI went away after ``packages reload`` went out: NSO may have reloaded, and the
    new builds' upgrade code may have rewritten data already, so the answer nobody got is
    not taken for a failure (its recovery would put the old builds back over that data).
    What NSO loads decides, as verify_packages would judge it, once NSO answers again: a
    step from a server that does not name the packages fails as before."""
    if ctx.params.get("packages") is None:
        raise StepFailed(f"{lost}: whether NSO reloaded is unknown") from None
    refs = package_refs(ctx)
    problems: list[str] = []
    deadline = time.monotonic() + RELOAD_SETTLE_S
    while True:
        try:
            problems = _load_problems(ctx, refs)
        except CliError as exc:  # NSO busy with the reload, or the CLI not back yet
            problems = [str(exc)]
        if not problems:
            ctx.log(f"{lost}; NSO loads what the reload was to load: it took effect")
            return {"reloaded": True}
        if time.monotonic() >= deadline:
            raise StepFailed(
                f"{lost}; {RELOAD_SETTLE_S:g} s later NSO does not load what the reload was "
                f"to load ({'; '.join(problems)}): it did not take effect, or not yet"
            ) from None
        time.sleep(2)


def _reload(ctx: StepContext) -> dict[str, Any]:
    allow = trust.flag(ctx.params, "allow_data_loss")
    try:
        reloaded = ctx.nso.packages_reload()
    except ReloadRefusedDataLoss as exc:
        if not allow:
            removed = removals(ctx)
            # Removing a NED some devices still use would delete their whole configuration:
            # the way forward is their migration, not the override.
            last = (
                "\nStart the upgrade again with allow_data_loss (nso-repo: "
                "--allow-data-loss) only if that loss is intended"
            )
            advice = (
                f"\nThis change removes {', '.join(removed)}: when one is a NED that devices "
                "still use (their ned-id), add the new NED first (a package upgrade without "
                "--remove), migrate the devices to its ned-id ('nso-repo ned migrate NODE "
                "--to NED-ID --device D --dry-run', then confirm it; docs/upgrades.md, "
                "'Major NED upgrade'), and remove the old one after: allow_data_loss would "
                "delete those devices' configuration." + last
                if removed
                else last
            )
            raise StepFailed(
                "NSO refused the reload because it would delete data; NSO said:\n"
                + exc.output
                + advice
            ) from None
        ctx.log("NSO would delete namespaces and the job allows data loss: packages reload force")
        reloaded = ctx.nso.packages_reload(force=True)
    if reloaded.failures:
        raise StepFailed("packages reload failed: " + "; ".join(reloaded.failures))
    return {"reloaded": True}


def verify_packages(ctx: StepContext) -> dict[str, Any]:
    refs = package_refs(ctx)
    problems = _load_problems(ctx, refs)
    if problems:
        raise StepFailed("; ".join(problems))
    return {"packages": [f"{n}-{v}" for _, n, v in refs]}


def _load_problems(ctx: StepContext, refs: list[tuple[str, str, str]]) -> list[str]:
    """What NSO loads unlike the step says: each named build up at its version, each
    package to remove gone."""
    problems = check_packages(ctx, [(name, version) for _, name, version in refs])
    removed = removals(ctx)
    still = sorted(set(removed) & ctx.nso.loaded_packages()) if removed else []
    if still:
        problems.append(f"{', '.join(still)} still loaded after the reload")
    return problems
