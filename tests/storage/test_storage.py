"""Storage backends against the real thing: a folder on disk and a SeaweedFS S3 server."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from repo_server.config import ConfigError, Settings
from repo_server.errors import StorageError
from repo_server.storage import LocalStorage, Storage, blob_key, make_storage
from repo_server.storage.s3 import S3Storage
from tests.support.ports import free_port
from tests.support.s3 import S3Server

BlobFile = Callable[[bytes], "tuple[str, Path]"]
REPO_SERVER = Path(__file__).resolve().parents[2] / "repo_server"


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    storage = make_storage(Settings().with_overrides(data_dir=tmp_path / "data"))
    assert isinstance(storage, LocalStorage)
    return storage


@pytest.fixture
def s3_storage(s3_server: S3Server, tmp_path: Path) -> S3Storage:
    overrides = s3_server.settings_overrides(s3_server.new_bucket())
    storage = make_storage(Settings().with_overrides(data_dir=tmp_path / "data", **overrides))
    assert isinstance(storage, S3Storage)
    return storage


def read_all(storage: Storage, digest: str) -> bytes:
    with storage.open(digest) as stream:
        return stream.read()


# --- both backends ------------------------------------------------------------------------


def test_put_exists_stat_open_delete(storage: Storage, blob_file: BlobFile) -> None:
    data = b"an NSO package, pretend\n" * 100
    digest, source = blob_file(data)
    assert not storage.exists(digest)

    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    assert storage.put_file(digest, source) is True

    assert storage.exists(digest)
    info = storage.stat(digest)
    assert (info.digest, info.size) == (digest, len(data))
    assert info.modified.tzinfo is not None and info.modified >= before
    assert read_all(storage, digest) == data
    with storage.open(digest) as stream:  # partial reads work like a file
        assert stream.read(3) == data[:3]

    storage.delete(digest)
    assert not storage.exists(digest)
    storage.delete(digest)  # missing is fine


def test_put_existing_digest_returns_false_and_keeps_original(
    storage: Storage, blob_file: BlobFile
) -> None:
    digest, first = blob_file(b"original bytes")
    assert storage.put_file(digest, first) is True

    # A second source under the same name: the blob is not touched, the source left alone.
    _, second = blob_file(b"impostor bytes")
    mode = second.stat().st_mode
    assert storage.put_file(digest, second) is False
    assert second.read_bytes() == b"impostor bytes"
    assert second.stat().st_mode == mode
    assert read_all(storage, digest) == b"original bytes"


def test_missing_blob_is_file_not_found(storage: Storage) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert not storage.exists(digest)
    with pytest.raises(FileNotFoundError):
        storage.open(digest)
    with pytest.raises(FileNotFoundError):
        storage.stat(digest)
    assert storage.local_path(digest) is None
    storage.delete(digest)


def test_iter_blobs_lists_every_blob(storage: Storage, blob_file: BlobFile) -> None:
    assert list(storage.iter_blobs()) == []
    stored = {}
    for i in range(5):
        data = f"blob number {i}".encode() * (i + 1)
        digest, source = blob_file(data)
        storage.put_file(digest, source)
        stored[digest] = len(data)
    listed = {info.digest: info.size for info in storage.iter_blobs()}
    assert listed == stored
    assert all(info.modified.tzinfo is not None for info in storage.iter_blobs())


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "ab" * 31, ""])
def test_malformed_digest_never_reaches_the_backend(storage: Storage, bad: str) -> None:
    with pytest.raises(ValueError):
        storage.exists(bad)
    with pytest.raises(ValueError):
        blob_key(bad)


@pytest.mark.slow
def test_large_file_round_trip(
    storage: Storage, blob_file: BlobFile, s3_server: S3Server, tmp_path: Path
) -> None:
    """40 MiB with the multipart threshold at 8 MiB: S3 uploads it in parts."""
    if isinstance(storage, S3Storage):
        storage = S3Storage(
            bucket=storage.bucket,
            prefix=storage.prefix,
            endpoint_url=storage.endpoint_url,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
            multipart_threshold=8 << 20,
        )
    data = os.urandom(40 << 20)
    digest, source = blob_file(data)
    assert storage.put_file(digest, source) is True

    hasher = hashlib.sha256()
    with storage.open(digest) as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    assert hasher.hexdigest() == digest
    assert storage.stat(digest).size == len(data)

    if isinstance(storage, S3Storage):
        head = s3_server.client().head_object(
            Bucket=storage.bucket, Key=storage.prefix + blob_key(digest)
        )
        # A multipart object's ETag ends in -<number of parts>.
        assert head["ETag"].strip('"').endswith("-5")
        assert head["Metadata"]["sha256"] == digest


def test_make_storage_picks_backend(tmp_path: Path, s3_server: S3Server) -> None:
    local = make_storage(Settings().with_overrides(data_dir=tmp_path))
    assert isinstance(local, LocalStorage) and local.name == "local"
    assert local.root == tmp_path / "blobs"
    s3 = make_storage(
        Settings().with_overrides(data_dir=tmp_path, **s3_server.settings_overrides("x-bucket"))
    )
    assert isinstance(s3, S3Storage) and s3.name == "s3"
    assert (s3.bucket, s3.endpoint_url) == ("x-bucket", s3_server.endpoint_url)


# --- local disk ---------------------------------------------------------------------------


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_local_blob_is_read_only_in_place_and_source_consumed(
    local_storage: LocalStorage, blob_file: BlobFile
) -> None:
    digest, source = blob_file(b"bytes")
    assert local_storage.put_file(digest, source)
    path = local_storage.root / digest[:2] / digest[2:4] / digest
    assert local_storage.local_path(digest) == path
    assert all_files(local_storage.root) == [path]  # no temp names left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert not source.exists()
    assert local_storage.presigned_url(digest, "GET", 60) is None


def test_local_put_across_filesystems_copies(local_storage: LocalStorage) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == local_storage.root.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem")
    source = shm / f"nso-test-{os.getpid()}-{threading.get_ident()}"
    source.write_bytes(b"from another disk")
    try:
        digest = hashlib.sha256(b"from another disk").hexdigest()
        assert local_storage.put_file(digest, source) is True
        assert read_all(local_storage, digest) == b"from another disk"
        assert [p.name for p in all_files(local_storage.root)] == [digest]
    finally:
        source.unlink(missing_ok=True)


def test_local_iter_blobs_ignores_junk(local_storage: LocalStorage, blob_file: BlobFile) -> None:
    digest, source = blob_file(b"the only blob")
    local_storage.put_file(digest, source)
    other = hashlib.sha256(b"misplaced").hexdigest()
    folder = local_storage.root / digest[:2] / digest[2:4]
    junk = [
        folder / f".incoming-{digest[:8]}",  # a copy a crash interrupted
        folder / f"{digest}.tmp",
        folder / digest.upper(),
        folder / other,  # a digest in the wrong folder
        local_storage.root / "README",
        local_storage.root / "zz" / "yy" / ("0" * 64),
        local_storage.root / ".check-abc",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"junk")
    assert [info.digest for info in local_storage.iter_blobs()] == [digest]


def test_local_delete_prunes_empty_folders(
    local_storage: LocalStorage, blob_file: BlobFile
) -> None:
    digest, source = blob_file(b"short-lived")
    local_storage.put_file(digest, source)
    local_storage.delete(digest)
    assert list(local_storage.root.iterdir()) == []


def test_local_concurrent_puts_create_once(
    local_storage: LocalStorage, blob_file: BlobFile
) -> None:
    sources = [blob_file(b"same bytes") for _ in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(sources))

    def put(digest: str, source: Path) -> None:
        barrier.wait()
        results.append(local_storage.put_file(digest, source))

    threads = [threading.Thread(target=put, args=pair) for pair in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert read_all(local_storage, sources[0][0]) == b"same bytes"


def test_local_check(local_storage: LocalStorage, tmp_path: Path) -> None:
    local_storage.check()
    assert [p.name for p in local_storage.root.iterdir()] == []  # the probe file is gone

    missing = LocalStorage(tmp_path / "nowhere", create=False)
    with pytest.raises(StorageError, match=r"nowhere.*does not exist.*NSO_REPO_STORAGE_DIR"):
        missing.check()

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(StorageError, match="a-file"):
        LocalStorage(a_file, create=False).check()


def test_local_check_unwritable() -> None:
    """A folder the server's user cannot write is reported, checked as an unprivileged user
    (CI runs as root, which may write anywhere), in a forked child that drops to nobody."""
    base = Path(tempfile.mkdtemp(prefix="nso-ro-"))
    base.chmod(0o755)
    root = base / "blobs"
    root.mkdir(mode=0o555)
    try:
        pid = os.fork()
        if pid == 0:  # child: become nobody, then try
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                LocalStorage(root, create=False).check()
            except StorageError as exc:
                code = 0 if "not writable" in exc.message else 2
            except BaseException:
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        root.chmod(0o755)
        shutil.rmtree(base)


def test_local_cannot_create_root_is_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot create the blob folder"):
        LocalStorage(tmp_path / "file" / "blobs")


# --- S3 -----------------------------------------------------------------------------------


def test_s3_stores_sha256_checksum_and_metadata(
    s3_storage: S3Storage, s3_server: S3Server, blob_file: BlobFile
) -> None:
    digest, source = blob_file(b"checked by the server")
    s3_storage.put_file(digest, source)
    head = s3_server.client().head_object(
        Bucket=s3_storage.bucket, Key=s3_storage.prefix + blob_key(digest), ChecksumMode="ENABLED"
    )
    assert head["Metadata"]["sha256"] == digest
    assert bytes.fromhex(digest) == __import__("base64").b64decode(head["ChecksumSHA256"])


def test_s3_refuses_bytes_that_do_not_match_the_digest(
    s3_storage: S3Storage, blob_file: BlobFile
) -> None:
    digest = hashlib.sha256(b"what the caller claims").hexdigest()
    _, source = blob_file(b"what is really in the file")
    with pytest.raises(StorageError, match=s3_storage.bucket):
        s3_storage.put_file(digest, source)
    assert not s3_storage.exists(digest)


def test_s3_iter_blobs_pages_and_ignores_foreign_keys(
    s3_storage: S3Storage, s3_server: S3Server, blob_file: BlobFile
) -> None:
    s3_storage.list_page_size = 2
    digests = set()
    for i in range(5):
        digest, source = blob_file(f"paged {i}".encode())
        s3_storage.put_file(digest, source)
        digests.add(digest)
    client = s3_server.client()
    some = next(iter(digests))
    for key in ["blobs/README", f"blobs/{some}", f"elsewhere/{blob_key(some)}", "x.tmp"]:
        client.put_object(Bucket=s3_storage.bucket, Key=key, Body=b"junk")
    assert {info.digest for info in s3_storage.iter_blobs()} == digests


@pytest.fixture
def presigned(s3_storage: S3Storage, blob_file: BlobFile) -> dict[str, Any]:
    data = b"downloaded straight from S3"
    digest, source = blob_file(data)
    s3_storage.put_file(digest, source)
    return {
        "data": data,
        "digest": digest,
        "get": s3_storage.presigned_url(digest, "GET", 60),
        "head": s3_storage.presigned_url(digest, "HEAD", 60),
    }


def test_presigned_get_and_head(presigned: dict[str, Any]) -> None:
    got = requests.get(presigned["get"], timeout=10)
    assert got.status_code == 200 and got.content == presigned["data"]
    head = requests.head(presigned["head"], timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(presigned["data"])


def test_presigned_url_is_bound_to_its_method(
    presigned: dict[str, Any], s3_storage: S3Storage
) -> None:
    assert requests.head(presigned["get"], timeout=10).status_code == 403
    assert requests.get(presigned["head"], timeout=10).status_code == 403
    assert requests.put(presigned["get"], data=b"overwritten", timeout=10).status_code == 403
    assert requests.delete(presigned["get"], timeout=10).status_code == 403
    assert read_all(s3_storage, presigned["digest"]) == presigned["data"]
    with pytest.raises(ValueError):
        s3_storage.presigned_url(presigned["digest"], "PUT", 60)


def flip(char: str) -> str:
    return "0" if char != "0" else "1"


def test_tampered_or_unsigned_urls_are_refused(
    presigned: dict[str, Any], s3_storage: S3Storage
) -> None:
    url = presigned["get"]
    at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    bad_signature = url[:at] + flip(url[at]) + url[at + 1 :]
    assert requests.get(bad_signature, timeout=10).status_code == 403

    # Another blob's key with this blob's signature.
    parts = urlsplit(url)
    path = parts.path[:-1] + flip(parts.path[-1])
    assert requests.get(urlunsplit(parts._replace(path=path)), timeout=10).status_code == 403

    longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=604800")
    assert longer != url and requests.get(longer, timeout=10).status_code == 403

    unsigned = urlunsplit(parts._replace(query=""))
    assert requests.get(unsigned, timeout=10).status_code == 403
    assert requests.head(unsigned, timeout=10).status_code == 403


def test_s3_check(s3_storage: S3Storage, s3_server: S3Server) -> None:
    s3_storage.check()

    missing = S3Storage(
        bucket="no-such-bucket",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    with pytest.raises(StorageError) as caught:
        missing.check()
    message = str(caught.value)
    assert "'no-such-bucket'" in message and s3_server.endpoint_url in message
    assert "create the bucket" in message

    wrong_key = S3Storage(
        bucket=s3_storage.bucket,
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key="not-the-secret",
    )
    with pytest.raises(StorageError, match="NSO_REPO_S3_SECRET_ACCESS_KEY"):
        wrong_key.check()


def test_s3_unreachable_endpoint_is_storage_error() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    down = S3Storage(
        bucket="any-bucket",
        endpoint_url=endpoint,
        access_key_id="k",
        secret_access_key="s",
    )
    # One call only: botocore retries a refused connection with backoff (~2 s).
    with pytest.raises(StorageError, match=r"127\.0\.0\.1.*NSO_REPO_S3_ENDPOINT_URL"):
        down.exists(hashlib.sha256(b"x").hexdigest())


# --- the vendor SDK stays behind the storage boundary -------------------------------------


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_outside_storage_imports_boto() -> None:
    storage_dir = REPO_SERVER / "storage"
    offenders = []
    checked = 0
    for path in sorted(REPO_SERVER.rglob("*.py")):
        if storage_dir in path.parents:
            continue
        checked += 1
        for name in imported_modules(path):
            if name.split(".")[0] in {"boto3", "botocore", "s3transfer", "mypy_boto3_s3"}:
                offenders.append(f"{path.relative_to(REPO_SERVER.parent)} imports {name}")
    assert checked > 0
    assert offenders == []
    # And the one place that may, does.
    assert "boto3" in imported_modules(storage_dir / "s3.py")


def test_presigned_urls_name_the_public_endpoint_when_one_is_set(
    s3_server: S3Server, tmp_path: Path, blob_file: BlobFile
) -> None:
    """NSO hosts may reach the store by another name than the server does: the redirect
    names theirs, and its signature holds there (it covers the host)."""
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    assert public != s3_server.endpoint_url
    overrides = s3_server.settings_overrides(s3_server.new_bucket())
    storage = make_storage(
        Settings().with_overrides(data_dir=tmp_path / "data", s3_public_url=public, **overrides)
    )
    data = b"fetched through the public endpoint"
    digest, source = blob_file(data)
    storage.put_file(digest, source)  # the server's own endpoint
    url = storage.presigned_url(digest, "GET", 60)
    assert url is not None and url.startswith(public + "/")
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == data
    # Signed for the public name: the same path on the server's own name is refused.
    own = url.replace(public, s3_server.endpoint_url, 1)
    assert requests.get(own, timeout=10).status_code == 403


@pytest.mark.parametrize(
    "bad",
    [
        "s3.example.net",
        "ftp://s3.example.net",
        "https://",
        "https://proxy.example.net/s3",
        "https://s3.example.net?x=1",
    ],
)
def test_a_public_endpoint_that_is_no_http_url_is_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NSO_REPO_S3_PUBLIC_URL"):
        Settings().with_overrides(data_dir=tmp_path, s3_public_url=bad)
