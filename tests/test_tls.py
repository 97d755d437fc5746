"""https end to end: a real `nso-repo serve --tls-cert/--tls-key` with a certificate from a
test CA (trustme), and the agent's command line, client and downloads against it.

Outside tests/agent: these need the server and trustme, which the agent's Python 3.9 run
(`make test-agent-py39`, the agent's dependencies only) does not install.
"""

from __future__ import annotations

import hashlib
import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.client import Backoff, ServerClient
from agent.config import Config
from agent.download import Artifact, Downloader
from agent.errors import DownloadError, ServerError
from tests.factories import make_installer
from tests.support.nso_repo import RepoServer
from tests.support.ports import free_port
from tests.support.processes import REPO, clean_env

NO_WAIT = Backoff(tries=2, base=0, sleep=lambda _s: None)
# The server's certificate names localhost only: https://127.0.0.1 is "another host name".
NAME = "localhost"


@dataclass
class Pki:
    ca: trustme.CA
    ca_pem: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert(NAME)
    pki = Pki(ca, folder / "ca.pem", folder / "server.pem", folder / "server.key")
    ca.cert_pem.write_to_path(str(pki.ca_pem))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(pki.cert), append=True)
    issued.private_key_pem.write_to_path(str(pki.key))
    return pki


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RepoServer]:
    folder = tmp_path_factory.mktemp("tls-server")
    repo = RepoServer(folder / "data", tls=(pki.cert, pki.key), ca_file=pki.ca_pem, url_host=NAME)
    repo.start()
    yield repo
    repo.stop()


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO), **env),
        timeout=120,
    )


def agent_conf(tmp_path: Path, pki: Pki, url: str, trust: bool) -> Path:
    """A configuration whose ``ca_file`` is a host path, under the host root like every
    path the agent reads."""
    cfg = Config(server_url=url, root=str(tmp_path / "root"), cli_port=free_port())
    if trust:
        cfg.ca_file = "/etc/nso-agent/ca.pem"
        assert cfg.ca_path is not None
        cfg.ca_path.parent.mkdir(parents=True)
        cfg.ca_path.write_bytes(pki.ca_pem.read_bytes())
    conf = tmp_path / "agent.conf"
    cfg.save(conf)
    return conf


def enroll(server: RepoServer, conf: Path, url: str, name: str) -> subprocess.CompletedProcess[str]:
    added = server.api("POST", "/nodes", json={"name": name})
    assert added.status_code == 201, added.text
    token = added.json()["enrollment_token"]
    return run(["-m", "agent", "--config", str(conf), "enroll", "--server", url, "--token", token])


def test_an_agent_that_trusts_the_ca_enrolls_and_heartbeats(tmp_path, server, pki):
    conf = agent_conf(tmp_path, pki, server.url, trust=True)
    enrolled = enroll(server, conf, server.url, "tls-1")
    assert enrolled.returncode == 0, enrolled.stderr
    assert f"with {server.url}" in enrolled.stdout
    once = run(["-m", "agent", "--config", str(conf), "once", "--wait", "0"])
    assert once.returncode == 0, once.stderr
    assert "no work" in once.stdout and "heartbeat failed" not in once.stderr, once.stderr
    node = server.api("GET", "/nodes/tls-1").json()
    assert node["inventory_at"] and node["inventory"] is not None, node


def test_an_agent_without_the_ca_is_refused_and_told_what_to_set(tmp_path, server, pki):
    conf = agent_conf(tmp_path, pki, server.url, trust=False)
    enrolled = enroll(server, conf, server.url, "tls-2")
    assert enrolled.returncode == 1
    assert "certificate verify failed" in enrolled.stderr, enrolled.stderr
    assert "set [server] ca_file to that CA's PEM file" in enrolled.stderr
    assert "tries" not in enrolled.stderr  # refused at once: a retry meets the same certificate
    assert not (tmp_path / "root" / "var" / "lib" / "nso-agent" / "node-token").exists()


def test_a_certificate_for_another_host_name_is_refused(tmp_path, server, pki):
    by_address = server.url.replace(NAME, "127.0.0.1")
    conf = agent_conf(tmp_path, pki, by_address, trust=True)
    enrolled = enroll(server, conf, by_address, "tls-3")
    assert enrolled.returncode == 1
    assert "the server's TLS certificate is not for 127.0.0.1" in enrolled.stderr, enrolled.stderr
    assert "[server] url" in enrolled.stderr


def test_downloads_use_the_ca_file_too(tmp_path, server, pki):
    installer = make_installer(tmp_path, "6.2")
    with installer.open("rb") as fh:
        put = server.http.put(f"{server.url}/api/v1/artifacts/{installer.name}", data=fh)
    assert put.status_code in (200, 201), put.text
    data = installer.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    artifact = Artifact(installer.name, digest, f"/api/v1/blobs/{digest}", len(data))
    dest = tmp_path / "out" / installer.name
    Downloader(server.url, server.admin, pki.ca_pem, NO_WAIT).fetch(artifact, dest)
    assert dest.read_bytes() == data
    with pytest.raises(DownloadError, match="certificate verify failed"):
        Downloader(server.url, server.admin, None, NO_WAIT).fetch(artifact, tmp_path / "x")


class Redirector:
    """An https server (certificate from the same CA) that answers every request with a 302
    to ``location``: a server sending the agent down to plain http."""

    def __init__(self, pki: Pki, location: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = answer

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.cert, pki.key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.url = f"https://{NAME}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def downgrade(pki: Pki) -> Iterator[Redirector]:
    redirector = Redirector(pki, "http://127.0.0.1:9/api/v1/blobs/x?X-Sig=abc")
    yield redirector
    redirector.httpd.shutdown()
    redirector.httpd.server_close()


def test_a_download_is_never_sent_from_https_down_to_http(tmp_path, pki, downgrade):
    artifact = Artifact("nso-6.2.linux.x86_64.installer.bin", "a" * 64, "/api/v1/blobs/x", 10)
    downloader = Downloader(downgrade.url, "nsn_token", pki.ca_pem, NO_WAIT)
    with pytest.raises(DownloadError, match="never from https down to plain http") as refused:
        downloader.fetch(artifact, tmp_path / "x")
    assert "X-Sig" not in str(refused.value)


def test_an_api_call_follows_no_redirect(pki, downgrade):
    client = ServerClient(downgrade.url, "nsn_token", pki.ca_pem, NO_WAIT)
    with pytest.raises(ServerError) as refused:
        client.heartbeat({})
    message = str(refused.value)
    assert "HTTP 302 Found to http://127.0.0.1:9/api/v1/blobs/x;" in message, message
    assert "follows no redirect of an API call" in message and "[server] url" in message


def test_the_repository_client_says_how_to_trust_a_private_ca(server, pki):
    argv = ["-m", "repo_server.cli", "ls", "installers", "--url", server.url]
    argv += ["--token", server.admin]
    untrusted = run(argv)
    assert untrusted.returncode == 1
    assert "cannot verify the TLS certificate" in untrusted.stderr, untrusted.stderr
    assert "REQUESTS_CA_BUNDLE" in untrusted.stderr
    trusted = run(argv, REQUESTS_CA_BUNDLE=str(pki.ca_pem))
    assert trusted.returncode == 0, trusted.stderr


def test_serve_refuses_a_certificate_without_its_key(tmp_path, pki):
    serve = ["-m", "repo_server.cli", "serve", "--data-dir", str(tmp_path / "data")]
    alone = run([*serve, "--tls-cert", str(pki.cert)])
    assert alone.returncode == 2
    assert "--tls-cert and --tls-key go together" in alone.stderr, alone.stderr
    other_key = tmp_path / "other.key"
    pki.ca.issue_cert(NAME).private_key_pem.write_to_path(str(other_key))
    mismatched = run([*serve, "--tls-cert", str(pki.cert), "--tls-key", str(other_key)])
    assert mismatched.returncode == 1
    assert "cannot serve https with --tls-cert" in mismatched.stderr, mismatched.stderr
    assert "private key that matches it" in mismatched.stderr
