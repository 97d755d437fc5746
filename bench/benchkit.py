"""What every benchmark here needs: processes it starts and stops, ports, logs, load.

The benchmarks run as scripts (`python bench/NAME.py`), so this module is imported as a
sibling (`from benchkit import ...`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


class Terminated(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so everything started is stopped."""


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def loadavg() -> float:
    """The 1-minute load average: how busy the machine was, other processes included."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        kids.extend(int(k) for k in text.split())
    return kids


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(k for k in _children(seen[i]) if k not in seen)
        i += 1
    return seen


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes (and their reaped children) used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / ticks  # utime stime cutime cstime
    return total


@dataclass
class Started:
    """A process this script started, in its own process group, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the group (only ours) if it has not exited in time."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        # Any worker the master left behind is still in the group the master led.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start(name: str, cmd: list[str], log: Path, env: Optional[dict[str, str]] = None) -> Started:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Started(name, proc, log)


def wait_http(started: Started, url: str, timeout: float = 60.0, method: str = "GET") -> None:
    """Until `url` answers 200, or fail with the tail of the process's log."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not started.alive():
            raise BenchError(
                f"{started.name} exited with status {started.proc.returncode} before it "
                f"answered; its log ends with:\n{tail(started.log)}"
            )
        try:
            request = urllib.request.Request(url, method=method)
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{started.name} did not answer {url} within {timeout:.0f}s ({last}); "
        f"its log ends with:\n{tail(started.log)}"
    )


@dataclass
class Served:
    """`nso-repo serve` that `serve_repo` started, with a token of its own."""

    started: Started
    port: int
    base: str
    token: str


def serve_repo(
    work: Path, cleanup: list[Callable[[], None]], role: str, env: dict[str, str], workers: int = 1
) -> Served:
    """`nso-repo serve --workers WORKERS` (default 1) on a free port with its data in `work/data`, stopped by
    `cleanup`; `env` on top of this environment without its NSO_REPO_* (a developer's
    bucket, PostgreSQL URL or thread count would measure something else). The token is made
    with `nso-repo token create --role ROLE`, as an operator does."""
    data = work / "data"
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NSO_REPO_")}, **env}
    cli = [sys.executable, "-m", "repo_server.cli"]
    serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port)]
    serve += ["--data-dir", str(data), "--workers", str(workers)]
    server = start("nso-repo serve", serve, work / "server.log", env)
    cleanup.append(server.stop)
    base = f"http://127.0.0.1:{port}"
    wait_http(server, f"{base}/api/v1/health")
    made = subprocess.run(
        [*cli, "token", "create", "--role", role, "--name", "bench", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if made.returncode != 0 or not made.stdout.strip():
        raise BenchError(f"nso-repo token create failed: {made.stderr.strip()}")
    return Served(server, port, base, made.stdout.strip().splitlines()[-1])


def run_benchmark(
    console: Any,
    tmp_prefix: str,
    tmp_dir: Optional[str],
    body: Callable[[Path, list[Callable[[], None]], list[float]], dict[str, Any]],
) -> int:
    """Run `body(work, cleanup, load)` in a fresh temp folder and print its JSON summary last.

    SIGTERM and SIGHUP unwind like Ctrl-C; whatever `body` registered in `cleanup` is stopped,
    newest first, and the folder removed, on success, on error and on interruption alike.
    `load` starts with the load average before the run; `body` appends the one after.
    """

    def terminate(signum: int, _frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    cleanup: list[Callable[[], None]] = []
    work: Optional[Path] = None
    try:
        load = [loadavg()]
        if load[0] > 0.5 * (os.cpu_count() or 1):
            console.print(
                f"[yellow]note:[/] load average {load[0]:.2f} on {os.cpu_count()} CPUs: other "
                "processes compete for the CPU, so figures vary more from run to run"
            )
        work = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=tmp_dir))
        summary = body(work, cleanup, load)
    except BenchError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        console.print(f"[yellow]interrupted ({exc.__class__.__name__}), cleaning up[/]")
        return 130
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as exc:  # keep cleaning up the rest
                console.print(f"[red]cleanup:[/] {exc}")
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0


async def upload(base: str, token: str, path: Path) -> None:
    """One PUT of a small file to the catalog, raw: the light agents' client speaks JSON."""
    import asyncio

    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = path.read_bytes()
    writer.write(
        (
            f"PUT /api/v1/artifacts/{path.name} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        ).encode()
        + data
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    if status not in (200, 201):
        raise BenchError(f"uploading {path.name} answered {status}: {answer[-400:]!r}")
