"""Blobs a step carries inside it (``content_base64``): checked as a download, no request."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from agent.client import Backoff
from agent.download import INLINE_MAX_BYTES, Artifact, Downloader
from agent.errors import ChecksumMismatch, DownloadError

NO_WAIT = Backoff(tries=2, base=0, sleep=lambda _s: None)


def ref(data: bytes, **changes: object) -> dict[str, object]:
    made: dict[str, object] = {
        "filename": "nso-6.2.3-patch-CSCx1.tar.gz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "url": "/api/v1/blobs/" + hashlib.sha256(data).hexdigest(),
        "content_base64": base64.b64encode(data).decode(),
    }
    made.update(changes)
    return made


def test_a_carried_blob_is_written_verified_without_a_request(tmp_path: Path, file_server):
    data = os.urandom(5000)
    dest = tmp_path / "out" / "bundle.tar.gz"
    got = Downloader(file_server.url, backoff=NO_WAIT).fetch(Artifact.from_params(ref(data)), dest)
    assert got.read_bytes() == data
    assert file_server.requests == []
    assert not dest.with_name(dest.name + ".part").exists()


def test_a_carried_blob_with_another_sha256_is_refused_and_nothing_kept(
    tmp_path: Path, file_server
):
    data = os.urandom(5000)
    artifact = Artifact.from_params(ref(data, sha256="ab" * 32))
    dest = tmp_path / "out" / "bundle.tar.gz"
    with pytest.raises(ChecksumMismatch, match="sha256 does not match the announced abab"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, dest)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    assert file_server.requests == []  # never "fixed" by a download behind the step's back


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"size": 4999}, "carried 5000 bytes and announced 4999"),
        ({"content_base64": "not base64!"}, "not base64"),
        ({"content_base64": 12345}, "content_base64 must be base64"),
        ({"content_base64": "A" * (4 * (INLINE_MAX_BYTES // 3 + 2))}, "at most 65536 bytes"),
    ],
)
def test_a_malformed_carried_blob_is_refused_before_anything_is_written(
    tmp_path: Path, changes: dict[str, object], why: str
):
    with pytest.raises(DownloadError, match=why):
        Artifact.from_params(ref(os.urandom(5000), **changes))


def test_a_reference_without_the_blob_is_downloaded_as_before(tmp_path: Path, file_server):
    source = tmp_path / "bundle.tar.gz"
    source.write_bytes(os.urandom(3000))
    served = file_server.add(source)
    dest = tmp_path / "out" / served.filename
    Downloader(file_server.url, backoff=NO_WAIT).fetch(served, dest)
    assert dest.read_bytes() == source.read_bytes() and len(file_server.requests) == 1
