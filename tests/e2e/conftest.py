"""End-to-end fixtures: a real `nso-repo serve` process (gunicorn, SQLite, local disk), real
`nso-agent run` processes configured by file, simulated NSO hosts (`nso-sim host create`)
reached over real SSH, and a small forwarding HTTP proxy that can SIGKILL the agent at an
exact point of a step (when a given report of that step goes through it).

Nothing is mocked. Every process a test starts is stopped at teardown, failures included.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests

from agent.config import Config
from tests.support.nso_repo import RepoServer
from tests.support.processes import REPO, ServerProcess, clean_env, log_tail
from tests.support.sim_hosts import Artifacts, SimHost, sim
from tests.support.waiting import wait_until

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
PY = sys.executable
FINISHED = ("succeeded", "failed", "cancelled")
# Nodes of one worker's shared server need distinct names.
_node_numbers = itertools.count(1)


def agent_env() -> dict[str, str]:
    return clean_env(PYTHONPATH=str(REPO))


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
def builds(artifacts: Artifacts) -> Builds:
    made = Builds(artifacts)
    for version in ("6.1", "6.1.1", "6.1.2", "6.2", "6.4", "6.5"):
        made.installer(version)
    for b in ("6.1", "6.2", "6.4", "6.5"):
        made.packages(b)
    return made


def published_server(folder: Path, builds: Builds, releases: dict[str, str]) -> RepoServer:
    """A started server on ``folder``/data with ``releases`` (version: package branch)."""
    server = RepoServer(folder / "data")
    server.start()
    try:
        for version, pkg_branch in releases.items():
            server.publish(version, builds.installer(version), builds.packages(pkg_branch))
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory, builds: Builds) -> Iterator[RepoServer]:
    """One server per xdist worker with every release published; tests use their own nodes."""
    server = published_server(tmp_path_factory.mktemp("server"), builds, RELEASES)
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path, builds: Builds) -> Iterator[RepoServer]:
    """A server of the test's own (it will be killed), with release 6.2 published."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = published_server(folder, builds, {"6.2": "6.2"})
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
def kill_proxy(shared_server: RepoServer) -> Iterator[KillProxy]:
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


class AgentProcess(ServerProcess):
    """`python -m agent --config FILE -v run`, in its own process group."""

    def __init__(self, config_file: Path, log: Path) -> None:
        argv = [PY, "-m", "agent", "--config", str(config_file), "-v", "run"]
        super().__init__(argv, log, env=agent_env(), name="nso-agent run")

    def kill(self, group: bool = False) -> None:
        """SIGKILL the agent alone (systemd's KillMode=process): its children live on."""
        super().kill(group)


@dataclass
class Node:
    name: str
    host: SimHost
    server: RepoServer
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
        job: dict[str, Any] = {}

        def finished() -> Optional[dict[str, Any]]:
            nonlocal job
            job = self.server.job(job_id)
            return job if job.get("state") in FINISHED else None

        return wait_until(
            finished,
            timeout,
            0.2,
            message=f"job {job_id} did not finish",
            details=lambda: f"{json.dumps(job, indent=1)}\nagent log:\n{log_tail(self.agent.log)}",
            ignoring=(requests.RequestException,),  # the server is being restarted
        )

    def wait_step(
        self, job_id: int, name: str, states: tuple[str, ...], timeout: float = 60
    ) -> None:
        def reached() -> bool:
            job = self.server.job(job_id)
            step = next((s for s in job["steps"] if s["name"] == name), None)
            if step is not None and step["state"] in states:
                return True
            if job["state"] in FINISHED:
                raise AssertionError(f"job finished before {name} was {states}: {job}")
            return False

        wait_until(
            reached,
            timeout,
            0.02,
            message=f"step {name} never {states}",
            details=lambda: str(self.server.job(job_id)),
        )

    def wait_heartbeat(self, timeout: float = 60) -> dict[str, Any]:
        def inventory() -> Optional[dict[str, Any]]:
            found: dict[str, Any] = self.info().get("inventory") or {}
            return found if found.get("running_version") else None

        return wait_until(
            inventory,
            timeout,
            0.2,
            message=f"no heartbeat from {self.name}",
            details=lambda: f"agent log:\n{log_tail(self.agent.log)}",
        )

    def wait_reported(self, timeout: float = 30) -> None:
        """Until the node has reported since its last job ended: a plan refuses a node whose
        last inventory predates it (preflight's inventory_behind)."""
        jobs = self.server.api("GET", "/jobs", params={"node": self.name, "limit": 1}).json()
        ended = jobs[0]["finished_at"] if jobs else None
        if ended is None:
            return

        def reported() -> bool:
            at = self.info().get("inventory_at")
            return at is not None and datetime.fromisoformat(at) > datetime.fromisoformat(ended)

        wait_until(reported, timeout, 0.1, message=f"{self.name} never reported after its job")

    def fault(self, *args: str) -> None:
        sim("fault", "set", "--root", str(self.host.root), *args)


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``make_agent(server, host, via=None)``: register a node for a started simulated host,
    enroll it with ``nso-agent enroll`` and run ``nso-agent run`` for it (through ``via``, a
    proxy URL, when given). Agents stop at teardown, before their hosts do."""
    agents: list[AgentProcess] = []

    def factory(server: RepoServer, host: SimHost, via: Optional[str] = None) -> Node:
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
            env=agent_env(),
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


@pytest.fixture
def make_node(
    make_host: Any, make_agent: Callable[..., Node], builds: Builds
) -> Callable[..., Node]:
    """``make_node(server, version, via=None, extra=())``: a started simulated host, its node
    registered and enrolled, and ``nso-agent run`` serving it."""

    def factory(
        server: RepoServer,
        version: str = "6.1",
        via: Optional[str] = None,
        extra: tuple[str, ...] = (),
    ) -> Node:
        host = make_host(version, builds.packages(branch(version)), extra=extra)
        return make_agent(server, host, via)

    return factory


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
