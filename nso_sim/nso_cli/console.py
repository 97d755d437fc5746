"""The ``ncs_cli`` console: CLI lines sent over the daemon's IPC port."""

from __future__ import annotations

from nso_sim.ha.manager import HaManager
from nso_sim.ipc import Connection
from nso_sim.node.daemon import Daemon
from nso_sim.nso_cli.session import CliSession


def serve_console(daemon: Daemon, ha: HaManager, conn: Connection, user: str) -> None:
    session = CliSession(daemon, ha, user, "127.0.0.1", "console")
    conn.send({"prompt": session.prompt()})
    try:
        while True:
            msg = conn.recv()
            if msg is None or "line" not in msg:
                return
            result = session.execute(msg["line"])
            conn.send(
                {
                    "out": result.output,
                    "ok": result.ok,
                    "exit": result.exit,
                    "prompt": session.prompt(),
                }
            )
            if result.exit:
                return
    finally:
        session.close()
