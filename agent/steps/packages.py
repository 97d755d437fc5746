"""The single-node package-only upgrade (the guide's Package Upgrade), one function per step:
stage the builds, back up, ``software packages install ... replace-existing``,
``packages reload`` (refused if NSO would delete data, unless the job allows it), verify.
Its recovery, ``recover_packages``, is in ``recovery.py``."""

from __future__ import annotations

from typing import Any

from agent import release_signature, trust
from agent.errors import StepFailed
from agent.nso import ReloadRefusedDataLoss
from agent.steps.context import StepContext
from agent.steps.shared import check_packages, stage_package


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
    allow = trust.flag(ctx.params, "allow_data_loss")
    try:
        reloaded = ctx.nso.packages_reload()
    except ReloadRefusedDataLoss as exc:
        if not allow:
            raise StepFailed(
                "NSO refused the reload because it would delete data; NSO said:\n"
                + exc.output
                + "\nPlan the upgrade with allow_data_loss only if that loss is intended"
            ) from None
        ctx.log("NSO would delete namespaces and the job allows data loss: packages reload force")
        reloaded = ctx.nso.packages_reload(force=True)
    if reloaded.failures:
        raise StepFailed("packages reload failed: " + "; ".join(reloaded.failures))
    return {"reloaded": True}


def verify_packages(ctx: StepContext) -> dict[str, Any]:
    refs = package_refs(ctx)
    problems = check_packages(ctx, [(name, version) for _, name, version in refs])
    removed = removals(ctx)
    still = sorted(set(removed) & ctx.nso.loaded_packages()) if removed else []
    if still:
        problems.append(f"{', '.join(still)} still loaded after the reload")
    if problems:
        raise StepFailed("; ".join(problems))
    return {"packages": [f"{n}-{v}" for _, n, v in refs]}
