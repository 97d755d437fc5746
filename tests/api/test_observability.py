"""What operators scrape and probe: /metrics (its role, request counters, the database's
gauges), /healthz and /readyz, JSON request logs; and, with several gunicorn workers, one
scrape that counts every worker's requests."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from repo_server.app import create_app
from tests.support.nso_repo import RepoServer
from tests.upgrades.builders import enroll_node, publish_release, start_upgrade


@pytest.fixture
def app_overrides(app_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**app_overrides, "metrics_cache": 0}  # every scrape reads the database


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-z_:]+)(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if got == want:
            return float(match.group(3))
    return 0.0


def scrape(live, role: str = "viewer") -> str:
    answer = live.session(role).get(f"{live.url}/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return answer.text


def test_metrics_need_their_role(live) -> None:
    assert live.session(None).get(f"{live.url}/metrics").status_code == 401
    for role in ("agent", "uploader"):
        assert live.session(role).get(f"{live.url}/metrics").status_code == 403
    for role in ("viewer", "operator", "admin"):
        assert live.session(role).get(f"{live.url}/metrics").status_code == 200


def test_requests_are_counted_by_route_not_by_path(live) -> None:
    before = sample(scrape(live), "nso_repo_http_requests_total", method="GET",
                    route="/api/v1/nodes/<string:name>", status="404")  # fmt: skip
    for name in ("a", "b", "c"):
        live.session("viewer").get(f"{live.url}/api/v1/nodes/{name}")
    text = scrape(live)
    after = sample(text, "nso_repo_http_requests_total", method="GET",
                   route="/api/v1/nodes/<string:name>", status="404")  # fmt: skip
    assert after - before == 3
    assert "/api/v1/nodes/a" not in text  # no label per path: they stay few
    assert "nso_repo_http_request_seconds_bucket" in text
    # Nor one per method a client makes up.
    made_up = {"method": "other", "route": "unmatched", "status": "405"}
    before = sample(scrape(live), "nso_repo_http_requests_total", **made_up)
    for method in ("FOO00001", "FOO00002"):
        assert requests.request(method, f"{live.url}/api/v1/nodes").status_code == 405
    text = scrape(live)
    assert "FOO0000" not in text
    assert sample(text, "nso_repo_http_requests_total", **made_up) - before == 2


def test_the_database_gauges_follow_jobs_agents_and_the_catalog(live, tmp_path) -> None:
    for version in ("6.1", "6.2"):
        publish_release(live, tmp_path, version, {"router-nc": "1.0.2", "l3vpn": "2.1"})
    enrolled = enroll_node(live, "edge-1")
    text = scrape(live)
    assert sample(text, "nso_repo_jobs", kind="upgrade", state="queued") == 0
    start_upgrade(live, enrolled)
    text = scrape(live)
    assert sample(text, "nso_repo_jobs", kind="upgrade", state="queued") == 1
    assert sample(text, "nso_repo_agents_last_seen", within="1m") == 1
    assert sample(text, "nso_repo_catalog_bytes", kind="installer") > 0
    step = enrolled.next(0)
    assert enrolled.report(step["id"], "succeeded", result={}).status_code in (200, 422)
    text = scrape(live)
    assert sample(text, "nso_repo_jobs", kind="upgrade", state="running") == 1


def test_probes_answer_without_a_token_and_readiness_follows_the_storage(live, app_state) -> None:
    assert live.session(None).get(f"{live.url}/healthz").json() == {"status": "alive"}
    assert live.session(None).get(f"{live.url}/readyz").status_code == 200
    blobs = app_state.settings.resolved_storage_dir
    moved = blobs.with_name("blobs-away")
    shutil.move(blobs, moved)
    try:
        answer = live.session(None).get(f"{live.url}/readyz")
        assert answer.status_code == 503 and answer.json() == {"status": "not ready"}
        assert live.session(None).get(f"{live.url}/healthz").status_code == 200
    finally:
        shutil.move(moved, blobs)


def test_json_logs_give_one_line_per_request(app_overrides, caplog) -> None:
    app = create_app({**app_overrides, "log_format": "json"})
    requests_log = logging.getLogger("repo_server.requests")
    assert not requests_log.propagate  # its own handler writes the bare JSON line
    requests_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="repo_server.requests"):
            app.test_client().get("/api/v1/nodes", headers={"Authorization": "Bearer nope"})
        lines = [
            json.loads(r.getMessage()) for r in caplog.records if r.name == "repo_server.requests"
        ]
        assert lines and lines[-1]["route"] == "/api/v1/nodes" and lines[-1]["status"] == 401
        assert {"time", "method", "path", "ms", "remote", "actor"} <= set(lines[-1])
    finally:
        requests_log.removeHandler(caplog.handler)
        app.extensions["nso_repo"].close()


def _counter_files(tmp_path: Path) -> list[Path]:
    """The workers' counter files of the server whose data folder is under ``tmp_path``."""
    return list((tmp_path / "data" / "metrics").glob("*/counter_*.db"))


def test_one_scrape_counts_the_requests_of_every_worker(tmp_path: Path) -> None:
    server = RepoServer(tmp_path / "data", workers=2)
    server.start()
    try:
        http = server.http
        sent = 0
        # New connections until both workers have taken some (on a busy machine the kernel
        # may hand one worker many in a row), 40 at least.
        while sent < 40 or (sent < 2000 and len(_counter_files(tmp_path)) < 2):
            assert (
                http.get(f"{server.url}/healthz", headers={"Connection": "close"}).status_code
                == 200
            )
            sent += 1
        folders = list((tmp_path / "data" / "metrics").iterdir())
        assert len(folders) == 1 and folders[0].name == str(server.process.process.pid)
        assert len(_counter_files(tmp_path)) >= 2, "one worker served them all"
        counts = set()
        for _ in range(6):
            text = http.get(f"{server.url}/metrics", headers={"Connection": "close"}).text
            counts.add(
                sample(
                    text,
                    "nso_repo_http_requests_total",
                    method="GET",
                    route="/healthz",
                    status="200",
                )
            )
        assert counts == {float(sent)}, counts
        # A long-poll that parks and is answered a second later counts once.
        added = server.api("POST", "/nodes", json={"name": "edge-m"}).json()
        token = requests.post(
            f"{server.url}/api/v1/agent/enroll",
            json={"enrollment_token": added["enrollment_token"]},
        ).json()["token"]
        poll = requests.get(
            f"{server.url}/api/v1/agent/next?wait=1", headers={"Authorization": f"Bearer {token}"}
        )
        assert poll.status_code == 204
        text = http.get(f"{server.url}/metrics").text
        assert sample(text, "nso_repo_idle_polls_total") == 1
        assert sample(text, "nso_repo_long_polls_waiting") == 0
    finally:
        server.stop()


def test_the_grafana_dashboard_queries_only_metrics_the_server_exposes(live, tmp_path) -> None:
    """docs/grafana-dashboard.json: every series it asks for is in a real scrape, with a
    job run so that the step and job series exist."""
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json").read_text())
    for version in ("6.1", "6.2"):
        publish_release(live, tmp_path, version, {"router-nc": "1.0.2", "l3vpn": "2.1"})
    agent = enroll_node(live, "edge-graf")
    start_upgrade(live, agent, node="edge-graf")
    step = agent.next(0)
    agent.report(step["id"], "failed", message="the disk is full")
    scrape = live.session("viewer").get(f"{live.url}/metrics").text
    exposed = set(re.findall(r"^(nso_repo_[a-z_]+)", scrape, re.M))
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"nso_repo_[a-z_]+", target["expr"])
    }
    assert len(dashboard["panels"]) >= 10 and asked
    assert asked <= exposed, f"the dashboard asks for series no scrape has: {asked - exposed}"
