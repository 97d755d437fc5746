"""The agent against the real repository server: enroll with the command line, heartbeat,
long-poll, run a whole upgrade job on a simulated host, report; and the recovery path.

Needs the server's dependencies (Flask...), so the Python 3.9 run of the agent's tests
(`make test-agent-py39`) leaves this file out; the main suite runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.journal import Journal
from agent.runner import Runner
from tests.api.helpers import put_file
from tests.support.sim_hosts import sim

from .conftest import agent_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: the server's own tests cover PostgreSQL; these are about the agent."""
    path = tmp_path / "nso-repo.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


def publish(live: Any, artifacts: Any, version: str) -> None:
    files = [artifacts.installer(version), artifacts.ned(version), artifacts.service(version)]
    uploader = live.session("uploader")
    for path in files:
        assert put_file(uploader, live.url, path).status_code in (200, 201)
    answer = live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={
            "nso_version": version,
            "installer": files[0].name,
            "packages": [p.name for p in files[1:]],
        },
    )
    assert answer.status_code == 201, answer.text


def enrolled_agent(live: Any, host: Any, tmp_path: Path) -> Runner:
    """Register the node, then `nso-agent enroll` as an operator runs it on the host."""
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    assert added.status_code == 201, added.text
    conf = tmp_path / "agent.conf"
    agent_config(host).save(conf)
    enroll = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(conf),
            "enroll",
            "--server",
            live.url,
            "--token",
            added.json()["enrollment_token"],
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert enroll.returncode == 0, enroll.stderr
    assert "enrolled as node edge-1" in enroll.stdout
    cfg = load(conf)
    assert oct(cfg.token_file.stat().st_mode & 0o777) == "0o600"
    return Runner(cfg)


def drive_job(live: Any, runner: Runner, job_id: int, limit: int = 30) -> dict[str, Any]:
    for _ in range(limit):
        job = live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        runner.once(wait=2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def start_upgrade(live: Any, to: str) -> int:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": to}
    )
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


def test_agent_runs_an_upgrade_job_from_the_server(live, make_host, artifacts, tmp_path):
    for version in ("6.1", "6.2"):
        publish(live, artifacts, version)
    host = make_host("6.1")
    runner = enrolled_agent(live, host, tmp_path)
    assert runner.once(wait=0) is None  # heartbeat, no work yet
    node = live.session("operator").get(f"{live.url}/api/v1/nodes/edge-1").json()
    assert node["inventory"]["running_version"] == "6.1"
    assert {p["name"] for p in node["inventory"]["packages"]} == {"router-nc", "l3vpn"}

    job = drive_job(live, runner, start_upgrade(live, "6.2"))
    assert job["state"] == "succeeded", job
    assert [s["state"] for s in job["steps"]] == ["succeeded"] * len(job["steps"])
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.2"
    node = live.session("operator").get(f"{live.url}/api/v1/nodes/edge-1").json()
    assert node["inventory"]["running_version"] == "6.2"
    assert Journal(runner.config.journal_file).entry is None


def test_failed_start_is_recovered_and_the_job_says_why(live, make_host, artifacts, tmp_path):
    for version in ("6.1", "6.2"):
        publish(live, artifacts, version)
    host = make_host("6.1")
    before, _ = host.cli("show running-config")
    runner = enrolled_agent(live, host, tmp_path)
    runner.once(wait=0)
    sim("fault", "set", "--root", str(host.root), "start-exit", "13", "--once")
    job = drive_job(live, runner, start_upgrade(live, "6.2"))
    assert job["state"] == "failed" and job["outcome"] == "rolled_back", job
    assert "start failed: NSO did not start (exit status 13" in job["error"]
    names = [(s["name"], s["state"]) for s in job["steps"]]
    assert names[-2:] == [("verify", "skipped"), ("recover", "succeeded")]
    start = next(s for s in job["steps"] if s["name"] == "start")
    assert "Daemon died status=13" in start["log_tail"]
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.1"
    host.clients.clear()
    assert host.cli("show running-config")[0] == before


def _prestage_handed_out(
    live: Any, make_host: Any, artifacts: Any, tmp_path: Path
) -> tuple[Runner, Any, int, dict[str, Any]]:
    """An enrolled agent on a 6.1 host whose upgrade to 6.2 handed it its prestage step."""
    for version in ("6.1", "6.2"):
        publish(live, artifacts, version)
    host = make_host("6.1")
    runner = enrolled_agent(live, host, tmp_path)
    runner.once(wait=0)
    job_id = start_upgrade(live, "6.2")
    step = runner.client.next_step(5)
    assert step is not None and step["name"] == "prestage"
    return runner, host, job_id, step


def test_a_final_report_kept_by_a_crash_is_resent_once_with_its_id(
    live, make_host, artifacts, tmp_path
):
    runner, host, job_id, step = _prestage_handed_out(live, make_host, artifacts, tmp_path)
    # The agent finished the step and journaled its report, then died before sending it.
    entry = runner.journal.begin(step)
    entry.final_report = {
        "report_id": entry.report_id("final"),
        "state": "failed",
        "message": "installer failed (exit 1): simulated",
        "result": {},
    }
    runner.journal.save()

    restarted = Runner(runner.config)
    restarted.flush_pending()
    assert Journal(runner.config.journal_file).entry is None
    # The same report again (a retry whose answer was lost) changes nothing twice.
    again = restarted.client.report(step["id"], entry.final_report)
    job = live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()
    assert again["job"]["state"] == job["state"] == "failed"
    assert job["steps"][0]["attempt"] == 1 and job["outcome"] == "unchanged"
    assert not host.path("/opt/ncs/ncs-6.2").exists()  # the step was not run again


def test_a_result_the_server_refuses_becomes_a_failure_not_an_endless_resend(
    live, make_host, artifacts, tmp_path
):
    """An agent and a server that disagree on a step's result keys: the server refuses the
    success (422 result_invalid); the agent reports the step failed with that reason, which
    the server always takes, instead of resending the refused report at every poll."""
    runner, _host, job_id, step = _prestage_handed_out(live, make_host, artifacts, tmp_path)
    entry = runner.journal.begin(step)
    entry.final_report = {
        "report_id": entry.report_id("final"),
        "state": "succeeded",
        "message": "prestage done",
        "result": {"installed_release": "6.2", "rootkit": True},
    }
    runner.journal.save()
    Runner(runner.config).flush_pending()
    assert Journal(runner.config.journal_file).entry is None
    job = live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()
    assert (job["state"], job["outcome"]) == ("failed", "unchanged")
    assert "refused its result" in job["steps"][0]["message"]
    assert "rootkit" in job["steps"][0]["message"]


def test_a_refused_success_that_changed_the_node_is_reported_as_changed() -> None:
    """The failure sent for a success the server refused says whether the step had changed
    the node: a real NED migration that moved devices, a patch applied; not a dry-run, not
    a migration that found every device there already."""
    from agent.runner import _changed

    def migration(dry_run: bool, *states: str, truncated: bool = False) -> dict:
        devices = [{"device": f"r{i}", "state": s} for i, s in enumerate(states)]
        shown = {"dry_run": dry_run, "devices": devices, "truncated": truncated}
        return {"result": {"ned_migration": shown}}

    assert _changed(migration(False, "already", "migrated"))
    assert _changed(migration(False, "already", truncated=True))
    assert not _changed(migration(False, "already", "already"))
    assert not _changed(migration(True, "dry_run"))
    assert _changed({"result": {"modules": ["ncs_a"], "changed": True}})
    assert not _changed({"result": {"installed_release": "6.2"}})
    assert not _changed({"result": None})
