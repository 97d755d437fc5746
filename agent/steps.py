"""One function per step of docs/agent-protocol.md, each idempotent.

A step function takes a ``StepContext`` and returns the step's ``result`` (merged by the
server into the job's context for later steps), or raises ``StepFailed`` / ``NsoError`` with
a message that says what went wrong. Running a step twice ends in the same state: each one
first checks whether its end state is already there, and long steps record their phases in
the journal so a restarted agent continues instead of repeating (a restore is never run
twice over a started NSO, an installer never twice).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from agent import packages as pkgs
from agent.config import Config, HostPaths
from agent.download import Artifact, Downloader, verified
from agent.errors import AgentError, CliError, NsoError, StepFailed
from agent.journal import Journal
from agent.nso import STARTED, STOPPED, Nso, NsoCli, running_config_fingerprint

LOG_LINES = 400


@dataclass
class StepContext:
    config: Config
    step: dict[str, Any]
    journal: Journal
    downloader: Optional[Downloader] = None
    on_progress: Optional[Callable[[int, str], None]] = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))

    def __post_init__(self) -> None:
        self.nso = Nso(self.config, self.log)
        self.cli = NsoCli(self.config, self.log)

    @property
    def paths(self) -> HostPaths:
        return self.config.paths

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.step.get("params") or {})

    @property
    def context(self) -> dict[str, Any]:
        return dict(self.step.get("context") or {})

    @property
    def job_id(self) -> int:
        return int(self.step.get("job_id") or (self.step.get("job") or {}).get("id") or 0)

    def param(self, name: str, default: Any = None) -> Any:
        """A step parameter, else what an earlier step put into the job's context."""
        value = self.params.get(name)
        if value is None:
            value = self.context.get(name, default)
        return value

    def log(self, text: str) -> None:
        for line in str(text).splitlines() or [""]:
            self.lines.append(line)

    def progress(self, percent: int, message: str) -> None:
        self.log(message)
        if self.on_progress is not None:
            self.on_progress(percent, message)

    def log_tail(self, limit: int = 16000) -> str:
        return "\n".join(self.lines)[-limit:]

    def close(self) -> None:
        self.cli.close()


# -- helpers ---------------------------------------------------------------------------


def _require_downloader(ctx: StepContext) -> Downloader:
    if ctx.downloader is None:
        raise StepFailed("this step downloads artifacts but the agent has no server to ask")
    return ctx.downloader


def stage_package(ctx: StepContext, artifact: Artifact) -> Path:
    """Download (resume, verify) one package into ``/opt/ncs/packages`` under its own name."""
    if not artifact.filename.startswith("ncs-"):
        raise StepFailed(
            f"{artifact.filename}: package files are kept as ncs-<X.Y>-<name>-<version>.tar.gz "
            "in /opt/ncs/packages; rename it in the catalog"
        )
    dest = ctx.paths.package_store / artifact.filename
    if verified(dest, artifact.sha256, artifact.size):
        ctx.log(f"{ctx.paths.host_path(dest)} is already there and verified")
        return dest
    if dest.exists():
        ctx.log(f"{ctx.paths.host_path(dest)} differs from the catalog's file: replacing it")
    downloaded = _require_downloader(ctx).fetch(
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
    ctx.log(f"{ctx.paths.host_path(current)} -> ncs-{vsn}")
    return True


def _check_version(ctx: StepContext, vsn: str) -> None:
    seen = ctx.nso.version()
    if seen != vsn:
        raise StepFailed(
            f"ncs --version of {ctx.paths.host_path(ctx.paths.current)} says {seen}, expected {vsn}"
        )


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
    (tmp / "links.json").write_text(json.dumps({"links": links}, indent=2, sort_keys=True))
    shutil.rmtree(extra, ignore_errors=True)
    os.rename(tmp, extra)
    ctx.log(f"saved {len(links)} package links and their files in {paths.host_path(extra)}")


def restore_package_links(ctx: StepContext, extra: Path) -> None:
    """Put back the package files and the exact set of links saved at backup."""
    paths = ctx.paths
    try:
        saved = json.loads((extra / "links.json").read_text())["links"]
    except (OSError, ValueError, KeyError) as exc:
        raise StepFailed(f"cannot read the saved package links in {extra}: {exc}") from None
    targets: list[Path] = []
    for name, host_target in sorted(saved.items()):
        copy = extra / "packages" / name
        if not host_target:  # a package folder or file that was no link: put it back as is
            ctx.log(f"note: {name} was not a link; it is restored as a link to the saved copy")
            targets.append(copy)
            continue
        target = paths.path(host_target)
        if not target.exists() and copy.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(copy, target)
            ctx.log(f"restored {host_target} from the saved copy")
        if target.name != name:
            raise StepFailed(f"saved link {name} -> {host_target}: names differ, relink by hand")
        targets.append(target)
    if pkgs.relink(paths.load_dir, targets):
        ctx.log(f"relinked {paths.host_path(paths.load_dir)} to the {len(targets)} saved links")


def _wait_started_or_start(ctx: StepContext, reload: bool, timeout: float) -> None:
    state = ctx.nso.status()
    if state == STARTED:
        ctx.log("NSO is already started")
        return
    if state != STOPPED:
        ctx.log(f"NSO is {state} (a start in progress): waiting for it")
        state = ctx.nso.wait_status(lambda s: s in (STARTED, STOPPED), timeout)
        if state == STARTED:
            return
    ctx.nso.start(reload=reload, timeout=timeout)


def _show_value(text: str, leaf: str) -> Optional[str]:
    """``oper-status up`` -> ``up`` from CLI output (first match, tolerant of indentation)."""
    match = re.search(
        rf"^[ \t]*(?:\S+[ \t]+)*?{re.escape(leaf)}[ \t]+(.+?)[ \t]*$", text, re.MULTILINE
    )
    return match.group(1).strip('"') if match else None


def _loaded_packages(cli: NsoCli) -> set[str]:
    text = cli.run("show packages | nomore")
    return set(re.findall(r"^\s*packages package (\S+)", text, re.MULTILINE))


def _check_packages(ctx: StepContext, expected: list[tuple[str, str]]) -> list[str]:
    """Problems with the loaded packages: each expected one up at its version."""
    problems = []
    for name, version in expected:
        status = ctx.cli.run(f"show packages package {name} oper-status", check=False)
        oper = _show_value(status, "oper-status")
        if oper != "up":
            detail = _show_value(status, "error-info") or status.strip()
            problems.append(f"package {name}: oper-status {oper} ({detail})")
            continue
        if version:
            got = _show_value(
                ctx.cli.run(f"show packages package {name} package-version", check=False),
                "package-version",
            )
            if got != version:
                problems.append(f"package {name}: version {got} loaded, expected {version}")
    return problems


def _fingerprint_problem(ctx: StepContext, expected: Optional[str]) -> Optional[str]:
    if not expected:
        ctx.log("no fingerprint recorded at backup: the data check is skipped")
        return None
    got, lines = running_config_fingerprint(ctx.cli)
    ctx.log(f"data fingerprint {got} ({lines} lines)")
    if got != expected:
        return (
            f"data differs from the backup: running-config fingerprint {got}, expected {expected}"
        )
    return None


# -- the single-node upgrade -------------------------------------------------------------


def prestage(ctx: StepContext) -> dict[str, Any]:
    p = ctx.params
    target = str(p["target_version"])
    artifacts = [Artifact.from_params(a) for a in p.get("packages") or []]
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
        installer = Artifact.from_params(p["installer"])
        ctx.progress(int(100 * len(artifacts) / steps), f"downloading {installer.filename}")
        path = _require_downloader(ctx).fetch(
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


def backup(ctx: StepContext) -> dict[str, Any]:
    paths = ctx.paths
    fingerprint = ctx.journal.fact("fingerprint")
    if not fingerprint:
        if ctx.nso.status() != STARTED:
            raise StepFailed(
                "NSO is not started: the backup step records a fingerprint of the running "
                "configuration to verify the data after the upgrade; start NSO and retry"
            )
        fingerprint, lines = running_config_fingerprint(ctx.cli)
        ctx.journal.update("fingerprinted", fingerprint=fingerprint, fingerprint_lines=lines)
        ctx.log(f"data fingerprint {fingerprint} ({lines} lines of running-config)")
    backup_file = ctx.journal.fact("backup_file")
    if not backup_file or not paths.path(backup_file).exists():
        ctx.progress(30, "ncs-backup")
        backup_file = paths.host_path(ctx.nso.backup())
        ctx.journal.update("backed-up", backup_file=backup_file)
    extra = paths.backups_dir / f"nso-agent-job-{ctx.job_id}"
    if ctx.journal.entry is None or ctx.journal.entry.phase != "saved-links" or not extra.exists():
        ctx.progress(70, "copying the package links and files ncs-backup skips")
        save_package_links(ctx, extra)
        ctx.journal.update("saved-links")
    return {
        "backup_file": backup_file,
        "extra_dir": paths.host_path(extra),
        "fingerprint": fingerprint,
    }


def stop(ctx: StepContext) -> dict[str, Any]:
    ctx.nso.stop()
    return {}


def compact(ctx: StepContext) -> dict[str, Any]:
    state = ctx.nso.status()
    if state != STOPPED:
        raise StepFailed(f"NSO is {state}: the CDB is compacted only while NSO is stopped")
    ctx.nso.cdb_compact()
    return {}


def switch_current(ctx: StepContext) -> dict[str, Any]:
    target = str(ctx.params["target_version"])
    # The job's source release when known: a second run must report what the first did.
    previous = (
        ctx.journal.fact("previous")
        or (ctx.step.get("job") or {}).get("source_version")
        or ctx.nso.current_version()
    )
    ctx.journal.update(previous=previous)
    switch_current_to(ctx, target)
    _check_version(ctx, target)
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
    import xml.etree.ElementTree as ET

    names = [str(n) for n in ctx.params.get("remove_elements") or []]
    conf = ctx.paths.ncs_conf
    original = conf.read_text()
    text, removed = remove_conf_elements(original, names)
    if not removed:
        ctx.log(f"none of {', '.join(names) or '(nothing)'} in {ctx.paths.host_path(conf)}")
        return {"removed_elements": []}
    try:
        ET.fromstring(text)
    except ET.ParseError as exc:
        raise StepFailed(
            f"removing {', '.join(removed)} would leave {ctx.paths.host_path(conf)} invalid "
            f"({exc}); edit it by hand"
        ) from None
    saved = conf.with_name(f"ncs.conf.nso-agent-job-{ctx.job_id}")
    if not saved.exists():
        shutil.copy2(conf, saved)
    tmp = conf.with_name(".ncs.conf.tmp")
    tmp.write_text(text)
    shutil.copymode(conf, tmp)
    os.replace(tmp, conf)
    ctx.log(f"removed {', '.join(removed)}; the old file is {ctx.paths.host_path(saved)}")
    return {"removed_elements": removed}


def relink_packages(ctx: StepContext) -> dict[str, Any]:
    artifacts = [Artifact.from_params(a) for a in ctx.params.get("packages") or []]
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
    timeout = float(ctx.params.get("start_timeout") or ctx.config.start_timeout)
    ctx.progress(10, "starting NSO with package reload")
    _wait_started_or_start(ctx, reload=True, timeout=timeout)
    return {"nso_status": STARTED}


def verify(ctx: StepContext) -> dict[str, Any]:
    target = str(ctx.param("target_version"))
    problems = []
    state = ctx.nso.status()
    if state != STARTED:
        raise StepFailed(f"NSO is {state}, not started")
    version = ctx.nso.version()
    if version != target:
        problems.append(f"ncs --version says {version}, expected {target}")
    running = _show_value(ctx.cli.run("show ncs-state version"), "version")
    if running != target:
        problems.append(f"NSO runs {running}, expected {target}")
    expected = []
    for a in ctx.params.get("packages") or []:
        artifact = Artifact.from_params(a)
        expected.append(pkgs.package_identity(ctx.paths.package_store / artifact.filename))
    problems += _check_packages(ctx, expected)
    extra = _loaded_packages(ctx.cli) - {name for name, _ in expected}
    if expected and extra:
        problems.append(f"packages loaded but not in the target set: {', '.join(sorted(extra))}")
    problem = _fingerprint_problem(ctx, ctx.param("fingerprint"))
    if problem:
        problems.append(problem)
    if problems:
        raise StepFailed("; ".join(problems))
    return {"version": target, "packages": [f"{n}-{v}" for n, v in expected]}


def recover(ctx: StepContext) -> dict[str, Any]:
    """The guide's Recover from a Failed Upgrade: stop, point current back, check the
    version, restore the backup (and the package links it skips), start, verify."""
    paths = ctx.paths
    source = str(ctx.param("source_version") or (ctx.step.get("job") or {}).get("source_version"))
    backup_file = ctx.param("backup_file")
    if not backup_file:
        raise StepFailed("no backup_file recorded for this job: restore by hand")
    phase = ctx.journal.entry.phase if ctx.journal.entry else "begun"
    done = ctx.journal.fact("recover_done", [])
    if "restored" not in done:
        ctx.progress(10, "stopping NSO")
        ctx.nso.stop()
        ctx.progress(25, f"pointing current back at ncs-{source}")
        switch_current_to(ctx, source)
        _check_version(ctx, source)
        ctx.progress(40, f"restoring {backup_file}")
        ctx.nso.restore(paths.path(str(backup_file)))
        done = [*done, "restored"]
        ctx.journal.update("restored", recover_done=done)
    else:
        ctx.log(f"the backup was restored already (phase {phase}); continuing")
    extra_dir = ctx.param("extra_dir")
    if extra_dir and "links" not in done:
        ctx.progress(60, "restoring the package links and files")
        restore_package_links(ctx, paths.path(str(extra_dir)))
        done = [*done, "links"]
        ctx.journal.update("links", recover_done=done)
    ctx.progress(70, "starting NSO")
    timeout = float(ctx.params.get("start_timeout") or ctx.config.start_timeout)
    _wait_started_or_start(ctx, reload=False, timeout=timeout)
    _check_version(ctx, source)
    running = _show_value(ctx.cli.run("show ncs-state version"), "version")
    if running != source:
        raise StepFailed(f"NSO runs {running} after the restore, expected {source}")
    problem = _fingerprint_problem(ctx, ctx.param("fingerprint"))
    if problem:
        raise StepFailed(problem)
    return {"rolled_back": True, "version": source}


# -- package-only upgrade ----------------------------------------------------------------


def prestage_packages(ctx: StepContext) -> dict[str, Any]:
    artifacts = [Artifact.from_params(a) for a in ctx.params.get("packages") or []]
    for i, artifact in enumerate(artifacts):
        ctx.progress(int(100 * i / max(1, len(artifacts))), f"staging {artifact.filename}")
        stage_package(ctx, artifact)
    return {"staged_packages": [a.filename for a in artifacts]}


def _package_refs(ctx: StepContext) -> list[tuple[str, str, str]]:
    """(filename, name, version) of each package the step names."""
    refs = []
    for a in ctx.params.get("packages") or []:
        filename = str(a.get("filename") or "")
        name, version = a.get("name"), a.get("version")
        if not (name and version):
            name, version = pkgs.package_identity(ctx.paths.package_store / filename)
        refs.append((filename, str(name), str(version)))
    return refs


def install_packages(ctx: StepContext) -> dict[str, Any]:
    installed = []
    for filename, name, version in _package_refs(ctx):
        if not (ctx.paths.package_store / filename).exists():
            raise StepFailed(f"/opt/ncs/packages/{filename} is missing: run prestage_packages")
        out = ctx.cli.run(f"software packages install package {name}-{version} replace-existing")
        installed.append(out.strip() or f"installed {name}-{version}")
    return {"installed": installed}


def _reload_failures(text: str) -> list[str]:
    """``result false`` blocks of a reload's output, with their ``info``."""
    failures = []
    for block in re.findall(r"reload-result\s*\{(.*?)\}", text, re.DOTALL):
        if re.search(r"result\s+false", block):
            package = _show_value(block, "package") or "?"
            info = _show_value(block, "info") or ""
            failures.append(f"{package}: {info}".strip(": "))
    return failures


def reload_packages(ctx: StepContext) -> dict[str, Any]:
    allow = bool(ctx.params.get("allow_data_loss"))
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
    failures = _reload_failures(out)
    if failures:
        raise StepFailed("packages reload failed: " + "; ".join(failures))
    return {"reloaded": True}


def verify_packages(ctx: StepContext) -> dict[str, Any]:
    refs = _package_refs(ctx)
    problems = _check_packages(ctx, [(name, version) for _, name, version in refs])
    if problems:
        raise StepFailed("; ".join(problems))
    return {"packages": [f"{n}-{v}" for _, n, v in refs]}


def recover_packages(ctx: StepContext) -> dict[str, Any]:
    extra_dir = ctx.param("extra_dir")
    if not extra_dir:
        raise StepFailed("no extra_dir recorded at backup: the package links cannot be restored")
    restore_package_links(ctx, ctx.paths.path(str(extra_dir)))
    if ctx.nso.status() != STARTED:
        timeout = float(ctx.params.get("start_timeout") or ctx.config.start_timeout)
        _wait_started_or_start(ctx, reload=True, timeout=timeout)
    else:
        out = ctx.cli.run("packages reload", timeout=3600)
        failures = _reload_failures(out)
        if failures:
            raise StepFailed("packages reload of the saved set failed: " + "; ".join(failures))
    return {"rolled_back": True}


STEPS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "prestage": prestage,
    "backup": backup,
    "stop": stop,
    "compact": compact,
    "switch_current": switch_current,
    "ncs_conf": ncs_conf,
    "relink_packages": relink_packages,
    "start": start,
    "verify": verify,
    "recover": recover,
    "prestage_packages": prestage_packages,
    "install_packages": install_packages,
    "reload_packages": reload_packages,
    "verify_packages": verify_packages,
    "recover_packages": recover_packages,
}


def run_step(ctx: StepContext) -> dict[str, Any]:
    """Run the step ``ctx.step`` names; NSO errors become StepFailed with their output."""
    name = ctx.step.get("name", "")
    func = STEPS.get(name)
    if func is None:
        raise StepFailed(
            f"this agent (nso-agent) does not know the step {name!r}; upgrade the agent"
        )
    try:
        return func(ctx)
    except StepFailed:
        raise
    except NsoError as exc:
        if exc.output:
            ctx.log(exc.output)
        raise StepFailed(str(exc)) from exc
    except AgentError as exc:  # downloads, configuration: the message says what to do
        raise StepFailed(str(exc)) from exc
    finally:
        ctx.close()


def hostname() -> str:
    return socket.getfqdn()


__all__ = ["STEPS", "StepContext", "run_step"]
