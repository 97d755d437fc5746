"""Long-running processes of tests (servers, agents, scripts): started in a session of their
own with their output appended to a log file, waited on until ready, crashed with SIGKILL,
stopped and started again. Every error quotes the tail of the log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, TypeVar

from tests.support.waiting import wait_until

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
# Settings a developer's shell may carry that would point our processes elsewhere.
OWN_PREFIXES = ("NSO_REPO_", "NSO_AGENT_", "NSO_SIM_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the project's own settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(extra)
    return env


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class ServerProcess:
    """``argv`` in a session of its own, stdout and stderr appended to ``log``.

    Its own process group lets ``stop`` and ``kill`` reach its children (gunicorn's workers,
    the commands an agent runs), and keeps a Ctrl-C to pytest away from it: the fixture's
    teardown stops it. ``start`` after ``kill`` or ``stop`` runs the same command again, so
    a server keeps its port and data.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log: Path,
        *,
        env: Optional[dict[str, str]] = None,
        cwd: Optional[Path] = None,
        name: str = "",
        stop_timeout: float = 20,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.log = log
        self.env = env
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.stop_timeout = stop_timeout
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        self._offset = 0
        self._orphaned_groups: list[int] = []  # of leaders killed alone: children live on

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What the process wrote since its latest start."""
        with self.log.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return f"last lines of {self.log}:\n{log_tail(self.log, lines)}"

    def wait_ready(
        self,
        ready: Callable[[], T],
        timeout: float = 60,
        interval: float = 0.1,
        ignoring: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Poll ``ready`` until it returns something truthy, and return that. If the process
        exits first or time runs out, stop it and raise AssertionError quoting its log."""

        def check() -> T:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} while starting; "
                    f"{self.tail()}"
                )
            return ready()

        try:
            return wait_until(
                check,
                timeout,
                interval,
                message=f"{self.name} was not ready",
                details=self.tail,
                ignoring=ignoring,
            )
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def wait_exit(self, timeout: float) -> int:
        """The exit status of a process that ends by itself (AssertionError if it does not
        within ``timeout``; it keeps running, ``kill`` or ``stop`` it)."""
        assert self.process is not None, "not started"
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still runs after {timeout:g} s; {self.tail()}"
            ) from None

    def kill(self, group: bool = True) -> None:
        """SIGKILL, a crash: the whole process group, or with ``group=False`` the process
        alone, its children living on (systemd's KillMode=process)."""
        assert self.process is not None, "not started"
        if group:
            _signal_group(self.process.pid, signal.SIGKILL)
        else:
            self.process.kill()
            self._orphaned_groups.append(self.process.pid)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after ``stop_timeout`` seconds; then SIGKILL
        what is left: stray children, and those of a leader killed alone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(self.stop_timeout)
        for pgid in [*self._orphaned_groups, self.process.pid]:
            _signal_group(pgid, signal.SIGKILL)
        self._orphaned_groups.clear()
        self.process.wait()
