"""What a download refuses: redirects off http(s), a server sending more than it announced,
and a remote body echoed into the step's message (which goes back to the server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.client import Backoff
from agent.download import MAX_REDIRECTS, Artifact, Downloader
from agent.errors import DownloadError

NO_WAIT = Backoff(tries=3, base=0, sleep=lambda _s: None)


def secret_file(tmp_path: Path) -> tuple[Path, str]:
    """A file only root may read on a real host (think /etc/shadow), and its sha256."""
    path = tmp_path / "shadow"
    path.write_bytes(b"root:$6$not-for-the-server:19000:0:99999:7:::\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def via_redirect(size: int = 100, name: str = "ncs-6.2-l3vpn-1.0.tar.gz") -> Artifact:
    return Artifact(name, "a" * 64, f"/redirect/{name}", size)


def test_redirect_to_a_local_file_is_refused_and_its_sha256_never_reported(tmp_path, file_server):
    secret, digest = secret_file(tmp_path)
    file_server.location = f"file://{secret}"
    dest = tmp_path / "out" / "ncs-6.2-l3vpn-1.0.tar.gz"
    with pytest.raises(DownloadError) as refused:
        # Announced with the local file's size: today the agent reads it whole, and its
        # checksum error tells the server the file's sha256.
        artifact = via_redirect(size=secret.stat().st_size)
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, dest)
    message = str(refused.value)
    assert "refusing a redirect to a file: URL" in message, message
    assert "only http and https" in message
    assert digest not in message and str(secret) not in message
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    assert len(file_server.requests) == 1  # refused at once, not retried


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/blob", "data:,hello", "gopher://x/"])
def test_redirect_to_any_other_scheme_is_refused(tmp_path, file_server, location):
    file_server.location = location
    scheme = location.split(":", 1)[0]
    with pytest.raises(DownloadError, match=f"refusing a redirect to a {scheme}: URL"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(via_redirect(), tmp_path / "x")


def test_an_artifact_url_that_is_a_local_file_is_refused(tmp_path, file_server):
    secret, digest = secret_file(tmp_path)
    artifact = Artifact("ncs-6.2-l3vpn-1.0.tar.gz", "a" * 64, f"file://{secret}", 100)
    with pytest.raises(DownloadError, match="refusing a file: URL") as refused:
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, tmp_path / "x")
    assert digest not in str(refused.value)


def test_redirect_to_plain_http_elsewhere_is_refused(tmp_path, file_server):
    # The server itself is on loopback; a hop to plain http on another host is not.
    file_server.location = "http://nso-blobs.example.net/blob"
    with pytest.raises(DownloadError, match="plain http to a host that is not loopback"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(via_redirect(), tmp_path / "x")


def test_redirects_are_bounded(tmp_path, file_server):
    file_server.location = f"{file_server.url}/redirect/again"
    with pytest.raises(DownloadError, match=f"more than {MAX_REDIRECTS} redirects"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(via_redirect(), tmp_path / "x")
    assert len(file_server.requests) == MAX_REDIRECTS + 1


def test_a_server_sending_more_than_announced_is_cut_off_and_refused(tmp_path, file_server):
    served = tmp_path / "ncs-6.2-l3vpn-1.0.tar.gz"
    served.write_bytes(os.urandom(3 * 1024 * 1024))
    real = file_server.add(served)
    # The step announces the first MiB (its real sha256 too); the server sends three.
    announced = 1024 * 1024
    head = hashlib.sha256(served.read_bytes()[:announced]).hexdigest()
    artifact = Artifact(real.filename, head, real.url, announced)
    seen: list[int] = []
    dest = tmp_path / "out" / real.filename
    with pytest.raises(DownloadError, match="more than the announced 1048576 bytes") as refused:
        Downloader(file_server.url, backoff=NO_WAIT).fetch(
            artifact, dest, progress=lambda have, _total: seen.append(have)
        )
    assert "refused" in str(refused.value)
    assert max(seen, default=0) <= announced, "bytes past the announced size were written"
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/status/403", "HTTP 403 Forbidden from"),
        ("/status/503", "after 3 tries: HTTP 503 Service Unavailable from"),  # retried first
        ("/files/nothing", "HTTP 404 Not Found from"),  # http.server's HTML error page
    ],
)
def test_an_http_error_reports_status_and_reason_never_the_body(tmp_path, file_server, path, said):
    artifact = Artifact("ncs-6.2-x-1.0.tar.gz", "a" * 64, path, 10)
    with pytest.raises(DownloadError) as refused:
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, tmp_path / "x")
    message = str(refused.value)
    assert said in message, message
    assert "remote body" not in message and "<" not in message


def test_a_step_without_a_size_is_refused():
    params = {"filename": "ncs-6.2-x-1.0.tar.gz", "sha256": "a" * 64, "url": "/x"}
    with pytest.raises(DownloadError, match="no valid size"):
        Artifact.from_params(params)
    with pytest.raises(DownloadError, match="no valid size"):
        Artifact.from_params({**params, "size": -1})


def test_a_step_naming_a_download_on_another_host_is_refused(tmp_path, file_server):
    """The server names its own blobs; a step pointing at another host (one only this host
    reaches, say) is refused before any request."""
    served = file_server.add(_a_file(tmp_path))
    elsewhere = file_server.url.replace("127.0.0.1", "localhost") + served.url
    artifact = Artifact(served.filename, served.sha256, elsewhere, served.size)
    with pytest.raises(DownloadError, match="not from another host"):
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, tmp_path / "x")
    assert file_server.requests == []


def test_a_checksum_mismatch_never_reports_the_sha256_of_what_came(tmp_path, file_server):
    """What a redirect fetched may be another host's page: its sha256, told back to the
    server in the step's failure, would let the server learn it."""
    path = _a_file(tmp_path)
    served = file_server.add(path)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    artifact = Artifact(served.filename, "f" * 64, served.url, served.size)
    with pytest.raises(DownloadError) as refused:
        Downloader(file_server.url, backoff=NO_WAIT).fetch(artifact, tmp_path / "out" / "x")
    assert "sha256 does not match the announced ffff" in str(refused.value)
    assert got not in str(refused.value)


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "ncs-6.2-l3vpn-1.0.tar.gz"
    path.write_bytes(os.urandom(1000))
    return path
