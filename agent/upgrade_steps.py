"""The single-node NSO upgrade, one function per step (docs/agent-protocol.md).

Where acknowledged writes are kept safe (docs/upgrades.md, "No acknowledged write is lost"):
``backup`` makes ``ncs-backup``'s archive and proves it readable while NSO still runs;
``stop`` stops NSO; ``restore_point`` then copies the stopped data, which holds every write
NSO acknowledged, and proves the copy by checksum. ``recover`` restores that copy, never the
archive, and only when the upgraded release does not run: a release that runs takes writes,
and data that changed is never a reason to restore.
"""

from __future__ import annotations

import os
import re
import uuid
import xml.etree.ElementTree as ET  # nosec B405 # parses ncs.conf only
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent import backup_archive, release_signature, trust
from agent import packages as pkgs
from agent import restore_point as rp
from agent.download import Artifact, verified
from agent.errors import AgentError, StepFailed
from agent.fsutil import write_atomic
from agent.nso import STARTED, STOPPED, running_config_fingerprint
from agent.step_context import StepContext
from agent.step_helpers import (
    EXTRA_DIR,
    check_packages,
    check_running,
    check_version,
    job_dir,
    loaded_packages,
    restore_package_links,
    save_package_links,
    show_value,
    stage_package,
    switch_current_to,
    wait_started_or_start,
)


def prestage(ctx: StepContext) -> dict[str, Any]:
    # First, before a byte is fetched: with [trust] configured, only a signed release.
    release_signature.check_step(ctx.config, ctx.params, "this upgrade's prestage")
    p = ctx.params
    target = trust.nso_version(p.get("target_version"), "target_version")
    artifacts = trust.package_artifacts(p)
    installer = trust.installer_artifact(p, target) if p.get("installer") is not None else None
    # What `current` was before we touched anything, kept across restarts: the installer may
    # move it (undocumented), and NSO keeps running the old release until the switch step.
    if ctx.journal.fact("current_before") is None:
        ctx.journal.update(current_before=ctx.nso.current_version() or "")
    steps = len(artifacts) + 1
    for i, artifact in enumerate(artifacts):
        ctx.progress(int(100 * i / steps), f"staging {artifact.filename}")
        stage_package(ctx, artifact)
    release = ctx.paths.release_dir(target)
    if (release / "bin" / "ncs").exists():
        ctx.log(f"{ctx.paths.host_path(release)} is installed already")
    else:
        if installer is None:
            raise StepFailed(f"NSO {target} is not installed and the step names no installer")
        ctx.progress(int(100 * len(artifacts) / steps), f"downloading {installer.filename}")
        path = ctx.require_downloader().fetch(
            installer, ctx.config.downloads_dir / installer.filename
        )
        ctx.progress(90, f"installing NSO {target} beside the running release")
        # cwd is the host root: `/` on a real host, where the installer's cwd does not matter.
        result = ctx.nso.cmd(
            ["sh", str(path), "--system-install", "--non-interactive"],
            timeout=3600,
            cwd=ctx.paths.root,
        )
        if not result.ok or not (release / "bin" / "ncs").exists():
            raise StepFailed(
                f"the NSO {target} installer failed (exit {result.returncode}): "
                + (result.output.splitlines() or ["no output"])[-1]
            )
        path.unlink()
    before = ctx.journal.fact("current_before")
    if before and ctx.nso.current_version() != before:
        ctx.log(f"the installer moved current; pointing it back at ncs-{before}")
        switch_current_to(ctx, before)
    return {
        "installed_release": target,
        "staged_packages": [a.filename for a in artifacts],
    }


def _set_unusable_aside(ctx: StepContext, path: Path) -> str:
    """Rename a backup that does not read back, so that no later ``ncs-backup --restore``
    (which takes the newest ``ncs-*.backup*``) picks it by mistake."""
    aside = path.with_name(f"unusable-{path.name}")
    os.replace(path, aside)
    return ctx.paths.host_path(aside)


def backup(ctx: StepContext) -> dict[str, Any]:
    """``ncs-backup`` (the operator's familiar archive), proven readable before NSO stops,
    plus a copy of what it skips: the package links and the files behind them."""
    paths = ctx.paths
    backup_file = ctx.journal.fact("backup_file")
    proof = None
    if backup_file and paths.path(backup_file).exists():
        ctx.progress(10, f"checking {backup_file} from the earlier attempt")
        try:
            proof = backup_archive.prove(paths.path(backup_file), backup_file)
        except StepFailed as exc:
            ctx.log(f"{exc}; taking a new backup")
    if proof is None:
        ctx.progress(20, "ncs-backup")
        made = ctx.nso.backup()
        backup_file = paths.host_path(made)
        ctx.journal.update("backed-up", backup_file=backup_file)
        ctx.progress(50, f"reading {backup_file} back to prove it")
        try:
            proof = backup_archive.prove(made, backup_file)
        except StepFailed as exc:
            moved = _set_unusable_aside(ctx, made)
            raise StepFailed(f"{exc} (it is kept as {moved})") from None
        ctx.log(
            f"{backup_file} reads back whole: {proof.members} members, "
            f"{len(proof.cdb_files)} CDB files ({', '.join(proof.cdb_files)})"
        )
    extra = job_dir(ctx) / "package-links"
    if ctx.journal.entry is None or ctx.journal.entry.phase != "saved-links" or not extra.exists():
        ctx.progress(70, "copying the package links and files ncs-backup skips")
        save_package_links(ctx, extra)
        ctx.journal.update("saved-links")
    return {
        "backup_file": backup_file,
        "backup_proof": proof.as_result(),
        "extra_dir": paths.host_path(extra),
    }


def stop(ctx: StepContext) -> dict[str, Any]:
    """Stop NSO. Just before, note a fingerprint of its configuration: information for
    ``verify`` (what the upgrade changed), never a reason to restore."""
    if ctx.journal.fact("fingerprint") is None and ctx.nso.state() == STARTED:
        try:
            fingerprint, lines = running_config_fingerprint(ctx.cli)
            ctx.journal.update(fingerprint=fingerprint, fingerprint_lines=lines)
            ctx.log(f"data fingerprint before the stop: {fingerprint} ({lines} lines)")
        except AgentError as exc:
            ctx.log(f"note: no data fingerprint before the stop ({exc})")
            ctx.journal.update(fingerprint="")
        finally:
            ctx.cli.close()
    ctx.progress(40, "stopping NSO")
    ctx.nso.stop()
    if ctx.journal.fact("stopped_at") is None:
        ctx.journal.update(stopped_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return {
        "fingerprint": ctx.journal.fact("fingerprint") or None,
        "stopped_at": ctx.journal.fact("stopped_at"),
    }


def restore_point(ctx: StepContext) -> dict[str, Any]:
    """Copy the stopped NSO's data and configuration: the point ``recover`` restores."""
    state = ctx.nso.status()
    if state != STOPPED:
        raise StepFailed(
            f"NSO is {state}: the restore point is copied only while NSO is stopped, when "
            "nothing can write; stop it and retry"
        )
    dest = job_dir(ctx) / "restore-point"
    # The token ties the copy to this step: a restore point another job left at this path
    # (job ids repeat when a server's database is rebuilt) is never taken for this one.
    token = ctx.journal.fact("rp_token")
    if not token:
        token = f"job-{ctx.job_id}-step-{ctx.step.get('id')}-{uuid.uuid4().hex[:12]}"
        ctx.journal.update(rp_token=token)
    ctx.progress(10, f"copying NSO's data to {ctx.paths.host_path(dest)}")
    summary = rp.take(ctx.paths, dest, token, ctx.log)
    return {
        "restore_point": ctx.paths.host_path(dest),
        "restore_point_token": token,
        "restore_point_files": summary["files"],
        "restore_point_bytes": summary["bytes"],
    }


def compact(ctx: StepContext) -> dict[str, Any]:
    state = ctx.nso.status()
    if state != STOPPED:
        raise StepFailed(f"NSO is {state}: the CDB is compacted only while NSO is stopped")
    ctx.nso.cdb_compact()
    return {}


def switch_current(ctx: StepContext) -> dict[str, Any]:
    target = trust.nso_version(ctx.params.get("target_version"), "target_version")
    # The job's source release when known: a second run must report what the first did.
    previous = (
        ctx.journal.fact("previous") or ctx.job.get("source_version") or ctx.nso.current_version()
    )
    ctx.journal.update(previous=previous)
    switch_current_to(ctx, target)
    check_version(ctx, target)
    return {"current": target, "previous_current": previous}


def remove_conf_elements(text: str, names: list[str]) -> tuple[str, list[str]]:
    """``text`` without the named elements (any prefix, empty or with content)."""
    removed = []
    for name in names:
        tag = rf"(?:[\w.-]+:)?{re.escape(name)}"
        pattern = re.compile(
            rf"[ \t]*<{tag}(?:\s[^>]*)?/>[ \t]*\n?|[ \t]*<{tag}(?:\s[^>]*)?>.*?</{tag}\s*>[ \t]*\n?",
            re.DOTALL,
        )
        text, n = pattern.subn("", text)
        if n:
            removed.append(name)
    return text, removed


def ncs_conf(ctx: StepContext) -> dict[str, Any]:
    names = trust.xml_names(ctx.params, "remove_elements")
    conf = ctx.paths.ncs_conf
    original = conf.read_text()
    text, removed = remove_conf_elements(original, names)
    if not removed:
        ctx.log(f"none of {', '.join(names) or '(nothing)'} in {ctx.paths.host_path(conf)}")
        return {"removed_elements": []}
    try:
        ET.fromstring(text)  # nosec B314 # ncs.conf is root's own file on this host, not input from the server; expat >= 2.4.1 stops entity bombs and etree fetches no external entities
    except ET.ParseError as exc:
        raise StepFailed(
            f"removing {', '.join(removed)} would leave {ctx.paths.host_path(conf)} invalid "
            f"({exc}); edit it by hand"
        ) from None
    saved = conf.with_name(f"ncs.conf.nso-agent-job-{ctx.job_id}")
    if not ctx.journal.fact("conf_saved"):  # a file of that name from another job is replaced
        write_atomic(saved, original, like=conf)
        ctx.journal.update(conf_saved=True)
    write_atomic(conf, text, like=conf)
    ctx.log(f"removed {', '.join(removed)}; the old file is {ctx.paths.host_path(saved)}")
    return {"removed_elements": removed, "saved_ncs_conf": ctx.paths.host_path(saved)}


def relink_packages(ctx: StepContext) -> dict[str, Any]:
    artifacts = trust.package_artifacts(ctx.params)
    targets = []
    for artifact in artifacts:
        path = ctx.paths.package_store / artifact.filename
        if not verified(path, artifact.sha256, artifact.size):
            raise StepFailed(
                f"{ctx.paths.host_path(path)} is missing or not the catalog's file; "
                "the prestage step puts it there"
            )
        targets.append(path)
    changed = pkgs.relink(ctx.paths.load_dir, targets)
    ctx.log(
        ("relinked " if changed else "already exact: ")
        + f"{ctx.paths.host_path(ctx.paths.load_dir)} = {', '.join(t.name for t in targets)}"
    )
    return {"packages": [t.name for t in targets]}


def start(ctx: StepContext) -> dict[str, Any]:
    ctx.progress(10, "starting NSO with package reload")
    wait_started_or_start(ctx, reload=True)
    return {"nso_status": STARTED}


def verify(ctx: StepContext) -> dict[str, Any]:
    """The upgraded release runs, with every package up at its version.

    A failure while NSO runs carries ``nso_running``: NSO takes writes, so the server does
    not restore on its own (that would throw acknowledged writes away); the operator decides.
    Data that changed (upgrade code in the packages, writes since the start) is reported,
    never failed on.
    """
    target = trust.nso_version(ctx.param("target_version"), "target_version")
    artifacts = trust.package_artifacts(ctx.params)
    state, running = ctx.nso.daemon()
    if state != STARTED:
        raise StepFailed(f"NSO {target} does not run: NSO is {state}")
    try:
        return _verify_running(ctx, target, running, artifacts)
    except StepFailed as exc:
        raise StepFailed(str(exc), {"nso_running": True, "version": running}) from None
    except AgentError as exc:
        raise StepFailed(
            f"NSO runs but could not be verified: {exc}", {"nso_running": True, "version": running}
        ) from None


def _verify_running(
    ctx: StepContext, target: str, running: Any, artifacts: list[Artifact]
) -> dict[str, Any]:
    problems = []
    if running != target:
        problems.append(f"the running daemon reports NSO {running}, expected {target}")
    shown = show_value(ctx.cli.run("show ncs-state version"), "version")
    if shown != target:
        problems.append(f"the NSO CLI says ncs-state version {shown}, expected {target}")
    expected = [trust.staged_identity(ctx.paths, a.filename) for a in artifacts]
    problems += check_packages(ctx, expected)
    extra = loaded_packages(ctx.cli) - {name for name, _ in expected}
    if expected and extra:
        problems.append(f"packages loaded but not in the target set: {', '.join(sorted(extra))}")
    if problems:
        raise StepFailed("; ".join(problems))
    after, _lines = running_config_fingerprint(ctx.cli)
    before = ctx.param("fingerprint")
    changed = None if not before else after != before
    if changed:
        ctx.log(
            "the configuration differs from the one before the stop (the packages' upgrade "
            "code, or writes since the start): reported, not a failure"
        )
    return {
        "version": target,
        "packages": [f"{n}-{v}" for n, v in expected],
        "data_changed": changed,
        "fingerprint_after": after,
    }


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
