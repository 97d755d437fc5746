"""Wake long-polling agents when work for their node appears.

`GET /api/v1/agent/next` must not poll the database while it waits. It sleeps on a
per-node counter here instead. With SQLite the server runs one process, so an in-process
condition is enough; with PostgreSQL every process LISTENs on one channel and a job change
sends `pg_notify` inside its transaction, which PostgreSQL delivers at commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any, Optional

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "nso_repo_work"


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counters: defaultdict[int, int] = defaultdict(int)

    def counter(self, node_id: int) -> int:
        with self._cond:
            return self._counters[node_id]

    def wake(self, node_id: int) -> None:
        with self._cond:
            self._counters[node_id] += 1
            self._cond.notify_all()

    def wait(self, node_id: int, seen: int, timeout: float) -> bool:
        """Sleep until the node's counter moves past `seen` or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counters[node_id] == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


def announce(session: Session, notifier: Notifier, node_id: int) -> None:
    """Call inside the transaction that made work for `node_id`; waiters wake at its commit.

    Waking before the commit would let a waiter look, find nothing yet, and sleep through
    the change it was woken for.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": str(node_id)},
        )
    pending = session.info.setdefault("wake_after_commit", set())
    pending.add((notifier, node_id))


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    for notifier, node_id in session.info.pop("wake_after_commit", set()):
        notifier.wake(node_id)


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop("wake_after_commit", None)


class PostgresListener(threading.Thread):
    """Relays NOTIFY from other server processes to this process's Notifier."""

    def __init__(self, engine: Engine, notifier: Notifier) -> None:
        super().__init__(name="nso-repo-listen", daemon=True)
        self.engine = engine
        self.notifier = notifier
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._listen()
            except Exception:
                if not self.stopping.is_set():
                    log.exception("LISTEN connection lost; reconnecting")
                    self.stopping.wait(1)

    def _listen(self) -> None:
        raw: Any = self.engine.raw_connection()
        try:
            connection = raw.driver_connection
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
            while not self.stopping.is_set():
                # Wake up now and then to notice stop(); notifications never wait on this.
                for notify in connection.notifies(timeout=2):
                    self._relay(notify.payload)
        finally:
            raw.close()

    def _relay(self, payload: Optional[str]) -> None:
        if payload and payload.isdigit():
            self.notifier.wake(int(payload))
