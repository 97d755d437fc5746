"""What steps of several kinds do alike: stage a package, switch ``current``, check the
release, start NSO, check its packages."""

from __future__ import annotations

import os
from pathlib import Path

from agent import packages as pkgs
from agent.download import Artifact, verified
from agent.errors import StepFailed
from agent.fsutil import fsync_dir
from agent.nso import STARTED, STOPPED
from agent.steps.context import StepContext


def job_dir(ctx: StepContext) -> Path:
    """``<backups>/nso-agent-job-<id>``: what this job keeps beside ``ncs-backup``'s archive."""
    return ctx.paths.backups_dir / f"nso-agent-job-{ctx.job_id}"


def stage_package(ctx: StepContext, artifact: Artifact) -> Path:
    """Download (resume, verify) one package into ``/opt/ncs/packages`` under its own name
    (checked by ``trust.package_artifacts``)."""
    dest = ctx.paths.package_store / artifact.filename
    if verified(dest, artifact.sha256, artifact.size):
        ctx.log(f"{ctx.paths.host_path(dest)} is already there and verified")
        return dest
    if dest.exists():
        ctx.log(f"{ctx.paths.host_path(dest)} differs from the catalog's file: replacing it")
    downloaded = ctx.require_downloader().fetch(
        artifact, ctx.config.downloads_dir / artifact.filename
    )
    pkgs.store_file(downloaded, ctx.paths.package_store)
    ctx.log(f"stored {ctx.paths.host_path(dest)} (sha256 {artifact.sha256[:12]}...)")
    return dest


def switch_current_to(ctx: StepContext, vsn: str) -> bool:
    """Point ``/opt/ncs/current`` at ``ncs-<vsn>`` atomically (a new link, renamed over the
    old one); False if it already does."""
    release = ctx.paths.release_dir(vsn)
    if not (release / "bin" / "ncs").exists():
        raise StepFailed(
            f"{ctx.paths.host_path(release)} is not an installed release; install NSO {vsn} "
            "(the prestage step) before switching to it"
        )
    current = ctx.paths.current
    if ctx.nso.current_version() == vsn:
        ctx.log(f"{ctx.paths.host_path(current)} already points at ncs-{vsn}")
        return False
    tmp = current.with_name("current.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(f"ncs-{vsn}", tmp)
    os.replace(tmp, current)  # rename(2): `current` is never missing, never half-made
    fsync_dir(current.parent)
    ctx.log(f"{ctx.paths.host_path(current)} -> ncs-{vsn}")
    return True


def check_version(ctx: StepContext, vsn: str) -> None:
    """``ncs --version`` of ``current`` is ``vsn`` (the release that would start)."""
    seen = ctx.nso.version()
    if seen != vsn:
        raise StepFailed(
            f"ncs --version of {ctx.paths.host_path(ctx.paths.current)} says {seen}, expected {vsn}"
        )


def wait_started_or_start(ctx: StepContext, reload: bool) -> None:
    timeout = ctx.start_timeout()
    state = ctx.nso.state()
    if state == STARTED:
        ctx.log("NSO is already started")
        return
    if state != STOPPED:
        ctx.log(f"NSO is {state} (a start in progress): waiting for it")
        state = ctx.nso.wait_status(lambda s: s in (STARTED, STOPPED), timeout)
        if state == STARTED:
            return
    ctx.nso.start(reload=reload, timeout=timeout)


def start_read_only(ctx: StepContext, reload: bool) -> bool:
    """Start NSO through its phases with read-only mode set in phase1 (an HA member that
    must take no write yet); True once read-only mode is confirmed over the CLI."""
    if ctx.nso.state() == STARTED:
        ctx.log(
            "NSO was started already, not through this step's phases: read-only mode is "
            "checked over the CLI, and set if it is off (writes before that were accepted)"
        )
    else:
        ctx.progress(10, "starting NSO in phases: read-only before phase2")
        if not ctx.nso.start_read_only(reload=reload, timeout=ctx.start_timeout()):
            ctx.log("NSO reached started before phase1 was seen: read-only mode set over the CLI")
    return ctx.nso.ensure_ha_read_only(True)


def check_packages(ctx: StepContext, expected: list[tuple[str, str]]) -> list[str]:
    """Problems with the loaded packages: each expected one up at its version."""
    problems = []
    for name, version in expected:
        status = ctx.nso.package_oper_status(name)
        if status.oper_status != "up":
            problems.append(f"package {name}: oper-status {status.oper_status} ({status.detail})")
            continue
        if version:
            got = ctx.nso.package_version(name)
            if got != version:
                problems.append(f"package {name}: version {got} loaded, expected {version}")
    return problems
