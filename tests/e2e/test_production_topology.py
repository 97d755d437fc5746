"""The production topology of docs/production.md with real processes: PostgreSQL, SeaweedFS
(S3, signatures checked), two `nso-repo serve` hosts with their own data folders, and a load
balancer in front. Nothing a second host would miss lives in one host's memory: work
triggered on one host wakes an agent waiting on the other, blobs come from S3 through any
host, and when one host dies the other serves everything, the job included."""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.factories import make_patch_bundle
from tests.support.nso_repo import RepoServer
from tests.support.ports import free_port
from tests.support.processes import REPO, ServerProcess, clean_env
from tests.support.waiting import wait_until
from tests.upgrades.builders import Agent, healthy_inventory


@pytest.fixture
def hosts(postgres_server, s3_server, tmp_path: Path) -> Iterator[list[RepoServer]]:
    url = postgres_server.create_database()
    settings = {
        k.upper(): str(v) for k, v in s3_server.settings_overrides(s3_server.new_bucket()).items()
    }
    servers = []
    for name in ("a", "b"):
        env = clean_env(
            PYTHONPATH=str(REPO),
            NSO_REPO_DATABASE_URL=url,
            NSO_REPO_ACCESS_LOG=str(tmp_path / f"access-{name}.log"),
            **{f"NSO_REPO_{key}": value for key, value in settings.items()},
        )
        (tmp_path / name).mkdir()
        servers.append(RepoServer(tmp_path / name / "data", env, workers=2))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def balancer(hosts: list[RepoServer], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    backends = [f"127.0.0.1:{server.port}" for server in hosts]
    proxy = ServerProcess(
        [sys.executable, "-m", "tests.support.tcp_proxy", str(port), *backends],
        tmp_path / "proxy.log",
        env=clean_env(PYTHONPATH=str(REPO)),
        cwd=REPO,
        name="load balancer",
    )
    proxy.start()
    try:
        proxy.wait_ready(lambda: "listening" in proxy.output())
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.stop()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def enroll(base: str, admin: str, name: str) -> Agent:
    made = requests.post(
        f"{base}/api/v1/nodes", json={"name": name}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert made.status_code == 201, made.text
    enrolled = requests.post(
        f"{base}/api/v1/agent/enroll",
        json={"enrollment_token": made.json()["enrollment_token"]},
    )
    assert enrolled.status_code == 201, enrolled.text
    return Agent(base, enrolled.json()["token"])


def test_two_hosts_behind_a_balancer_share_everything_and_survive_one_dying(
    hosts: list[RepoServer], balancer: str, tmp_path: Path
) -> None:
    a, b = hosts
    admin = a.admin  # made on host a: the database is the hosts' one source of truth
    headers = {"Authorization": f"Bearer {admin}"}
    bundle = make_patch_bundle(tmp_path, "6.2", "CSCtopo1", ("ncs_topo",))
    with bundle.open("rb") as fh:
        put = requests.put(f"{balancer}/api/v1/artifacts/{bundle.name}", data=fh, headers=headers)
    assert put.status_code == 201, put.text
    digest = put.json()["sha256"]
    # The blob is in S3: each host redirects to it, and the bytes are the upload's.
    for host in (a, b):
        got = requests.get(f"{host.url}/api/v1/blobs/{digest}", headers=headers, timeout=10)
        assert got.status_code == 200 and got.history and got.history[0].status_code == 302
        assert hashlib.sha256(got.content).hexdigest() == digest

    # An agent waits on host a; the rollout is made on host b and wakes it at once.
    on_a = enroll(balancer, admin, "edge-a")
    assert on_a.heartbeat(healthy_inventory("6.2")).status_code == 200
    waiting = Agent(a.url, on_a.token)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append((waiting.next(wait=30), time.monotonic())))
    waiter.start()
    time.sleep(1.0)
    assert not got  # the poll waits on a: nothing for it yet
    rollout = requests.post(
        f"{b.url}/api/v1/patch-rollouts",
        json={"patch": bundle.name, "nodes": ["edge-a"]},
        headers=headers,
    )
    assert rollout.status_code == 201, rollout.text
    began = time.monotonic()  # committed on b: host a hears of it by NOTIFY
    waiter.join(timeout=40)
    [(step, at)] = got
    assert step is not None and step["name"] == "apply_patch"
    assert at - began < 3.0

    # Host a dies mid-job: through the balancer the report lands on b, and the job ends.
    a.kill()
    wait_until(lambda: not listening(a.port), 10, 0.05, message="host a still accepts")
    through = Agent(balancer, on_a.token)
    report = through.report(
        step["id"],
        "succeeded",
        report_id=uuid.uuid4().hex,
        result={"modules": ["ncs_topo"], "changed": True},
    )
    assert report.status_code == 200, report.text
    assert report.json()["job"]["state"] == "succeeded"
    shown = requests.get(
        f"{balancer}/api/v1/patch-rollouts/{rollout.json()['id']}", headers=headers
    )
    assert shown.status_code == 200 and shown.json()["counts"] == {"succeeded": 1}
    assert requests.get(f"{balancer}/api/v1/health", timeout=5).status_code == 200

    # Host a comes back and serves the same state.
    a.start()
    jobs = a.api("GET", "/jobs?node=edge-a")
    assert jobs.status_code == 200 and [j["state"] for j in jobs.json()] == ["succeeded"]
