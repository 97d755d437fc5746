"""The ``ncs`` command installed as ``/opt/ncs/ncs-<VSN>/bin/ncs``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from nso_sim import cdb_lock, ipc, scripts
from nso_sim.cdb import CdbCorrupt, CdbStore
from nso_sim.layout import HostConfig, HostLayout, root_of_release_file
from nso_sim.timings import TIMINGS, tree_bytes

# Exit status when the daemon cannot be reached (EX_UNAVAILABLE); not documented upstream.
EXIT_UNREACHABLE = 69


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncs", add_help=True)
    p.add_argument("--version", action="store_true")
    p.add_argument("--status", action="store_true")
    p.add_argument("--stop", action="store_true")
    p.add_argument("--reload", action="store_true")
    p.add_argument("--wait-started", nargs="?", const=5.0, type=float)
    p.add_argument("--wait-phase0", nargs="?", const=5.0, type=float)
    p.add_argument("--start-phase0", action="store_true")
    p.add_argument("--start-phase1", action="store_true")
    p.add_argument("--start-phase2", action="store_true")
    p.add_argument("--cdb-compact", metavar="DIR")
    p.add_argument("-c", "--conf")
    p.add_argument("--cd")
    p.add_argument("--addloadpath", action="append")
    p.add_argument("--with-package-reload", action="store_true")
    p.add_argument("--with-package-reload-force", action="store_true")
    p.add_argument("--foreground", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--nolog", action="store_true")
    p.add_argument("--heart", action="store_true")
    p.add_argument("--smp", type=int)
    p.add_argument("--timeout", type=float)
    return p


def main(script: str, vsn: str, argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    layout = HostLayout(root_of_release_file(script))
    if args.version:
        print(vsn)
        return 0
    if args.cdb_compact:
        return cdb_compact(layout, args.cdb_compact)
    if args.status:
        return status(layout)
    if args.stop:
        return stop(layout, args.timeout)
    if args.wait_started is not None:
        return wait_started(layout, args.wait_started)
    if args.wait_phase0 is not None:
        return wait_started(layout, args.wait_phase0, op="wait-phase0")
    if args.start_phase1 or args.start_phase2:
        return next_phase(layout, "start-phase1" if args.start_phase1 else "start-phase2")
    if args.reload:
        return _simple(layout, "reload-conf")
    reload_mode: Optional[str] = None
    if args.with_package_reload_force:
        reload_mode = "force"
    elif args.with_package_reload:
        reload_mode = "true"
    conf = layout.host_path(args.conf) if args.conf else None
    return start(layout, reload_mode, conf, args.foreground, args.start_phase0)


def _refused(what: str) -> int:
    print(f"connection refused ({what})", file=sys.stderr)
    return EXIT_UNREACHABLE


def status(layout: HostLayout) -> int:
    try:
        reply = ipc.request(layout, {"op": "status"}, timeout=10)
    except OSError:
        return _refused("status")
    print(f"vsn: {reply.get('version')}")
    print("SMP support: yes, using 2 threads")
    print(f"status: {reply.get('status')}")
    return 0


def stop(layout: HostLayout, timeout: Optional[float]) -> int:
    try:
        reply = ipc.request(layout, {"op": "stop"}, timeout=10)
    except OSError:
        return _refused("stop")
    if not reply.get("ok"):
        return 1
    # Like the real command, return only once the daemon has gone.
    deadline = time.monotonic() + (timeout or 120)
    while time.monotonic() < deadline:
        try:
            ipc.request(layout, {"op": "status"}, timeout=2)
        except OSError:
            _wait_pid_gone(layout, deadline)
            return 0
        time.sleep(0.02)
    print("ncs: timeout waiting for the daemon to stop", file=sys.stderr)
    return 1


def _wait_pid_gone(layout: HostLayout, deadline: float) -> None:
    try:
        pid = int(layout.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if not layout.pid_file.exists():
            return
        time.sleep(0.02)


# What each wait accepts as reached (phase0 is reached by every later phase too).
_REACHED = {"wait-started": ("started",), "wait-phase0": ("phase0", "phase1", "started")}


def wait_started(layout: HostLayout, try_time: float, op: str = "wait-started") -> int:
    deadline = time.monotonic() + try_time
    while True:
        try:
            reply = ipc.request(layout, {"op": op, "timeout": try_time}, timeout=None)
            if reply.get("status") in _REACHED[op]:
                return 0
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return _refused(op)
        time.sleep(0.05)


def next_phase(layout: HostLayout, op: str) -> int:
    """``ncs --start-phase1|2``: move a daemon started with ``--start-phase0`` on."""
    try:
        reply = ipc.request(layout, {"op": op}, timeout=120)
    except OSError:
        return _refused(op)
    if not reply.get("ok"):
        print(f"ncs: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0


def _simple(layout: HostLayout, op: str) -> int:
    try:
        ipc.request(layout, {"op": op}, timeout=10)
    except OSError:
        return _refused(op)
    return 0


def cdb_compact(layout: HostLayout, directory: str) -> int:
    cdb_dir = layout.host_path(directory)
    store = CdbStore(cdb_dir)
    if not store.exists():
        print(f"ncs: no CDB files in {cdb_dir}", file=sys.stderr)
        return 1
    nominal = TIMINGS.compact(tree_bytes(cdb_dir))
    try:
        # A running NSO owns these files: rewriting them under it would lose its writes.
        with cdb_lock.held(cdb_dir):
            # Held for the whole (simulated) work, so no NSO starts on a half-compacted CDB.
            time.sleep(HostConfig.load(layout).scaled(nominal))
            folded, size = store.compact()
    except cdb_lock.CdbLocked as exc:
        print(f"ncs: cannot compact: {exc}; stop NSO first", file=sys.stderr)
        return 1
    except CdbCorrupt as exc:
        print(f"ncs: {exc}", file=sys.stderr)
        return 1
    # Output format invented: no public source shows what --cdb-compact prints.
    print(f"Compacted {store.path} ({folded} write log entries folded, {size} bytes)")
    return 0


def start(
    layout: HostLayout,
    reload_mode: Optional[str],
    conf: Optional[Path],
    foreground: bool,
    phase0: bool = False,
) -> int:
    """Start the daemon; return once it is started (with ``phase0``: once it is in phase0,
    where it waits for ``ncs --start-phase1``)."""
    # Not "-m nso_sim.ncs_daemon": the module must not run as __main__, or its classes
    # would exist twice (once as __main__, once when other modules import it).
    bootstrap = "import sys; from nso_sim.ncs_daemon import main; main(sys.argv[1:])"
    cmd = [sys.executable, "-c", bootstrap, "--root", str(layout.root)]
    if reload_mode:
        cmd += ["--reload", reload_mode]
    if conf is not None:
        cmd += ["--conf", str(conf)]
    if phase0:
        cmd.append("--start-phase0")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (scripts.SIM_PATH, env.get("PYTHONPATH", "")) if p
    )
    if foreground:
        os.execve(sys.executable, cmd, env)  # nosec B606 # the simulator, run by tests and demos only: becomes its own daemon, no shell
    layout.log_dir.mkdir(parents=True, exist_ok=True)
    console = layout.log_dir / "ncs-console.log"
    with console.open("wb") as out:
        proc = subprocess.Popen(  # nosec B603 # the simulator, run by tests and demos only: starts its own daemon, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(layout.run_dir) if layout.run_dir.is_dir() else None,
            env=env,
            start_new_session=True,
        )
    while True:
        code = proc.poll()
        if code is not None:
            sys.stderr.write(console.read_text(errors="replace"))
            return code if code != 0 else 1
        try:
            reply = ipc.request(layout, {"op": "status"}, timeout=5)
            # The pid check keeps an older daemon on the same port from answering for ours.
            if reply.get("status") == ("phase0" if phase0 else "started") and (
                reply.get("pid") == proc.pid
            ):
                return 0
        except OSError:
            pass
        time.sleep(0.02)
