"""A throwaway PostgreSQL 15 cluster for tests (a pytest plugin; fixture ``postgres_server``).

Session-scoped: under pytest-xdist each worker has its own session, so its own cluster on
its own port and folder, and workers never share state. The cluster logs to a file in its
folder; when it fails to start, the error shows the tail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.support.ports import free_port
from tests.support.processes import log_tail

PG_BIN = Path(os.environ.get("NSO_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ServiceStartError(RuntimeError):
    pass


@dataclass
class PostgresServer:
    """A running cluster; `trust` auth for user postgres on 127.0.0.1:`port`."""

    port: int
    root: Path
    startup_seconds: float = 0.0
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL of database `dbname` on this cluster."""
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql)

    def create_database(self, name: Optional[str] = None) -> str:
        """Create a database (a unique name unless given) and return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; drop to the postgres user when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _pg_run(argv: list[str], log_path: Path, timeout: float = 120) -> None:
    with open(log_path, "ab") as log:
        result = subprocess.run(
            _as_postgres(argv), stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        )
    if result.returncode != 0:
        raise ServiceStartError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}); last lines of "
            f"{log_path}:\n{log_tail(log_path, 40)}"
        )


def connections(url: str) -> list[tuple[str, str]]:
    """(state, query) of every connection to the database of `url` (a SQLAlchemy URL) but
    the one asking: what a server holds open, idle in a transaction, or LISTENing."""
    import psycopg

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(str(state), str(query)) for state, query in rows]


def stop_postgres(server: PostgresServer) -> None:
    ctl = str(PG_BIN / "pg_ctl")
    with open(server.log_path, "ab") as log:
        result = subprocess.run(
            _as_postgres([ctl, "-D", str(server.data_dir), "-m", "immediate", "-w", "stop"]),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    pid_file = server.data_dir / "postmaster.pid"
    if result.returncode == 0 or not pid_file.exists():
        return
    # pg_ctl could not stop it: kill the postmaster by the pid it recorded, but only after
    # checking that this pid really is a postgres serving our data folder.
    with contextlib.suppress(ValueError, IndexError, OSError):
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"postgres" in cmdline[0] and str(server.data_dir).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


def start_postgres(durable: bool = False, max_connections: int = 100) -> PostgresServer:
    """A new cluster. Tests run it without fsync (they never survive a power cut);
    `durable` keeps PostgreSQL's defaults, as a benchmark of the deployed shape wants."""
    if not (PG_BIN / "initdb").exists():
        raise ServiceStartError(
            f"PostgreSQL 15 binaries not found in {PG_BIN}: install postgresql-15 or set "
            "NSO_TEST_PG_BIN"
        )
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="nso-test-pg-"))
    if os.geteuid() == 0:
        # mkdtemp makes a 0700 root folder; the postgres user must own what it writes.
        shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(port=free_port(), root=root)
    (root / "sock").mkdir()
    # One log for our pg_ctl output and the server's own (-l), written by both users.
    server.log_path.touch()
    if os.geteuid() == 0:
        shutil.chown(root / "sock", "postgres", "postgres")
        shutil.chown(server.log_path, "postgres", "postgres")
    options = (
        f"-p {server.port} -k {root / 'sock'} -c listen_addresses=127.0.0.1 "
        f"-c shared_buffers=32MB -c max_connections={max_connections}"
    )
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        _pg_run(
            [
                *(str(PG_BIN / "initdb"), "-D", str(server.data_dir), "-A", "trust"),
                *("-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            server.log_path,
        )
        try:
            _pg_run(
                [
                    *(str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir)),
                    *("-l", str(server.log_path), "-o", options, "-t", "60", "-w", "start"),
                ],
                server.log_path,
            )
        except ServiceStartError:
            stop_postgres(server)
            raise
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server.startup_seconds = time.monotonic() - started
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 cluster of this session (one per xdist worker)."""
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)
        shutil.rmtree(server.root, ignore_errors=True)
