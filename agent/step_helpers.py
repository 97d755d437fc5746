"""What several steps do alike: stage a package, switch ``current``, save and put back the
package links ``ncs-backup`` skips, start NSO, read the CLI's answers."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from agent import packages as pkgs
from agent import trust
from agent.download import Artifact, verified
from agent.errors import StepFailed
from agent.fsutil import fsync_dir, write_atomic
from agent.nso import STARTED, STOPPED, NsoCli
from agent.step_context import StepContext

# What ``backup`` makes under /var/opt/ncs/backups, the only form an ``extra_dir`` may take.
EXTRA_DIR = r"nso-agent-job-\d+/package-links"


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


def check_running(ctx: StepContext, vsn: str) -> None:
    """The daemon that runs is ``vsn`` (its own word, and the CLI's)."""
    state, running = ctx.nso.daemon()
    if state != STARTED or running != vsn:
        raise StepFailed(f"NSO is {state} and reports version {running}, expected {vsn} started")
    shown = show_value(ctx.cli.run("show ncs-state version"), "version")
    if shown != vsn:
        raise StepFailed(f"the NSO CLI says ncs-state version {shown}, expected {vsn}")


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


def _link_target(load_dir: Path, target: str) -> Path:
    return Path(os.path.normpath(load_dir / target)) if not os.path.isabs(target) else Path(target)


def save_package_links(ctx: StepContext, extra: Path) -> None:
    """Copy what ``ncs-backup`` skips: the load path's links and the files behind them."""
    paths = ctx.paths
    tmp = extra.with_name(f".{extra.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "packages").mkdir(parents=True)
    links: dict[str, str] = {}
    for name, target in pkgs.current_links(paths.load_dir).items():
        entry = paths.load_dir / name
        if target:
            source = _link_target(paths.load_dir, target)
            links[name] = paths.host_path(source)
        else:
            source = entry
            links[name] = ""
        if source.is_dir():
            shutil.copytree(source, tmp / "packages" / name, symlinks=True)
        elif source.exists():
            shutil.copy2(source, tmp / "packages" / name)
        else:
            ctx.log(f"warning: {name} points at {target}, which does not exist")
    write_atomic(tmp / "links.json", json.dumps({"links": links}, indent=2, sort_keys=True))
    shutil.rmtree(extra, ignore_errors=True)
    os.rename(tmp, extra)
    fsync_dir(extra.parent)
    ctx.log(f"saved {len(links)} package links and their files in {paths.host_path(extra)}")


def restore_package_links(ctx: StepContext, extra: Path) -> None:
    """Put back the package files and the exact set of links saved at backup.

    ``links.json`` is a file on the host: every entry is checked (a plain name, a target
    under the host root) before anything is copied, since a copy to where it points is a
    write as root.
    """
    paths = ctx.paths
    try:
        saved = json.loads((extra / "links.json").read_text())["links"]
    except (OSError, ValueError, KeyError) as exc:
        raise StepFailed(f"cannot read the saved package links in {extra}: {exc}") from None
    store = Path(os.path.realpath(paths.package_store))
    checked: list[tuple[str, str, Optional[Path]]] = []
    for name, host_target in sorted(saved.items()):
        if "/" in name or name in ("", ".", ".."):
            raise StepFailed(f"saved link name {name!r} in {extra}: not a file name, refused")
        if not host_target:
            checked.append((name, host_target, None))
            continue
        where = f"the target of saved link {name} ({paths.host_path(extra)}/links.json)"
        trust.under_root(paths, host_target, where)
        target = paths.path(host_target)
        if target.name != name:
            raise StepFailed(f"saved link {name} -> {host_target}: names differ, relink by hand")
        checked.append((name, host_target, target))
    targets: list[Path] = []
    for name, host_target, link_to in checked:
        copy = extra / "packages" / name
        if link_to is None:  # a package folder or file that was no link: put it back as is
            ctx.log(f"note: {name} was not a link; it is restored as a link to the saved copy")
            targets.append(copy)
            continue
        if Path(os.path.realpath(link_to.parent)) != store:
            ctx.log(f"note: {name} points outside /opt/ncs/packages ({host_target}): kept as is")
        elif not link_to.exists() and copy.is_file():
            shutil.copy2(copy, link_to)
            ctx.log(f"restored {host_target} from the saved copy")
        targets.append(link_to)
    if pkgs.relink(paths.load_dir, targets):
        ctx.log(f"relinked {paths.host_path(paths.load_dir)} to the {len(targets)} saved links")


def show_value(text: str, leaf: str) -> Optional[str]:
    """``oper-status up`` -> ``up`` from CLI output (first match, tolerant of indentation)."""
    match = re.search(
        rf"^[ \t]*(?:\S+[ \t]+)*?{re.escape(leaf)}[ \t]+(.+?)[ \t]*$", text, re.MULTILINE
    )
    return match.group(1).strip('"') if match else None


def loaded_packages(cli: NsoCli) -> set[str]:
    text = cli.run("show packages | nomore")
    return set(re.findall(r"^\s*packages package (\S+)", text, re.MULTILINE))


def check_packages(ctx: StepContext, expected: list[tuple[str, str]]) -> list[str]:
    """Problems with the loaded packages: each expected one up at its version."""
    problems = []
    for name, version in expected:
        status = ctx.cli.run(f"show packages package {name} oper-status", check=False)
        oper = show_value(status, "oper-status")
        if oper != "up":
            detail = show_value(status, "error-info") or status.strip()
            problems.append(f"package {name}: oper-status {oper} ({detail})")
            continue
        if version:
            got = show_value(
                ctx.cli.run(f"show packages package {name} package-version", check=False),
                "package-version",
            )
            if got != version:
                problems.append(f"package {name}: version {got} loaded, expected {version}")
    return problems
