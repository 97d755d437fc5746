"""The single-node NSO upgrade, one function per step (docs/agent-protocol.md).

Where acknowledged writes are kept safe (docs/upgrades.md, "No acknowledged write is lost"):
``backup`` makes ``ncs-backup``'s archive and proves it readable while NSO still runs;
``stop`` stops NSO; ``restore_point`` then copies the stopped data, which holds every write
NSO acknowledged, and proves the copy by checksum. ``recover`` (``recovery.py``) restores
that copy, never the archive.
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
from agent.nso import STARTED, STOPPED
from agent.steps.context import StepContext
from agent.steps.package_links import save_package_links
from agent.steps.shared import (
    check_packages,
    check_version,
    job_dir,
    stage_package,
    start_read_only,
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
        result = ctx.nso.run_installer(path)
        if not result.ok or not (release / "bin" / "ncs").exists():
            raise StepFailed(
                f"the NSO {target} installer failed (exit {result.returncode}): "
                + result.last_line()
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
            fingerprint, lines = ctx.nso.running_config_fingerprint()
            ctx.journal.update(fingerprint=fingerprint, fingerprint_lines=lines)
            ctx.log(f"data fingerprint before the stop: {fingerprint} ({lines} lines)")
        except AgentError as exc:
            ctx.log(f"note: no data fingerprint before the stop ({exc})")
            ctx.journal.update(fingerprint="")
        finally:
            ctx.nso.close()
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
    if trust.flag(ctx.params, "read_only"):
        return _start_read_only(ctx)
    ctx.progress(10, "starting NSO with package reload")
    wait_started_or_start(ctx, reload=True)
    return {"nso_status": STARTED}


def _start_read_only(ctx: StepContext) -> dict[str, Any]:
    """``start`` of an HA member under the "safe" write policy: NSO started through its
    phases, read-only mode set in phase1, so it takes no write before its secondary is back
    (docs/agent-protocol.md, "HA steps")."""
    return {"nso_status": STARTED, "read_only": start_read_only(ctx, reload=True)}


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
    shown = ctx.nso.show_ncs_state_version()
    if shown != target:
        problems.append(f"the NSO CLI says ncs-state version {shown}, expected {target}")
    expected = [trust.staged_identity(ctx.paths, a.filename) for a in artifacts]
    problems += check_packages(ctx, expected)
    extra = ctx.nso.loaded_packages() - {name for name, _ in expected}
    if expected and extra:
        problems.append(f"packages loaded but not in the target set: {', '.join(sorted(extra))}")
    if problems:
        raise StepFailed("; ".join(problems))
    after, _lines = ctx.nso.running_config_fingerprint()
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
