"""NSO's local commands (``ncs``, ``ncs-backup``, the init script, systemctl): running them
by path with a timeout, and reading what they print.

Output is parsed tolerantly (formats that no public source shows are matched loosely); a
state that cannot be told is ``unknown``, never a guess of "stopped".
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
from typing import Optional

from agent.fsutil import write_atomic

_VERSION = re.compile(r"^\s*(\d+(?:\.\d+)+)(?:[_\s].*)?$")
_STATUS = re.compile(r"^\s*status:\s*(\S+)", re.MULTILINE)
# `ncs --status` starts with the running daemon's own version: `vsn: 6.2`.
_VSN = re.compile(r"^\s*vsn:\s*(\S+)", re.MULTILINE)
_BACKUP_CREATED = re.compile(r"Backup\s+(\S+)\s+created successfully")
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

    def last_line(self) -> str:
        """The last line the command printed (what an installer says when it fails)."""
        return (self.output.splitlines() or ["no output"])[-1]

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
