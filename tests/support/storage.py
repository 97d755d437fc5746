"""Storage backends for tests (a pytest plugin): ``storage``, a fresh Storage of every kind
(parametrized: local disk, and S3 on the session's SeaweedFS), and ``blob_file``, which
writes a source file for ``put_file``."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.s3 import S3Server


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
