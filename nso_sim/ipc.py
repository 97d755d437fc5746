"""The daemon's IPC port (``/ncs-config/ncs-ipc-address``): JSON lines over TCP.

Commands (``ncs --status``, ``--stop``, ``ncs_cli``) find the port in ``ncs.conf`` unless
``NCS_IPC_ADDR``/``NCS_IPC_PORT`` say otherwise, as the real ``ncs`` does. The message format
is the simulator's own.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Optional

from nso_sim import ncsconf
from nso_sim.layout import HostLayout


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rfile = sock.makefile("rb")

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self) -> Optional[dict[str, Any]]:
        line = self._rfile.readline()
        if not line:
            return None
        data: dict[str, Any] = json.loads(line)
        return data

    def close(self) -> None:
        try:
            self._rfile.close()
        finally:
            self.sock.close()


def ipc_endpoint(layout: HostLayout) -> tuple[str, int]:
    conf_addr, conf_port = "127.0.0.1", ncsconf.DEFAULT_IPC_PORT
    try:
        conf = ncsconf.load(layout)
        conf_addr, conf_port = conf.ipc_address, conf.ipc_port
    except ncsconf.ConfError:
        pass
    return (
        os.environ.get("NCS_IPC_ADDR", conf_addr),
        int(os.environ.get("NCS_IPC_PORT", conf_port)),
    )


def connect(layout: HostLayout, timeout: float = 10.0) -> Connection:
    """Raises ConnectionRefusedError when no daemon listens (the caller prints it)."""
    sock = socket.create_connection(ipc_endpoint(layout), timeout=timeout)
    sock.settimeout(None)
    return Connection(sock)


def request(
    layout: HostLayout, msg: dict[str, Any], timeout: Optional[float] = 600.0
) -> dict[str, Any]:
    conn = connect(layout)
    try:
        conn.sock.settimeout(timeout)
        conn.send(msg)
        reply = conn.recv()
        return reply or {"error": "connection closed"}
    finally:
        conn.close()
