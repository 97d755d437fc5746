"""Every step state change and every job outcome lands in the audit log, with who did it."""

from __future__ import annotations

from typing import Any

from tests.upgrades.builders import healthy_inventory


def _events(live, prefix: str) -> list[dict[str, Any]]:
    answer = live.session("admin").get(f"{live.url}/api/v1/audit", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return [e for e in reversed(answer.json()) if e["action"].startswith(prefix)]


def _start(live) -> dict[str, Any]:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def test_a_successful_job_audits_each_step_change_and_the_outcome(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    names = []
    while (step := enrolled.next()) is not None:
        names.append(step["name"])
        assert enrolled.report(step["id"], "running", progress=10).status_code == 200
        assert enrolled.report(step["id"], "running", progress=60).status_code == 200
        result = (
            {"backup_file": "/var/opt/ncs/backups/x.backup.gz"} if step["name"] == "backup" else {}
        )
        assert enrolled.report(step["id"], "succeeded", result=result).status_code == 200
    steps = _events(live, "step.")
    # A progress report that changes no state adds no row.
    expected = [
        (f"step.{state}", name, before)
        for name in names
        for before, state in (
            ("pending", "dispatched"),
            ("dispatched", "running"),
            ("running", "succeeded"),
        )
    ]
    assert [(e["action"], e["details"]["step"], e["details"]["from"]) for e in steps] == expected
    for event in steps:
        assert event["actor"] == "agent:node:edge-1"
        assert event["details"]["job"] == job["id"] and event["details"]["node"] == "edge-1"
        assert event["target"] == f"job:{job['id']}"
    outcomes = _events(live, "job.")
    assert [e["action"] for e in outcomes] == ["job.create", "job.succeeded"]
    assert outcomes[-1]["target"] == f"job:{job['id']}"
    assert outcomes[-1]["details"]["from"] == "running"


def test_a_failed_job_audits_the_failure_the_skipped_steps_and_the_outcome(
    live, enrolled, releases
) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = enrolled.next()
    assert step is not None and step["name"] == "prestage"
    failed = enrolled.report(step["id"], "failed", message="disk full")
    assert failed.status_code == 200, failed.text
    steps = _events(live, "step.")
    assert [e["action"] for e in steps][:2] == ["step.dispatched", "step.failed"]
    assert {e["action"] for e in steps[2:]} == {"step.skipped"}
    assert len(steps[2:]) == len(job["steps"]) - 1
    outcome = _events(live, "job.")[-1]
    assert outcome["action"] == "job.failed"
    assert outcome["details"]["outcome"] == "unchanged"
    assert "disk full" in outcome["details"]["error"]
