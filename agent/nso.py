"""Talking to NSO: local commands for the shell steps, the NSO CLI over SSH for the rest.

Every command runs by its path under the host root (``/opt/ncs/current/bin/ncs``,
``/etc/init.d/ncs``), as an operator types it. Output is parsed tolerantly (formats that no
public source shows are matched loosely) and, when a command fails, surfaced verbatim.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import paramiko

from agent.config import Config, HostPaths
from agent.errors import CliError, NsoError
from agent.fsutil import write_atomic

_VERSION = re.compile(r"^\s*(\d+(?:\.\d+)+)(?:[_\s].*)?$")
_STATUS = re.compile(r"^\s*status:\s*(\S+)", re.MULTILINE)
# `ncs --status` starts with the running daemon's own version: `vsn: 6.2`.
_VSN = re.compile(r"^\s*vsn:\s*(\S+)", re.MULTILINE)
_BACKUP_CREATED = re.compile(r"Backup\s+(\S+)\s+created successfully")
# Lines with which the NSO CLI refuses a command.
_CLI_FAILURE = re.compile(r"^\s*(Error:|Aborted:|syntax error:|% Invalid|% Error)", re.MULTILINE)
# Start-up exit codes documented for NSO (nso-behaviour.md).
START_EXIT_CODES = {
    11: "CDB configuration changed in an unsupported way",
    13: "package upgrade failed",
    14: "package upgrade failed and the database is corrupt",
    20: "cannot bind a socket",
    21: "faulty configuration file",
    22: "installation problem",
}
STOPPED = "stopped"
STARTED = "started"


@dataclass
class CommandResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def output(self) -> str:
        return (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """The command line, its exit status and its output, for a report's log."""
        how = "timed out" if self.timed_out else f"exit {self.returncode}"
        return f"$ {' '.join(self.args)}  ({how}, {self.seconds:.1f} s)\n{self.output}".rstrip()


def run(
    args: list[str],
    cwd: Optional[Path] = None,
    timeout: Optional[float] = None,
    env: Optional[dict[str, str]] = None,
    input: Optional[str] = None,
) -> CommandResult:
    """Run a command; on timeout its whole process group is killed (not a daemon it started:
    NSO's daemon runs in a session of its own)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NCS_")}
    began = time.monotonic()
    proc = subprocess.Popen(  # nosec B603 # an argv list, never a shell: NSO's own commands under the host root
        args,
        cwd=str(cwd) if cwd else None,
        env={**base, **(env or {})},
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return CommandResult(
        [str(a) for a in args],
        proc.returncode,
        out or "",
        err or "",
        time.monotonic() - began,
        timed_out,
    )


def parse_version(text: str) -> Optional[str]:
    """``6.2`` from ``ncs --version`` output; tolerant of build suffixes (``6.2_230101``)."""
    for line in text.splitlines():
        match = _VERSION.match(line)
        if match:
            return match.group(1)
    return None


UNKNOWN = "unknown"


def parse_status(result: CommandResult) -> str:
    """``started``, a start-up phase (``starting``, ``phase0``...), ``stopped`` only when
    NSO positively is not there (``connection refused``), else ``unknown``: a status that
    timed out or failed otherwise must never read as "stopped" (the agent would copy,
    compact or restore under a running NSO)."""
    if result.timed_out:
        return UNKNOWN
    match = _STATUS.search(result.stdout)
    if result.returncode == 0 and match:
        return match.group(1)
    if result.returncode != 0 and "connection refused" in result.output.lower():
        return STOPPED
    return UNKNOWN


def parse_daemon_version(result: CommandResult) -> Optional[str]:
    """The version the running daemon reports (``vsn:`` of ``ncs --status``), or None."""
    match = _VSN.search(result.stdout) if result.returncode == 0 else None
    return parse_version(match.group(1)) if match else None


def parse_backup_path(output: str) -> Optional[str]:
    match = _BACKUP_CREATED.search(output)
    return match.group(1) if match else None


def version_branch(version: str) -> str:
    """``6.1`` for ``6.1.2``: the part that decides maintenance vs major."""
    return ".".join(version.split(".")[:2])


class Nso:
    """The local side of one NSO installation: its commands and its service."""

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.paths: HostPaths = config.paths
        self.log = log or (lambda _line: None)
        self.nso_seconds = 0.0  # time spent waiting on NSO's own commands

    def cmd(self, args: list[str], timeout: Optional[float] = 600, **kw: object) -> CommandResult:
        result = run(args, timeout=timeout, **kw)  # type: ignore[arg-type]
        self.nso_seconds += result.seconds
        self.log(result.describe())
        return result

    # -- facts ------------------------------------------------------------------------

    def current_version(self) -> Optional[str]:
        """The release ``current`` points at, from its folder name (no command needed)."""
        try:
            target = os.readlink(self.paths.current)
        except OSError:
            return None
        name = Path(target).name
        return name[len("ncs-") :] if name.startswith("ncs-") else None

    def installed_releases(self) -> list[str]:
        base = self.paths.install_dir
        if not base.is_dir():
            return []
        return sorted(
            p.name[len("ncs-") :]
            for p in base.iterdir()
            if p.name.startswith("ncs-") and (p / "bin" / "ncs").exists()
        )

    def version(self) -> Optional[str]:
        """``ncs --version`` of ``current`` (works with NSO down)."""
        ncs = self.paths.bin("ncs")
        if not ncs.exists():
            return None
        result = self._timed([str(ncs), "--version"])
        return parse_version(result.stdout) if result.returncode == 0 else None

    def status(self) -> str:
        """What ``ncs --status`` says; raises NsoError when it cannot tell."""
        return self.daemon()[0]

    def state(self) -> str:
        """Like ``status`` but ``unknown`` instead of raising, for callers that wait or
        act the same either way."""
        return self._query()[0]

    def daemon(self) -> tuple[str, Optional[str]]:
        """(state, version) as the running daemon reports them: what runs, not what
        ``current`` points at (they differ between a switch and the next start). Raises
        NsoError when the state cannot be told (never a guess of "stopped")."""
        state, version, result = self._query()
        if state == UNKNOWN:
            raise NsoError(
                "ncs --status did not tell whether NSO runs"
                + (" (no answer in 60 s)" if result and result.timed_out else "")
                + ": check NSO by hand; nothing is done to it meanwhile",
                result.output if result else "",
            )
        return state, version

    def _query(self) -> tuple[str, Optional[str], Optional[CommandResult]]:
        ncs = self.paths.bin("ncs")
        if not ncs.exists():
            # `current` points at no release: any installed release's `ncs --status` asks
            # the same daemon; with none installed, NSO cannot be running.
            found = [self.paths.release_dir(v) / "bin" / "ncs" for v in self.installed_releases()]
            if not found:
                return STOPPED, None, None
            ncs = found[-1]
        result = self._timed([str(ncs), "--status"])
        state = parse_status(result)
        return state, parse_daemon_version(result) if state != STOPPED else None, result

    def _timed(self, args: list[str]) -> CommandResult:
        """A quiet query of NSO (no log line), counted as time spent in NSO's commands."""
        result = run(args, timeout=60)
        self.nso_seconds += result.seconds
        return result

    # -- service ----------------------------------------------------------------------

    def _service(self, verb: str, timeout: Optional[float]) -> CommandResult:
        if self.config.uses_systemd():
            return self.cmd([str(self.paths.systemctl), verb, "ncs"], timeout=timeout)
        return self.cmd([str(self.paths.init_script), verb], timeout=timeout)

    def wait_status(
        self, done: Callable[[str], bool], timeout: float, interval: float = 0.5
    ) -> str:
        began = time.monotonic()
        counted = self.nso_seconds
        deadline = began + timeout
        while True:
            state = self.state()  # unknown while waiting is not an answer: ask again
            if done(state) or time.monotonic() >= deadline:
                # All of it is waiting on NSO (its status calls included, counted once).
                self.nso_seconds = counted + (time.monotonic() - began)
                return state
            time.sleep(min(interval, max(0.05, deadline - time.monotonic())))

    def stop(self) -> None:
        """Stop NSO through its service; done when ``ncs --status`` says it is down (an
        unknown state is stopped too, and waited for until it positively is)."""
        if self.state() == STOPPED:
            self.log("NSO is already stopped")
            return
        timeout = self.config.stop_timeout
        result = self._service("stop", timeout)
        state = self.wait_status(lambda s: s == STOPPED, timeout)
        if state != STOPPED:
            # The service did not bring it down: ask the daemon directly, as the guide's
            # fallback (`ncs --stop` returns once the daemon has gone).
            self.cmd([str(self.paths.bin("ncs")), "--stop"], timeout=timeout)
            state = self.wait_status(lambda s: s == STOPPED, 10)
        if state != STOPPED:
            raise NsoError(
                f"NSO is still {state} after stopping it; stop it by hand and retry", result.output
            )

    def start(self, reload: bool, timeout: float) -> CommandResult:
        """Start NSO (with package reload if asked) and wait until it says ``started``.

        The service's own verdict is not final: systemd gives up after 90 s while NSO keeps
        starting (the guide says so), so a failed or timed-out start command is judged by
        ``ncs --status`` until ``timeout`` passes. Raises NsoError when NSO is not started.
        """
        began = time.monotonic()
        if self.config.uses_systemd():
            result = self._start_systemd(reload, timeout)
        else:
            verb = "start-with-package-reload" if reload else "start"
            result = self._service(verb, timeout)
        state = self.state()
        if state != STARTED and state != STOPPED:
            remaining = max(1.0, timeout - (time.monotonic() - began))
            self.log(f"NSO is {state} after the start command; waiting up to {remaining:.0f} s")
            state = self.wait_status(lambda s: s in (STARTED, STOPPED), remaining)
        if state == STARTED:
            if not result.ok:
                self.log(
                    "The start command failed but NSO reached 'started' (a service timeout "
                    "is not a start failure)"
                )
            return result
        code = self.exit_code_from_log() if result.returncode in (0, 1) else result.returncode
        meaning = START_EXIT_CODES.get(code or -1, "")
        raise NsoError(
            f"NSO did not start (exit status {code}"
            + (f": {meaning}" if meaning else "")
            + ")"
            + (f"; {self.last_failure_reason()}" if self.last_failure_reason() else ""),
            result.output,
        )

    def _start_systemd(self, reload: bool, timeout: float) -> CommandResult:
        # ncs.service reads NCS_RELOAD_PACKAGES at every start: set it back afterwards or
        # every later restart reloads packages (an operator mistake the guide warns about).
        conf = self.paths.systemd_conf
        if reload:
            set_env_line(conf, "NCS_RELOAD_PACKAGES", "true")
        try:
            return self.cmd([str(self.paths.systemctl), "start", "ncs"], timeout=timeout)
        finally:
            if reload:
                set_env_line(conf, "NCS_RELOAD_PACKAGES", "false")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.paths.ncs_log.open(errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    def exit_code_from_log(self) -> Optional[int]:
        codes = re.findall(r"Daemon died status=(\d+)", self.log_tail(50))
        return int(codes[-1]) if codes else None

    def last_failure_reason(self) -> str:
        reasons = re.findall(r"(NCS package upgrade failed with reason .*)", self.log_tail(50))
        if reasons:
            return reasons[-1].strip()
        errors = [ln for ln in self.log_tail(20).splitlines() if "<ERROR>" in ln]
        return errors[-1].split(": - ", 1)[-1].strip() if errors else ""

    # -- CDB and backups --------------------------------------------------------------

    def cdb_compact(self) -> CommandResult:
        result = self.cmd([str(self.paths.bin("ncs")), "--cdb-compact", str(self.paths.cdb_dir)])
        if not result.ok:
            raise NsoError("ncs --cdb-compact failed", result.output)
        return result

    def backup(self) -> Path:
        """Run ``ncs-backup``; the real path of the backup file it made."""
        before = set(self.paths.backups_dir.glob("ncs-*.backup*"))
        result = self.cmd([str(self.paths.bin("ncs-backup"))], timeout=3600)
        if not result.ok:
            raise NsoError("ncs-backup failed", result.output)
        printed = parse_backup_path(result.output)
        if printed:
            path = Path(printed)
            # A real host prints /var/opt/ncs/...; under a test root it may print either.
            return path if path.exists() else self.paths.path(printed)
        made = sorted(
            set(self.paths.backups_dir.glob("ncs-*.backup*")) - before,
            key=lambda p: p.stat().st_mtime,
        )
        if not made:
            raise NsoError("ncs-backup said nothing about the file it made", result.output)
        return made[-1]

    def restore(self, backup: Path) -> CommandResult:
        result = self.cmd(
            [str(self.paths.bin("ncs-backup")), "--restore", str(backup), "--non-interactive"],
            timeout=3600,
        )
        if not result.ok or "Restore completed successfully" not in result.output:
            raise NsoError(f"ncs-backup --restore {backup} failed", result.output)
        return result


def set_env_line(path: Path, key: str, value: str) -> None:
    """Set ``KEY=value`` in an environment file, keeping its other lines."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    out, found = [], False
    for line in lines:
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            if not found:
                out.append(f"{key}={value}")
            found = True
        else:
            out.append(line)
    if not found:
        out.append(f"{key}={value}")
    write_atomic(path, "\n".join(out) + "\n", like=path)


class NsoCli:
    """The NSO CLI over SSH (paramiko): one connection, one exec channel per command.

    Host keys are trusted on first use and kept in ``<state dir>/cli_known_hosts``; a changed
    key is refused (paramiko's BadHostKeyException, surfaced as is).
    """

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.log = log or (lambda _line: None)
        self.known_hosts = config.state_path / "cli_known_hosts"
        self._client: Optional[paramiko.SSHClient] = None
        self.nso_seconds = 0.0  # time spent in NSO's CLI (connecting included)

    def connect(self, timeout: float = 60.0) -> paramiko.SSHClient:
        if self._client is not None and self._transport_ok():
            return self._client
        cfg = self.config
        if not cfg.cli_password and not cfg.key_path:
            # paramiko would say "No authentication methods available", which looks transient.
            raise CliError(
                "no way to log in to the NSO CLI: set [cli] password or key_file in the "
                "agent's configuration"
            )
        deadline = time.monotonic() + timeout
        while True:
            client = paramiko.SSHClient()
            if self.known_hosts.exists():
                client.load_host_keys(str(self.known_hosts))
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy)  # nosec B507 # trust on first use: the key is pinned in cli_known_hosts, a changed one is refused
            try:
                key_path = cfg.key_path
                client.connect(
                    cfg.cli_host,
                    cfg.cli_port,
                    username=cfg.cli_user,
                    password=cfg.cli_password,
                    key_filename=str(key_path) if key_path else None,
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                    banner_timeout=10,
                    auth_timeout=10,
                )
            except (paramiko.BadHostKeyException, paramiko.AuthenticationException) as exc:
                client.close()
                raise CliError(
                    f"NSO CLI at {cfg.cli_host}:{cfg.cli_port} refused the agent: {exc}; check "
                    f"[cli] user/password/key_file (and {self.known_hosts} if the host key "
                    "changed on purpose)"
                ) from None
            except (OSError, paramiko.SSHException) as exc:
                client.close()
                if time.monotonic() >= deadline:
                    raise CliError(
                        f"cannot reach the NSO CLI at {cfg.cli_host}:{cfg.cli_port}: {exc}; "
                        "is NSO started and [cli] host/port right?"
                    ) from None
                time.sleep(0.5)
                continue
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(self.known_hosts))
            self._client = client
            return client

    def _transport_ok(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def run(self, command: str, check: bool = True, timeout: float = 600) -> str:
        """Run one CLI command; its output. Raises CliError with NSO's lines verbatim when
        the CLI refuses it (exit status or ``Error:``/``Aborted:`` lines)."""
        began = time.monotonic()
        try:
            return self._run(command, check, timeout)
        finally:
            self.nso_seconds += time.monotonic() - began

    def _run(self, command: str, check: bool, timeout: float) -> str:
        for attempt in (1, 2):
            client = self.connect()
            try:
                _, stdout, stderr = client.exec_command(command, timeout=timeout)  # nosec B601 # NSO CLI commands, not a shell; names and versions in them passed agent/trust.py
                out = stdout.read().decode(errors="replace")
                err = stderr.read().decode(errors="replace")
                status = stdout.channel.recv_exit_status()
                break
            except (OSError, paramiko.SSHException, EOFError) as exc:
                # NSO restarted under us: one fresh connection, then give up.
                self.close()
                if attempt == 2:
                    raise CliError(
                        f"lost the NSO CLI at {self.config.cli_host}:{self.config.cli_port} "
                        f"during '{command}': {exc or type(exc).__name__}"
                    ) from None
        text = (out + err).rstrip()
        self.log(f"ncs# {command}\n{text}".rstrip())
        if check and (status != 0 or _CLI_FAILURE.search(text)):
            failing = [ln for ln in text.splitlines() if _CLI_FAILURE.match(ln)]
            raise CliError(
                f"NSO CLI refused '{command}': {failing[0].strip() if failing else text[:300]}",
                text,
            )
        return text

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def running_config_fingerprint(cli: NsoCli) -> tuple[str, int]:
    """(``sha256:<hex>``, number of lines) of ``show running-config``.

    What "data intact" means to the agent: the configuration NSO serves, byte for byte after
    normalising whitespace, is the same before the upgrade and after it (or after a restore).
    Volatile parts are excluded: the ``high-availability`` subtree changes during HA
    choreography, and trailing whitespace/blank lines depend on the CLI's rendering.
    """
    import hashlib

    text = cli.run("show running-config | nomore")
    kept: list[str] = []
    skipping = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        # A top-level line opens a new subtree; "!" closes the one before it.
        if not line.startswith(" ") and line != "!":
            skipping = line.startswith("high-availability")
        if skipping:
            continue
        kept.append(line)
    digest = hashlib.sha256("\n".join(kept).encode()).hexdigest()
    return f"sha256:{digest}", len(kept)
