"""The daemon process around a node: arguments, SIGTERM, and the exit status ``ncs`` and
``systemctl`` report (11/13/14 upgrade problems, 20 cannot bind, 21 bad ncs.conf, 22 bad
install)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Optional

from nso_sim.layout import HostLayout, write_json_atomic
from nso_sim.node.daemon import Daemon, StartParts
from nso_sim.node.errors import StartupFailure, StopDuringStart


def run(start_parts: StartParts, argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nso-sim-daemon")
    p.add_argument("--root", required=True)
    p.add_argument("--reload", choices=["true", "force"])
    p.add_argument("--conf")
    p.add_argument("--start-phase0", action="store_true")
    args = p.parse_args(argv)
    layout = HostLayout.at(args.root)
    daemon = Daemon(layout, args.reload, start_parts, Path(args.conf) if args.conf else None)
    # SIGTERM (kill, a service manager) stops cleanly, like ncs --stop.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: daemon.request_stop())
    try:
        daemon.start(phased=args.start_phase0)
    except StopDuringStart:
        daemon.shutdown()
        daemon.log("INFO", "Stopped during start-up")
        _exit(daemon, 0)
    except StartupFailure as exc:
        daemon.log("ERROR", exc.reason)
        daemon.log("ERROR", f"Daemon died status={exc.code}")
        print(exc.reason, file=sys.stderr)
        print(f"Daemon died status={exc.code}", file=sys.stderr)
        _exit(daemon, exc.code)
    except Exception:
        daemon.log("ERROR", "internal error: " + traceback.format_exc())
        traceback.print_exc()
        _exit(daemon, 1)
    daemon.stop_event.wait()
    daemon.shutdown()
    daemon.log("INFO", "Stopped")
    _exit(daemon, 0)


def _exit(daemon: Daemon, code: int) -> NoReturn:
    """Record the exit status (``systemctl status`` shows it), let go of CDB, then the pid
    file: ``ncs --stop`` returns once that is gone, so CDB is free by then."""
    layout = daemon.layout
    write_json_atomic(layout.exit_file, {"pid": os.getpid(), "status": code})
    daemon.cdb_lock.release()
    with contextlib.suppress(FileNotFoundError, ValueError):
        if int(layout.pid_file.read_text()) == os.getpid():
            layout.pid_file.unlink()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
