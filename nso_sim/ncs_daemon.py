"""The daemon process ``ncs`` starts: a node with its HA manager and its CLI.

The one module that knows all three; it wires them so that imports go one way only
(``nso_cli`` -> ``ha`` -> ``node``).
"""

from __future__ import annotations

import socket
from typing import Optional

from nso_sim.ha.manager import HaManager
from nso_sim.ipc import Connection
from nso_sim.node import process
from nso_sim.node.daemon import Daemon
from nso_sim.node.parts import Parts
from nso_sim.nso_cli.console import serve_console
from nso_sim.nso_cli.ssh import SshServer


def start_parts(daemon: Daemon, cli_sock: socket.socket, ha_sock: Optional[socket.socket]) -> Parts:
    ha = HaManager(daemon, ha_sock)
    # Serves SSH from phase2 on, when the node starts it (nso_sim.node.daemon).
    ssh = SshServer(daemon, ha, cli_sock)

    def console(conn: Connection, user: str) -> None:
        serve_console(daemon, ha, conn, user)

    return Parts(ha=ha, ssh=ssh, console=console)


def main(argv: Optional[list[str]] = None) -> None:
    process.run(start_parts, argv)
