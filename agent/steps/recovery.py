"""Putting a node back after a failed upgrade, one function per step: ``recover`` (the
guide's Recover from a Failed Upgrade) and ``recover_packages`` (a failed package upgrade).

``recover`` restores the restore point taken while NSO was stopped, never ``ncs-backup``'s
older archive, and only when the upgraded release does not run: a release that runs takes
writes, and data that changed is never a reason to restore.
"""

from __future__ import annotations

from typing import Any

from agent import restore_point as rp
from agent import trust
from agent.errors import StepFailed
from agent.fsutil import write_atomic
from agent.nso import STARTED, STOPPED
from agent.steps.context import StepContext
from agent.steps.package_links import EXTRA_DIR, restore_package_links
from agent.steps.shared import (
    check_version,
    job_dir,
    start_read_only,
    switch_current_to,
    wait_started_or_start,
)


def recover(ctx: StepContext) -> dict[str, Any]:
    """The guide's Recover from a Failed Upgrade: put the release and the data back as they
    were when NSO stopped for the upgrade (the restore point, never the older archive).

    Everything that can be checked or prepared is done before NSO is stopped: the source
    release is there, the restore point is this job's, and its copy is staged beside the
    live data. A job's own recovery (not an operator's rollback, ``discard_writes``) never
    stops an NSO that runs: it may have taken writes, which a restore would take out.
    """
    paths = ctx.paths
    source = trust.nso_version(
        ctx.param("source_version") or ctx.job.get("source_version"), "source_version"
    )
    discard = trust.flag(ctx.params, "discard_writes")
    target_started = trust.flag(ctx.params, "target_started", default=True)
    done: list[str] = list(ctx.journal.fact("recover_done", []))

    def mark(what: str) -> None:
        done.append(what)
        ctx.journal.update(what, recover_done=done)

    if "data" not in done:
        state, running = ctx.nso.daemon()
        if state == STARTED and not discard:
            if not target_started and running == source and ctx.nso.current_version() == source:
                ctx.log(f"NSO {source} still runs from an unchanged current: nothing to recover")
                return {"rolled_back": True, "version": source, "replaced_data": []}
            raise StepFailed(
                f"NSO {running} is running and may have taken writes: this job does not stop it "
                "to put older data back. Check the node; keep it as it is, or roll the upgrade "
                f"back: 'nso-repo job rollback {ctx.job_id} --discard-writes'",
                {"nso_running": True, "version": running or ""},
            )
    if not (paths.release_dir(source) / "bin" / "ncs").exists():
        raise StepFailed(
            f"NSO {source} is no longer installed under /opt/ncs: reinstall it, then retry "
            "(nothing was changed)"
        )
    # Every folder the server names is checked before anything is touched.
    dest = trust.checked_path(ctx, "restore_point", r"nso-agent-job-\d+/restore-point")
    extra = trust.checked_path(ctx, "extra_dir", EXTRA_DIR)
    progress: dict[str, str] = dict(ctx.journal.fact("restore_progress", {}))

    def save(p: dict[str, str]) -> None:
        ctx.journal.update(restore_progress=dict(p))

    if target_started and "data" not in done:
        if dest is None:
            upgraded = f"NSO {ctx.param('upgraded_to')}" if ctx.param("upgraded_to") else "NSO"
            archive = ctx.param("backup_file") or "of ncs-backup"
            raise StepFailed(
                f"no restore point was recorded and {upgraded} has started on this data: "
                f"restore by hand (the archive {archive} lacks the writes made after it)"
            )
        ctx.progress(20, f"staging {paths.host_path(dest)} beside the live data")
        rp.stage(paths, dest, str(ctx.param("restore_point_token") or ""), progress, save, ctx.log)
    if "data" not in done:
        ctx.progress(40, "stopping NSO")
        ctx.nso.stop()  # again on every attempt: something may have started it meanwhile
    if "current" not in done:
        ctx.progress(50, f"pointing current back at ncs-{source}")
        switch_current_to(ctx, source)
        check_version(ctx, source)
        mark("current")
    replaced: list[str] = list(ctx.journal.fact("replaced", []))
    if "data" not in done:
        if target_started:
            assert dest is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
            replaced += rp.swap(
                paths,
                dest,
                rp.aside_folder(paths, job_dir(ctx), _aside_tag(ctx)),
                progress,
                save,
                lambda: _still_stopped(ctx),
                ctx.log,
            )
            ctx.journal.update(replaced=sorted(set(replaced)))
        else:
            ctx.log("the new release never started: the data is as NSO left it, nothing to restore")
            _put_back_ncs_conf(ctx)
        mark("data")
    else:
        ctx.log("the data was restored already (an earlier attempt of this step); continuing")
    if extra is not None and "links" not in done:
        ctx.progress(70, "restoring the package links and files")
        restore_package_links(ctx, extra)
        mark("links")
    ctx.progress(80, f"starting NSO {source}")
    if trust.flag(ctx.params, "read_only", default=False):
        # An HA primary put back while its secondaries are away: no write before they
        # rejoin (the server turns read-only off then).
        start_read_only(ctx, reload=False)
    else:
        wait_started_or_start(ctx, reload=False)
    check_version(ctx, source)
    check_running(ctx, source)
    return {"rolled_back": True, "version": source, "replaced_data": sorted(set(replaced))}


def _aside_tag(ctx: StepContext) -> str:
    tag = ctx.journal.fact("aside_tag")
    if not tag:
        n = 1
        while (job_dir(ctx) / f"replaced-{n}").exists():
            n += 1
        tag = f"replaced-{n}"
        ctx.journal.update(aside_tag=tag)
    return str(tag)


def _still_stopped(ctx: StepContext) -> None:
    state = ctx.nso.status()
    if state != STOPPED:
        raise StepFailed(
            f"NSO is {state} while its data is being restored: something started it. Stop it "
            "and retry; the restore resumes where it was"
        )


def _put_back_ncs_conf(ctx: StepContext) -> None:
    """The ``ncs_conf`` step's saved copy, when it ran (the current file is kept beside)."""
    saved = trust.checked_path(
        ctx, "saved_ncs_conf", r"ncs\.conf\.nso-agent-job-\d+", base="config"
    )
    if saved is None or not saved.exists():
        return
    conf = ctx.paths.ncs_conf
    if conf.exists():
        write_atomic(
            conf.with_name(f"ncs.conf.nso-agent-replaced-job-{ctx.job_id}"),
            conf.read_bytes(),
            like=conf,
        )
    write_atomic(conf, saved.read_bytes(), like=saved)
    ctx.log(f"put back {ctx.paths.host_path(conf)} from {saved.name}")


def check_running(ctx: StepContext, vsn: str) -> None:
    """The daemon that runs is ``vsn`` (its own word, and the CLI's)."""
    state, running = ctx.nso.daemon()
    if state != STARTED or running != vsn:
        raise StepFailed(f"NSO is {state} and reports version {running}, expected {vsn} started")
    shown = ctx.nso.show_ncs_state_version()
    if shown != vsn:
        raise StepFailed(f"the NSO CLI says ncs-state version {shown}, expected {vsn}")


def recover_packages(ctx: StepContext) -> dict[str, Any]:
    extra_dir = trust.checked_path(ctx, "extra_dir", EXTRA_DIR)
    if extra_dir is None:
        raise StepFailed("no extra_dir recorded at backup: the package links cannot be restored")
    restore_package_links(ctx, extra_dir)
    if ctx.nso.status() != STARTED:
        wait_started_or_start(ctx, reload=True)
    else:
        failures = ctx.nso.packages_reload().failures
        if failures:
            raise StepFailed("packages reload of the saved set failed: " + "; ".join(failures))
    return {"rolled_back": True}
