"""The PostgreSQL listener that relays other processes' wake-ups (repo_server/fleet/notify.py)
when its connection fails: killed by the server, or gone quiet without an error (a NAT or a
firewall that drops the idle flow). Either way it listens again on a fresh connection, and
every poll waiting in the process looks again, since what woke it may have been missed."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from repo_server.fleet.notify import CHANNEL, Notifier, PostgresListener
from tests.support.ports import free_port


class StallingProxy:
    """A TCP proxy to PostgreSQL whose `stall()` stops relaying on every connection open
    then (the sockets stay open and quiet, as behind a NAT that dropped them); connections
    made later are relayed."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        self.generation = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        with self.lock:
            self.generation += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                born = self.generation
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, born), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, born: int) -> None:
        try:
            while data := source.recv(65536):
                if self.generation != born:
                    continue  # stalled: swallowed, never relayed, nothing closed
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    return postgres_server.url("postgres")


@pytest.fixture
def role(pg_url: str) -> Iterator[str]:
    """A login role of the test's own. The cluster is shared by the worker's tests, and
    others may leave LISTEN connections of their own behind: every count and kill here
    looks only at this role's backends."""
    name = f"listen_{secrets.token_hex(4)}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE ROLE {name} LOGIN"))
    try:
        yield name
    finally:
        with admin.connect() as c:
            c.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": name},
            )
            c.execute(text(f"DROP ROLE IF EXISTS {name}"))
        admin.dispose()


def _listeners(url: str, role: str) -> list[int]:
    """The pids of the role's backends that LISTEN."""
    admin = create_engine(url)
    try:
        with admin.connect() as c:
            return list(
                c.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE usename = :r AND query LIKE 'LISTEN %'"
                    ),
                    {"r": role},
                ).scalars()
            )
    finally:
        admin.dispose()


def _listening(url: str, role: str, within: float = 15) -> list[int]:
    """Until one of the role's backends LISTENs on the channel; their pids."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pids := _listeners(url, role):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"no LISTEN connection of {role} after {within} s")


@pytest.fixture
def woken() -> Iterator[tuple[Notifier, threading.Event]]:
    notifier = Notifier()
    event = threading.Event()
    # A parked poll of node 1 that nothing will wake but a look-again.
    assert notifier.watch(1, notifier.counter(1), event.set)
    yield notifier, event


def test_a_killed_listen_connection_listens_again_and_waiting_polls_look_again(
    pg_url: str, role: str, woken: tuple[Notifier, threading.Event]
) -> None:
    notifier, event = woken
    listener = PostgresListener(create_engine(make_url(pg_url).set(username=role)), notifier)
    listener.start()
    try:
        first = _listening(pg_url, role)
        event.clear()
        assert notifier.watch(1, notifier.counter(1), event.set)
        admin = create_engine(pg_url)
        with admin.connect() as c:
            killed = c.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = :r AND query LIKE 'LISTEN %'"
                ),
                {"r": role},
            ).scalar_one()
            # Work for node 1 while nobody listens: this NOTIFY is lost.
            c.execute(text("SELECT pg_notify(:c, '1')"), {"c": CHANNEL})
            c.commit()
        admin.dispose()
        assert killed == 1
        assert event.wait(15), "the waiting poll was never told to look again"
        assert set(_listening(pg_url, role)).isdisjoint(first)
    finally:
        listener.stop()
        listener.join(timeout=10)


def test_a_listen_connection_gone_quiet_is_noticed_and_replaced(
    postgres_server: Any, pg_url: str, role: str, woken: tuple[Notifier, threading.Event]
) -> None:
    notifier, event = woken
    proxy = StallingProxy(postgres_server.host, postgres_server.port)
    through = make_url(pg_url).set(host="127.0.0.1", port=proxy.port, username=role)
    listener = PostgresListener(create_engine(through), notifier)
    listener.PING_EVERY_S, listener.PING_LATE_S = 0.5, 1.0
    listener.start()
    try:
        _listening(pg_url, role)
        event.clear()
        assert notifier.watch(1, notifier.counter(1), event.set)
        time.sleep(1.5)  # pings come back: nothing happens
        assert not event.is_set()
        proxy.stall()
        assert event.wait(15), "a LISTEN connection gone quiet was never noticed"
        # Listening again, on a new connection: another process's work reaches it.
        event.clear()
        assert notifier.watch(1, notifier.counter(1), event.set)
        deadline = time.monotonic() + 10
        admin = create_engine(pg_url)
        while not event.is_set() and time.monotonic() < deadline:
            with admin.connect() as c:
                c.execute(text("SELECT pg_notify(:c, '1')"), {"c": CHANNEL})
                c.commit()
            event.wait(0.5)
        admin.dispose()
        assert event.is_set()
    finally:
        listener.stop()
        listener.join(timeout=10)
        proxy.close()


def test_a_ping_that_finds_no_connection_slot_keeps_the_listen_connection(
    pg_url: str, role: str, woken: tuple[Notifier, threading.Event]
) -> None:
    """PostgreSQL out of connection slots (here: its role may have one, the LISTEN one): the
    ping cannot be sent, which says nothing of the connection that listens. Closing that
    one would hand its slot to any other client, and other processes' wake-ups would be
    lost until a slot came free."""
    notifier, event = woken
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"ALTER ROLE {role} CONNECTION LIMIT 1"))
    listener = PostgresListener(create_engine(make_url(pg_url).set(username=role)), notifier)
    listener.PING_EVERY_S = 0.3
    listener.start()
    try:
        first = _listening(pg_url, role)
        time.sleep(2)  # a few pings tried, none could connect
        assert _listeners(pg_url, role) == first, (
            "the LISTEN connection was closed for a failed ping"
        )
        event.clear()
        assert notifier.watch(1, notifier.counter(1), event.set)
        with admin.connect() as c:
            c.execute(text("SELECT pg_notify(:c, '1')"), {"c": CHANNEL})
        assert event.wait(5), "another process's wake-up did not arrive"
    finally:
        listener.stop()
        listener.join(timeout=10)
        admin.dispose()
