"""Wake long-polling agents when work for their node appears.

`GET /api/v1/agent/next` must not poll the database while it waits. It sleeps on a
per-node counter here instead. With SQLite the server runs one process, so an in-process
condition is enough; with PostgreSQL every process LISTENs on one channel and a job change
sends `pg_notify` inside its transaction, which PostgreSQL delivers at commit.

Each waiting poll holds a server thread, so one node may hold only a few at once
(NSO_REPO_MAX_POLLS_PER_NODE): every long-poll that starts takes a ticket from a per-node
count, announced to the other processes on the same channel, and a poll with that many
newer tickets behind it stops waiting and answers 204. And only so many polls may wait at
once in one process (NSO_REPO_MAX_WAITING_POLLS, the threads less a reserve): past that, a
poll looks for work once and answers 204 with `Retry-After`, so a fleet larger than the
threads, or many stolen node tokens, leave threads for `/health` and the API.
"""

from __future__ import annotations

import logging
import secrets
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
        self._polls: defaultdict[int, int] = defaultdict(int)  # long-polls started, per node
        self._waiting = 0  # long-polls of any node waiting in this process now
        # Tells this process's own poll announcements apart from other processes' ones.
        self.tag = secrets.token_hex(8)

    def counter(self, node_id: int) -> int:
        with self._cond:
            return self._counters[node_id]

    def wake(self, node_id: int) -> None:
        with self._cond:
            self._counters[node_id] += 1
            self._cond.notify_all()

    def hold(self, cap: int) -> bool:
        """Take one of this process's `cap` places for a waiting long-poll; False when all
        are taken. Give it back with `release`."""
        with self._cond:
            if self._waiting >= cap:
                return False
            self._waiting += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._waiting -= 1

    def poll_started(self, node_id: int) -> int:
        """Count a long-poll of the node that starts, here or in another process; its ticket."""
        with self._cond:
            self._polls[node_id] += 1
            self._cond.notify_all()
            return self._polls[node_id]

    def wait(
        self, node_id: int, seen: int, timeout: float, ticket: int = 0, limit: int = 0
    ) -> bool:
        """Sleep until the node's counter moves past `seen` or `timeout` passes; with a
        `ticket`, also until `limit` newer long-polls of the node have started."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counters[node_id] == seen:
                if ticket and self._polls[node_id] - ticket >= limit:
                    return False
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


def announce_poll(session: Session, notifier: Notifier, node_id: int) -> int:
    """A long-poll of `node_id` starts: count it here at once, and in the other processes
    when the transaction commits (PostgreSQL). Returns its ticket (see `Notifier.wait`)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": f"poll:{node_id}:{notifier.tag}"},
        )
    return notifier.poll_started(node_id)


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
            return
        kind, _, rest = (payload or "").partition(":")
        node, _, tag = rest.partition(":")
        if kind == "poll" and node.isdigit() and tag != self.notifier.tag:
            self.notifier.poll_started(int(node))
