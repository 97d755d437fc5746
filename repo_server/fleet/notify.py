"""Wake long-polling agents when work for their node appears.

`GET /api/v1/agent/next` must not poll the database while it waits. It waits on a per-node
counter here instead. With SQLite the server runs one process, so in-process wake-ups are
enough; with PostgreSQL every process LISTENs on one channel (one connection per process,
whatever the number of agents) and a transaction that made work sends `pg_notify` as it
commits, which PostgreSQL delivers at commit.

A poll waits in one of two ways. Under the server's own worker it is parked
(repo_server/parking.py): no thread, and `watch` calls the worker back when the node's
counter moves. Under any other server it sleeps in its thread (`wait`), and only so many may
(`hold`, NSO_REPO_MAX_WAITING_POLLS).

One node may hold only a few waiting polls (NSO_REPO_MAX_POLLS_PER_NODE): every long-poll
that starts takes a ticket from a per-node count, announced to the other processes on the
same channel, and a poll with that many newer tickets behind it stops waiting and answers
204, so one node token cannot pile up polls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from typing import Any, Optional, Union

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from repo_server.db import dialect_of
from repo_server.parking import Wake

log = logging.getLogger(__name__)

CHANNEL = "nso_repo_work"
# A NOTIFY payload is at most 8000 bytes: wake-ups for many nodes go out in pieces this long.
PAYLOAD_BYTES = 7000


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counters: defaultdict[int, int] = defaultdict(int)
        self._polls: defaultdict[int, int] = defaultdict(int)  # long-polls started, per node
        self._waiting = 0  # long-polls of any node waiting in a thread of this process now
        # Parked long-polls: per node, each one's wake-up and its (seen, ticket, limit).
        self._watchers: defaultdict[int, dict[Wake, tuple[int, int, int]]] = defaultdict(dict)
        # Tells this process's own poll announcements apart from other processes' ones.
        self._tag = (os.getpid(), secrets.token_hex(8))

    @property
    def tag(self) -> str:
        """This process's tag. A process forked after the app was made (gunicorn's
        --preload) makes its own: with its parent's, each worker would take the others'
        wake-ups for its own, and skip them."""
        with self._cond:  # two threads of a fresh fork make one tag, not two
            if self._tag[0] != os.getpid():
                self._tag = (os.getpid(), secrets.token_hex(8))
            return self._tag[1]

    def counter(self, node_id: int) -> int:
        with self._cond:
            return self._counters[node_id]

    def wake_all(self) -> None:
        """Every waiting poll of this process looks again: what woke it may have been
        missed (the LISTEN connection was away)."""
        with self._cond:
            for node_id in list(self._counters):
                self._counters[node_id] += 1
            self._cond.notify_all()
            woken = [c for mine in self._watchers.values() for c in mine]
            self._watchers.clear()
        for callback in woken:
            callback()

    def wake(self, node_id: int) -> None:
        with self._cond:
            self._counters[node_id] += 1
            self._cond.notify_all()
            woken = self._watchers.pop(node_id, {})
        for callback in woken:
            callback()

    def watch(
        self, node_id: int, seen: int, callback: Wake, ticket: int = 0, limit: int = 0
    ) -> bool:
        """Call `callback` (once, from any thread) when the node's counter moves past `seen`
        or, with a `ticket`, when `limit` newer long-polls of the node have started. False,
        and no call, when that has happened already."""
        with self._cond:
            if self._counters[node_id] != seen or self.superseded(node_id, ticket, limit):
                return False
            self._watchers[node_id][callback] = (seen, ticket, limit)
            return True

    def unwatch(self, node_id: int, callback: Wake) -> None:
        with self._cond:
            mine = self._watchers.get(node_id)
            if mine is not None:
                mine.pop(callback, None)
                if not mine:
                    del self._watchers[node_id]

    def superseded(self, node_id: int, ticket: int, limit: int) -> bool:
        """Whether `limit` newer long-polls of the node started after the one with `ticket`."""
        with self._cond:  # reentrant: the methods above call it holding the lock
            return bool(ticket) and self._polls[node_id] - ticket >= limit

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
            ticket = self._polls[node_id]
            mine = self._watchers.get(node_id, {})
            superseded = [c for c, (_, t, lim) in mine.items() if self.superseded(node_id, t, lim)]
            for callback in superseded:
                del mine[callback]
        for callback in superseded:
            callback()
        return ticket

    def wait(
        self, node_id: int, seen: int, timeout: float, ticket: int = 0, limit: int = 0
    ) -> bool:
        """Sleep until the node's counter moves past `seen` or `timeout` passes; with a
        `ticket`, also until `limit` newer long-polls of the node have started."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counters[node_id] == seen:
                if self.superseded(node_id, ticket, limit):
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


def overtaken(notifier: Notifier, poll: dict[str, Any]) -> bool:
    """Whether a newer long-poll of the node started after this parked one (its `Parked`
    state, with the ``node_id`` and ``ticket`` it was parked with). One wake-up wakes every
    parked poll of the node; only the newest may take the step then, and the older ones (a
    restarted agent's previous poll, most often a client gone) answer 204: a step is handed
    to one poll, not to each."""
    node_id = poll.get("node_id")
    return node_id is not None and notifier.superseded(node_id, poll.get("ticket", 0), 1)


def announce(session: Session, notifier: Notifier, node_id: int) -> None:
    """Call inside the transaction that made work for `node_id`; waiters wake at its commit.

    Waking before the commit would let a waiter look, find nothing yet, and sleep through
    the change it was woken for. The other processes hear of it in one NOTIFY per
    PAYLOAD_BYTES of node ids, sent as the transaction commits: a rollout to 1,000 nodes
    costs one statement, not 1,000.
    """
    pending = session.info.setdefault("wake_after_commit", set())
    pending.add((notifier, node_id))


def announce_poll(session: Union[Session, Connection], notifier: Notifier, node_id: int) -> int:
    """A long-poll of `node_id` starts: count it here at once, and in the other processes
    when the transaction commits (PostgreSQL). Returns its ticket (see `Notifier.wait`)."""
    notify_polls(session, notifier, [node_id])
    return notifier.poll_started(node_id)


def notify_polls(
    session: Union[Session, Connection], notifier: Notifier, node_ids: list[int]
) -> None:
    """The other processes count these long-polls when the transaction commits
    (PostgreSQL), from one statement; this one counts each with `Notifier.poll_started`
    (fleet/idle_polls.py does once its transaction committed)."""
    if node_ids and dialect_of(session) == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
            {"channel": CHANNEL, "payloads": [f"poll:{n}:{notifier.tag}" for n in node_ids]},
        )


@event.listens_for(Session, "before_commit")
def _notify_other_processes(session: Session) -> None:
    pending = session.info.get("wake_after_commit")
    if not pending or session.get_bind().dialect.name != "postgresql":
        return
    # Tagged with the sending process: this process wakes its own waiters at the commit
    # (_wake_after_commit) and skips its own NOTIFY, so a poll that began in between is
    # not woken a second time for nothing.
    tags = {notifier.tag for notifier, _ in pending}
    prefix = f"work:{tags.pop()}:" if len(tags) == 1 else ""
    payloads, piece = [], ""
    for node_id in sorted({node_id for _, node_id in pending}):
        if len(prefix) + len(piece) + len(str(node_id)) + 1 > PAYLOAD_BYTES:
            payloads.append(piece)
            piece = ""
        piece = f"{piece},{node_id}" if piece else str(node_id)
    payloads.append(piece)
    for payload in payloads:
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": prefix + payload},
        )


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    for notifier, node_id in session.info.pop("wake_after_commit", set()):
        notifier.wake(node_id)


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop("wake_after_commit", None)


class ListenerDeaf(Exception):
    """The LISTEN connection stopped hearing: this process's own ping did not come back."""


class PostgresListener(threading.Thread):
    """Relays NOTIFY from other server processes to this process's Notifier.

    Its connection is its own, out of any pool (it is in autocommit and LISTENs: no
    session may ever get it). A NOTIFY sent while it is not listening (at
    start, or while it reconnects) is lost, so once it listens it wakes every poll waiting
    in this process, to look again. And a connection can go quiet without an error (a NAT
    or firewall drops the idle flow, a proxy stalls): every PING_EVERY_S it sends itself
    a ping through another connection, and reconnects when that does not come back within
    PING_LATE_S, instead of not hearing other processes' work for hours."""

    PING_EVERY_S = 15.0
    PING_LATE_S = 10.0

    def __init__(self, engine: Engine, notifier: Notifier) -> None:
        super().__init__(name="nso-repo-listen", daemon=True)
        # Connections of its own, each opened anew (no pool: a pooled connection may be
        # one the network dropped too), that give up on a peer gone quiet: TCP keepalives
        # on the listening one, and no connect or unacknowledged write waits for ever.
        self.engine = create_engine(
            engine.url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": 20000,
            },
        )
        self.notifier = notifier
        self.stopping = threading.Event()
        self.ping = f"ping:{notifier.tag}"
        self.logged_at = float("-inf")  # the last failure logged with its traceback

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._listen()
                except Exception as error:
                    if not self.stopping.is_set():
                        self._failed(error)
                        self.stopping.wait(1)
        finally:
            self.engine.dispose()

    def _failed(self, error: Exception) -> None:
        # A database that is away fails every second: the traceback once a minute.
        now = time.monotonic()
        if now - self.logged_at >= 60:
            self.logged_at = now
            log.exception("LISTEN connection lost; reconnecting")
        else:
            log.warning("LISTEN connection lost (%s); reconnecting", error)

    def _listen(self) -> None:
        raw: Any = self.engine.raw_connection()
        try:
            connection = raw.driver_connection
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
            self.notifier.wake_all()
            sent: Optional[float] = None  # when the ping now awaited went out
            due = time.monotonic() + self.PING_EVERY_S
            while not self.stopping.is_set():
                # Wake up now and then to notice stop(); notifications never wait on this.
                for notify in connection.notifies(timeout=2):
                    if notify.payload == self.ping:
                        sent = None
                    else:
                        self._relay(notify.payload)
                now = time.monotonic()
                if sent is not None and now - sent > self.PING_LATE_S:
                    raise ListenerDeaf(
                        f"its own ping did not come back within {self.PING_LATE_S:g} s"
                    )
                if sent is None and now >= due:
                    due = now + self.PING_EVERY_S
                    if self._send_ping():
                        sent = now
        finally:
            with contextlib.suppress(Exception):
                raw.close()

    def _send_ping(self) -> bool:
        """Send the ping from a connection of its own; False when that fails. A ping that
        could not be sent (no connection slot free: `too many clients`) says nothing of
        the LISTEN connection, which is kept: closed, its slot could go to another client,
        and every wake-up from other processes would be lost until one came free."""
        try:
            with self.engine.connect() as other:
                other.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": CHANNEL, "payload": self.ping},
                )
                other.commit()
        except SQLAlchemyError as error:
            log.warning(
                "the LISTEN connection's ping could not be sent (%s); still listening", error
            )
            return False
        return True

    def _relay(self, payload: Optional[str]) -> None:
        payload = payload or ""
        if payload.startswith("work:"):  # work:<tag>:<ids>, from a process that woke its own
            tag, _, payload = payload[len("work:") :].partition(":")
            if tag == self.notifier.tag:
                return
        ids = payload.split(",")
        if all(node.isascii() and node.isdigit() for node in ids):
            for node in ids:
                self.notifier.wake(int(node))
            return
        kind, _, rest = payload.partition(":")
        node, _, tag = rest.partition(":")
        if kind == "poll" and node.isascii() and node.isdigit() and tag != self.notifier.tag:
            self.notifier.poll_started(int(node))
