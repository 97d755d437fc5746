"""Downloads: resume with Range, verification, redirects that drop the token, retries."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.client import Backoff
from agent.download import Artifact, Downloader
from agent.errors import ChecksumMismatch, DownloadError

NO_WAIT = Backoff(tries=4, base=0, sleep=lambda _s: None)


def blob(tmp_path: Path, size: int = 300_000, name: str = "ncs-6.2-l3vpn-1.0.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_interrupted_download_resumes_with_range(tmp_path, file_server):
    artifact = file_server.add(blob(tmp_path))
    file_server.cut_after, file_server.cuts_left = 100_000, 1
    dest = tmp_path / "out" / artifact.filename
    got = Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, dest)
    assert got == dest and hashlib.sha256(dest.read_bytes()).hexdigest() == artifact.sha256
    assert not dest.with_name(dest.name + ".part").exists()
    ranges = [r["headers"].get("Range") for r in file_server.requests]
    assert ranges == [None, "bytes=100000-"]


def test_partial_file_left_by_a_crash_is_resumed(tmp_path, file_server):
    source = blob(tmp_path)
    artifact = file_server.add(source)
    dest = tmp_path / "out" / artifact.filename
    dest.parent.mkdir()
    dest.with_name(dest.name + ".part").write_bytes(source.read_bytes()[:123_456])
    Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, dest)
    assert dest.read_bytes() == source.read_bytes()
    assert [r["headers"].get("Range") for r in file_server.requests] == ["bytes=123456-"]


def test_server_ignoring_range_restarts_cleanly(tmp_path, file_server):
    source = blob(tmp_path)
    artifact = file_server.add(source)
    file_server.honour_range = False
    dest = tmp_path / "out" / artifact.filename
    dest.parent.mkdir()
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 1000)
    Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, dest)
    assert dest.read_bytes() == source.read_bytes()


def test_sha256_mismatch_is_refused_and_nothing_is_kept(tmp_path, file_server):
    good = file_server.add(blob(tmp_path))
    wrong = Artifact(good.filename, "0" * 64, good.url, good.size)
    dest = tmp_path / "out" / good.filename
    with pytest.raises(ChecksumMismatch, match="sha256 does not match the announced 0000"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(wrong, dest)
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_verified_file_is_not_fetched_again(tmp_path, file_server):
    artifact = file_server.add(blob(tmp_path))
    dest = tmp_path / "out" / artifact.filename
    downloader = Downloader(file_server.url, backoff=NO_WAIT)
    downloader.fetch(artifact, dest)
    downloader.fetch(artifact, dest)
    assert len(file_server.requests) == 1


def test_redirect_to_another_host_does_not_carry_the_token(tmp_path, file_server):
    artifact = file_server.add(blob(tmp_path))
    # 127.0.0.1 and localhost are different origins to the agent, like the server and S3.
    file_server.redirect_to = file_server.url.replace("127.0.0.1", "localhost")
    via = Artifact(
        artifact.filename, artifact.sha256, f"/redirect/{artifact.filename}", artifact.size
    )
    dest = tmp_path / "out" / artifact.filename
    Downloader(file_server.url, token="nsr_secret", backoff=NO_WAIT).fetch(via, dest)
    first, second = file_server.requests
    assert first["headers"].get("Authorization") == "Bearer nsr_secret"
    assert second["path"].startswith("/files/") and "Authorization" not in second["headers"]


def test_unreachable_server_fails_after_retries_keeping_the_part(tmp_path):
    artifact = Artifact("ncs-6.2-x-1.0.tar.gz", "a" * 64, "/files/x", 10)
    slept: list[float] = []
    backoff = Backoff(tries=3, base=1, sleep=slept.append)
    with pytest.raises(DownloadError, match="after 3 tries"):
        Downloader("http://127.0.0.1:9", backoff=backoff).fetch(artifact, tmp_path / "x")
    assert slept == [1, 2]


def test_missing_blob_is_an_error_at_once(tmp_path, file_server):
    artifact = Artifact("ncs-6.2-x-1.0.tar.gz", "a" * 64, "/files/nothing", 10)
    with pytest.raises(DownloadError, match="HTTP 404"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, tmp_path / "x")
    assert len(file_server.requests) == 1
