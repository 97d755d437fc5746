"""Which server URLs the agent accepts: https anywhere, plain http only to loopback or when
``[server] allow_insecure_http = true`` says so (then with a warning at every start).

Standard library only: these run on Python 3.9 with the agent's dependencies
(``make test-agent-py39``). The TLS tests, which need a CA (trustme) and the real server, are
in tests/test_tls.py.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.client import ServerClient
from agent.config import Config, load
from agent.download import Downloader
from agent.errors import ConfigError
from tests.support.processes import REPO, ServerProcess, clean_env
from tests.support.waiting import wait_until

REMOTE = "http://nso-repo.example.net"


@pytest.mark.parametrize("make", [ServerClient, Downloader], ids=["client", "downloader"])
def test_plain_http_to_a_remote_server_is_refused(make):
    with pytest.raises(ConfigError) as refused:
        make(REMOTE)
    message = str(refused.value)
    assert f"[server] url = {REMOTE}" in message and "not loopback" in message, message
    assert "Use https://" in message and "[server] ca_file" in message
    assert "allow_insecure_http = true" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8420",
        "http://127.8.9.10:8420",
        "http://localhost:8420",
        "http://LOCALHOST",
        "http://[::1]:8420",
        "https://nso-repo.example.net",
    ],
)
def test_loopback_http_and_https_are_accepted(url):
    ServerClient(url)
    Downloader(url)


@pytest.mark.parametrize(
    "url", ["ftp://nso-repo.example.net", "file:///etc/passwd", "nso-repo.example.net:8420"]
)
def test_a_server_url_that_is_not_http_is_refused(url):
    with pytest.raises(ConfigError, match=r"not an http\(s\) URL: use https://HOST\[:PORT\]"):
        ServerClient(url, allow_insecure_http=True)


def test_allow_insecure_http_is_read_written_and_honoured(tmp_path):
    conf = tmp_path / "agent.conf"
    conf.write_text(f"[server]\nurl = {REMOTE}\nallow_insecure_http = true\n")
    cfg = load(conf)
    assert cfg.allow_insecure_http is True
    ServerClient(cfg.server_url, allow_insecure_http=cfg.allow_insecure_http)
    Downloader(cfg.server_url, allow_insecure_http=cfg.allow_insecure_http)
    cfg.save(conf)
    assert load(conf).allow_insecure_http is True
    assert load_text(tmp_path, "[server]\nurl = x\n").allow_insecure_http is False


def test_a_bad_allow_insecure_http_value_says_what_to_write(tmp_path):
    with pytest.raises(ConfigError, match=r"allow_insecure_http = 'sometimes'.*true or false"):
        load_text(tmp_path, "[server]\nallow_insecure_http = sometimes\n")


def test_an_unreadable_ca_file_is_a_clear_error(tmp_path):
    cfg = Config(server_url="https://nso-repo.example.net", root=str(tmp_path))
    cfg.ca_file = "/etc/nso-agent/ca.pem"
    with pytest.raises(ConfigError) as refused:
        ServerClient(cfg.server_url, ca_file=cfg.ca_path)
    message = str(refused.value)
    assert f"[server] ca_file = {cfg.ca_path}" in message, message
    assert "PEM file of the CA that signed the server's certificate" in message


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "other.conf"
    path.write_text(text)
    return load(path)


# -- the command line -----------------------------------------------------------------------


class Proxy:
    """An HTTP proxy on loopback that answers every request itself with a 403, standing in
    for a server that is not on loopback: the agent honours ``http_proxy`` as every urllib
    client does, so a URL naming another host really is requested, through this."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self) -> None:
                proxy.requests.append(f"{self.command} {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": {"code": "forbidden", "message": "token revoked"}})
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        proxies = {"http_proxy": self.url, "HTTP_PROXY": self.url, "no_proxy": "", "NO_PROXY": ""}
        return clean_env(PYTHONPATH=str(REPO), **proxies)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy()
    yield p
    p.httpd.shutdown()
    p.httpd.server_close()


def agent_conf(tmp_path: Path, allow: bool) -> Path:
    cfg = Config(server_url=REMOTE, root=str(tmp_path / "root"), poll_wait=1)
    cfg.allow_insecure_http = allow
    conf = tmp_path / "agent.conf"
    cfg.save(conf)
    cfg.state_path.mkdir(parents=True)
    cfg.token_file.write_text("nsn_node_token\n")
    return conf


def nso_agent(conf: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(conf), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args", [("enroll", "--server", REMOTE, "--token", "nse_x"), ("once", "--wait", "0")]
)
def test_the_agent_refuses_plain_http_to_a_remote_server(tmp_path, proxy, args):
    done = nso_agent(agent_conf(tmp_path, allow=False), proxy.env(), *args)
    assert done.returncode == 1, done.stderr
    assert f"[server] url = {REMOTE}" in done.stderr and "Use https://" in done.stderr
    assert "Traceback" not in done.stderr
    assert proxy.requests == [], "nothing may be sent before the URL is checked"


WARNING = "WARNING plain http to a host that is not loopback"


@pytest.mark.parametrize(
    "args", [("enroll", "--server", REMOTE, "--token", "nse_x"), ("once", "--wait", "0")]
)
def test_allowed_plain_http_is_warned_about_then_used(tmp_path, proxy, args):
    done = nso_agent(agent_conf(tmp_path, allow=True), proxy.env(), *args)
    assert WARNING in done.stderr and "allow_insecure_http = true" in done.stderr, done.stderr
    assert "token revoked" in done.stderr  # the request went out, and was answered
    assert any(f" {REMOTE}/api/v1/agent/" in r for r in proxy.requests), proxy.requests


def test_the_service_warns_at_every_start(tmp_path, proxy):
    conf = agent_conf(tmp_path, allow=True)
    service = ServerProcess(
        [sys.executable, "-m", "agent", "--config", str(conf), "run"],
        tmp_path / "agent.log",
        env=proxy.env(),
        name="nso-agent run",
        stop_timeout=5,
    )
    try:
        for start in (1, 2):
            service.start()
            service.wait_ready(lambda: WARNING in service.output(), timeout=30)
            wait_until(lambda: proxy.requests, timeout=30, message="no request reached the proxy")
            service.stop()
            assert (tmp_path / "agent.log").read_text().count(WARNING) == start
    finally:
        service.stop()
