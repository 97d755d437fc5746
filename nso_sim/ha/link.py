"""One HA connection between two simulated nodes (JSON lines over TCP, the simulator's own
wire format): a reader thread, request/reply matching, serialized sends."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from typing import Any, Callable

from nso_sim.ipc import Connection


class HaLink:
    """One HA connection to a peer node; ``request`` waits for the matching reply."""

    _ids = itertools.count(1)

    def __init__(
        self,
        conn: Connection,
        peer_id: str,
        address: str,
        on_message: Callable[[HaLink, dict[str, Any]], None],
        on_close: Callable[[HaLink], None],
    ) -> None:
        self.conn = conn
        self.peer_id = peer_id
        self.address = address
        self._on_message = on_message
        self._on_close = on_close
        self._send_lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._read_loop, daemon=True).start()

    def send(self, msg: dict[str, Any]) -> bool:
        try:
            with self._send_lock:
                self.conn.send(msg)
            return True
        except OSError:
            self.close()
            return False

    def request(self, msg: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        req = next(self._ids)
        if not self.send({**msg, "req": req}):
            return {"ok": False, "info": f"connection to {self.peer_id} lost"}
        deadline = time.monotonic() + timeout
        with self._cond:
            while req not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return {"ok": False, "info": f"no reply from {self.peer_id}"}
                self._cond.wait(min(left, 0.1))
            return self._replies.pop(req)

    def _read_loop(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                if msg is None:
                    break
                if msg.get("type") == "reply":
                    with self._cond:
                        self._replies[msg["req"]] = msg
                        self._cond.notify_all()
                else:
                    self._on_message(self, msg)
        except (OSError, ValueError):
            pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.conn.sock.close()
        with self._cond:
            self._cond.notify_all()
        self._on_close(self)
