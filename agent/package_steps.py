"""The single-node package-only upgrade (the guide's Package Upgrade), one function per step:
stage the builds, back up, ``software packages install ... replace-existing``,
``packages reload`` (refused if NSO would delete data, unless the job allows it), verify."""

from __future__ import annotations

import re
from typing import Any

from agent import release_signature, trust
from agent.errors import CliError, StepFailed
from agent.nso import STARTED
from agent.step_context import StepContext
from agent.step_helpers import (
    EXTRA_DIR,
    check_packages,
    restore_package_links,
    show_value,
    stage_package,
    wait_started_or_start,
)


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
    for _filename, name, version in package_refs(ctx):
        out = ctx.cli.run(f"software packages install package {name}-{version} replace-existing")
        installed.append(out.strip() or f"installed {name}-{version}")
    return {"installed": installed}


def reload_failures(text: str) -> list[str]:
    """``result false`` blocks of a reload's output, with their ``info``."""
    failures = []
    for block in re.findall(r"reload-result\s*\{(.*?)\}", text, re.DOTALL):
        if re.search(r"result\s+false", block):
            package = show_value(block, "package") or "?"
            info = show_value(block, "info") or ""
            failures.append(f"{package}: {info}".strip(": "))
    return failures


def reload_packages(ctx: StepContext) -> dict[str, Any]:
    allow = trust.flag(ctx.params, "allow_data_loss")
    try:
        out = ctx.cli.run("packages reload", timeout=3600)
    except CliError as exc:
        if "namespaces will be deleted" not in exc.output:
            raise
        if not allow:
            raise StepFailed(
                "NSO refused the reload because it would delete data; NSO said:\n"
                + exc.output
                + "\nPlan the upgrade with allow_data_loss only if that loss is intended"
            ) from None
        ctx.log("NSO would delete namespaces and the job allows data loss: packages reload force")
        out = ctx.cli.run("packages reload force", timeout=3600)
    failures = reload_failures(out)
    if failures:
        raise StepFailed("packages reload failed: " + "; ".join(failures))
    return {"reloaded": True}


def verify_packages(ctx: StepContext) -> dict[str, Any]:
    refs = package_refs(ctx)
    problems = check_packages(ctx, [(name, version) for _, name, version in refs])
    if problems:
        raise StepFailed("; ".join(problems))
    return {"packages": [f"{n}-{v}" for _, n, v in refs]}


def recover_packages(ctx: StepContext) -> dict[str, Any]:
    extra_dir = trust.checked_path(ctx, "extra_dir", EXTRA_DIR)
    if extra_dir is None:
        raise StepFailed("no extra_dir recorded at backup: the package links cannot be restored")
    restore_package_links(ctx, extra_dir)
    if ctx.nso.status() != STARTED:
        wait_started_or_start(ctx, reload=True)
    else:
        out = ctx.cli.run("packages reload", timeout=3600)
        failures = reload_failures(out)
        if failures:
            raise StepFailed("packages reload of the saved set failed: " + "; ".join(failures))
    return {"rolled_back": True}
