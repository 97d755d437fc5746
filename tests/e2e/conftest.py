"""End-to-end fixtures: a real `nso-repo serve` process (gunicorn, SQLite, local disk), real
`nso-agent run` processes configured by file, simulated NSO hosts (`nso-sim host create`)
reached over real SSH, and a small forwarding HTTP proxy that can SIGKILL the agent at an
exact point of a step (when a given report of that step goes through it).

Nothing is mocked. Every process a test starts is stopped at teardown, failures included.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

from agent.config import Config
from tests.sim.conftest import (  # noqa: F401 — fixtures shared with the simulator's tests
    Artifacts,
    SimHost,
    artifacts,
    make_host,
    sim,
)

REPO = Path(__file__).resolve().parents[2]
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
PY = sys.executable
FINISHED = ("succeeded", "failed", "cancelled")
# Nodes of one worker's shared server need distinct names.
_node_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSO_REPO_", "NSO_AGENT_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


# -- the server --------------------------------------------------------------------------


class Server:
    """`nso-repo serve` in its own process group; SIGKILL and restart keep port and data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data_dir = folder / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.admin = ""
        self.starts = 0

    def start(self) -> None:
        env = base_env()
        env["NSO_REPO_ACCESS_LOG"] = str(self.folder / "access.log")
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(PY, "-m", "repo_server.cli", "serve", "--port", str(self.port)),
                    *("--data-dir", str(self.data_dir), "--workers", "1"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"nso-repo serve exited:\n{tail(self.log)}")
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"nso-repo serve did not start:\n{tail(self.log)}")
        if not self.admin:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            self.admin = re.findall(r"^\s+(nsr_\S+)$", text, re.MULTILINE)[0]

    def kill(self) -> None:
        """SIGKILL the server's processes (gunicorn master and worker): a crash."""
        assert self.process is not None
        _kill_group(self.process, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                _kill_group(self.process, signal.SIGKILL)  # stray workers, if any
            return
        _kill_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_group(self.process, signal.SIGKILL)
            self.process.wait()

    @property
    def http(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.admin}"
        return session

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.http.request(method, f"{self.url}/api/v1{path}", timeout=30, **kw)

    def publish(self, version: str, installer: Path, packages: list[Path]) -> None:
        for path in [installer, *packages]:
            with path.open("rb") as fh:
                answer = self.http.put(f"{self.url}/api/v1/artifacts/{path.name}", data=fh)
            assert answer.status_code in (200, 201), answer.text
        answer = self.api(
            "POST",
            "/releases",
            json={
                "nso_version": version,
                "installer": installer.name,
                "packages": [p.name for p in packages],
            },
        )
        assert answer.status_code == 201, answer.text

    def job(self, job_id: int) -> dict[str, Any]:
        answer = self.api("GET", f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


# -- artifacts ---------------------------------------------------------------------------


@dataclass
class Builds:
    """The installers and package builds of the suite, made once per worker."""

    artifacts: Artifacts

    def installer(self, version: str) -> Path:
        return self.artifacts.installer(version)

    def packages(self, branch: str) -> list[Path]:
        """The two package builds (a NED with devices, a service) for NSO branch X.Y."""
        return [self.artifacts.ned(branch), self.artifacts.service(branch)]


def branch(version: str) -> str:
    return ".".join(version.split(".")[:2])


# The releases every worker's shared server publishes: version -> package branch.
RELEASES = {"6.2": "6.2", "6.1.2": "6.1", "6.5": "6.5"}


@pytest.fixture(scope="session")
def builds(artifacts: Artifacts) -> Builds:  # noqa: F811
    made = Builds(artifacts)
    for version in ("6.1", "6.1.1", "6.1.2", "6.2", "6.4", "6.5"):
        made.installer(version)
    for b in ("6.1", "6.2", "6.4", "6.5"):
        made.packages(b)
    return made


def _server(folder: Path, builds: Builds, releases: dict[str, str]) -> Server:
    server = Server(folder)
    server.start()
    try:
        for version, pkg_branch in releases.items():
            server.publish(version, builds.installer(version), builds.packages(pkg_branch))
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory, builds: Builds) -> Iterator[Server]:
    """One server per xdist worker with every release published; tests use their own nodes."""
    server = _server(tmp_path_factory.mktemp("server"), builds, RELEASES)
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path, builds: Builds) -> Iterator[Server]:
    """A server of the test's own (it will be killed), with release 6.2 published."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = _server(folder, builds, {"6.2": "6.2"})
    yield server
    server.stop()


# -- the kill proxy ----------------------------------------------------------------------

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "host",
}


@dataclass
class KillRule:
    """Fire when ``step`` passes the proxy at ``point``: ``dispatched`` (the server handed the
    step out; the agent never sees the answer), ``running`` (the agent announced the step),
    or a substring of one of the step's progress messages. ``delay`` > 0: the report gets
    through and the agent is killed that many seconds later, while the step runs."""

    step: str
    point: str
    delay: float = 0.0


@dataclass
class KillProxy:
    upstream_port: int
    url: str = ""
    names: dict[int, str] = field(default_factory=dict)
    rule: Optional[KillRule] = None
    on_fire: Optional[Callable[[], None]] = None
    fired: threading.Event = field(default_factory=threading.Event)
    fired_at: dict[str, Any] = field(default_factory=dict)

    def arm(self, rule: KillRule, on_fire: Callable[[], None]) -> None:
        self.rule, self.on_fire = rule, on_fire

    def matches(self, method: str, path: str, body: bytes, answer: bytes) -> bool:
        rule = self.rule
        if rule is None or self.fired.is_set():
            return False
        if method == "GET" and path.startswith("/api/v1/agent/next") and answer:
            step = json.loads(answer).get("step") or {}
            self.names[int(step["id"])] = str(step["name"])
            return rule.point == "dispatched" and step["name"] == rule.step
        match = re.fullmatch(r"/api/v1/agent/steps/(\d+)", path)
        if method != "POST" or match is None or self.names.get(int(match[1])) != rule.step:
            return False
        report = json.loads(body)
        if report.get("state") != "running":
            return False
        message = str(report.get("message", ""))
        if rule.point == "running":
            return message.startswith(f"{rule.step} started")
        return rule.point in message

    def fire(self, path: str) -> None:
        self.fired_at["path"] = path
        self.fired_at["time"] = time.monotonic()
        assert self.on_fire is not None
        self.on_fire()
        self.fired.set()


def _proxy_handler(proxy: KillProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
            try:
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
            except OSError:
                self.close_connection = True
                self.send_error(502)
                return
            finally:
                upstream.close()
            if proxy.matches(self.command, self.path, body, data if resp.status == 200 else b""):
                assert proxy.rule is not None
                if proxy.rule.delay <= 0:
                    # The server has the request; the agent dies before it hears the answer.
                    proxy.fire(self.path)
                    self.close_connection = True
                    return
                timer = threading.Timer(proxy.rule.delay, proxy.fire, args=(self.path,))
                timer.daemon = True
                timer.start()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_HEAD = forward

    return Handler


@pytest.fixture
def kill_proxy(shared_server: Server) -> Iterator[KillProxy]:
    proxy = KillProxy(shared_server.port)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(proxy))
    httpd.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield proxy
    httpd.shutdown()
    httpd.server_close()


# -- agents and nodes --------------------------------------------------------------------


class AgentProcess:
    """`python -m agent --config FILE -v run`, in its own process group."""

    def __init__(self, config_file: Path, log: Path) -> None:
        self.config_file = config_file
        self.log = log
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.pgids: list[int] = []

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [PY, "-m", "agent", "--config", str(self.config_file), "-v", "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=base_env(),
                start_new_session=True,
            )
        self.pgids.append(self.process.pid)

    def kill(self) -> None:
        """SIGKILL the agent alone (systemd's KillMode=process): its children live on."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pgid in self.pgids:  # commands a killed agent left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@dataclass
class Node:
    name: str
    host: SimHost
    server: Server
    agent: AgentProcess
    config: Config

    def upgrade(self, to: str) -> int:
        answer = self.server.api("POST", f"/nodes/{self.name}/upgrade", json={"to": to})
        assert answer.status_code == 202, answer.text
        return int(answer.json()["id"])

    def info(self) -> dict[str, Any]:
        answer = self.server.api("GET", f"/nodes/{self.name}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_job(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                job = self.server.job(job_id)
            except requests.RequestException:
                job = {}  # the server is being restarted
            if job.get("state") in FINISHED:
                return job
            time.sleep(0.2)
        raise AssertionError(
            f"job {job_id} did not finish in {timeout} s: {json.dumps(job, indent=1)}\n"
            f"agent log:\n{tail(self.agent.log)}"
        )

    def wait_step(
        self, job_id: int, name: str, states: tuple[str, ...], timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.server.job(job_id)
            step = next((s for s in job["steps"] if s["name"] == name), None)
            if step is not None and step["state"] in states:
                return
            if job["state"] in FINISHED:
                raise AssertionError(f"job finished before {name} was {states}: {job}")
            time.sleep(0.02)
        raise AssertionError(f"step {name} never {states}: {self.server.job(job_id)}")

    def wait_heartbeat(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inventory = self.info().get("inventory") or {}
            if inventory.get("running_version"):
                return inventory
            time.sleep(0.2)
        raise AssertionError(f"no heartbeat from {self.name}:\n{tail(self.agent.log)}")

    def fault(self, *args: str) -> None:
        sim("fault", "set", "--root", str(self.host.root), *args)


@pytest.fixture
def make_node(make_host: Any, tmp_path: Path, builds: Builds) -> Iterator[Callable[..., Node]]:  # noqa: F811
    """``make_node(server, version, via=None, extra=())``: a started simulated host, its node
    registered and enrolled with ``nso-agent enroll``, and ``nso-agent run`` serving it
    (through ``via``, a proxy URL, when given). Agents stop before their hosts do."""
    agents: list[AgentProcess] = []

    def factory(
        server: Server,
        version: str = "6.1",
        via: Optional[str] = None,
        extra: tuple[str, ...] = (),
    ) -> Node:
        host = make_host(version, builds.packages(branch(version)), extra=extra)
        name = f"edge-{WORKER}-{next(_node_numbers)}"
        added = server.api("POST", "/nodes", json={"name": name})
        assert added.status_code == 201, added.text
        folder = tmp_path / name
        folder.mkdir()
        config = Config(
            server_url=via or server.url,
            poll_wait=1,
            heartbeat_interval=1,
            root=str(host.root),
            cli_host=host.address,
            cli_port=host.cli_port,
            cli_user="admin",
            cli_password="admin",
            start_timeout=120,
            stop_timeout=60,
        )
        conf = folder / "agent.conf"
        config.save(conf)
        enroll = subprocess.run(
            [
                *(PY, "-m", "agent", "--config", str(conf), "enroll"),
                *("--server", via or server.url, "--token", added.json()["enrollment_token"]),
            ],
            capture_output=True,
            text=True,
            env=base_env(),
            timeout=60,
        )
        assert enroll.returncode == 0, enroll.stdout + enroll.stderr
        agent = AgentProcess(conf, folder / "agent.log")
        agents.append(agent)
        agent.start()
        node = Node(name, host, server, agent, config)
        node.wait_heartbeat()
        return node

    yield factory
    for agent in agents:
        agent.stop()


# -- what a healthy node looks like ------------------------------------------------------


def running_config(host: SimHost) -> str:
    """`show running-config` over a fresh SSH connection (NSO may have restarted)."""
    for client in host.clients:
        client.close()
    host.clients.clear()
    out, status = host.cli("show running-config")
    assert status == 0, out
    return out


def assert_node_on(node: Node, version: str, package_files: list[str], config_before: str) -> None:
    """NSO started on ``version`` from ``current``, exactly ``package_files`` linked into the
    load path from /opt/ncs/packages, every package up, and the data unchanged."""
    host = node.host
    assert os.readlink(host.path("/opt/ncs/current")) == f"ncs-{version}"
    status = host.sh(host.ncs, "--status")
    assert "status: started" in status.stdout, status.stdout + status.stderr
    assert host.sh(host.ncs, "--version").stdout.strip() == version
    load_path = host.path("/var/opt/ncs/packages")
    store = host.path("/opt/ncs/packages").resolve()
    entries = sorted(load_path.iterdir())
    assert all(e.is_symlink() for e in entries), entries
    targets = sorted(e.resolve() for e in entries)
    assert all(t.parent == store and t.is_file() for t in targets), targets
    assert sorted(t.name for t in targets) == sorted(package_files)
    assert running_config(host) == config_before
    out, _ = host.cli("show ncs-state version")
    assert f"ncs-state version {version}" in out, out
    packages, _ = host.cli("show packages")
    assert packages.count("oper-status up") == len(package_files), packages
    assert "error" not in packages, packages
