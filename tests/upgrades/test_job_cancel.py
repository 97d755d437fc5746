"""Cancelling a job whose agent will not come back: nothing on the host is changed, the job
ends saying what it had changed, the node is free again, and who did it is audited."""

from __future__ import annotations

from tests.upgrades.builders import agent_result, nso_repo, start_upgrade


def test_a_job_cancelled_before_it_changed_anything(live, enrolled, releases) -> None:
    job = start_upgrade(live, enrolled)
    step = enrolled.next()
    assert step is not None and step["name"] == "prestage"
    viewer = live.session("viewer").post(
        f"{live.url}/api/v1/jobs/{job['id']}/cancel", json={"reason": "host died"}
    )
    assert viewer.status_code == 403
    empty = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/cancel", json={"reason": ""}
    )
    assert empty.status_code == 422  # a reason is required
    ended = nso_repo(live, "operator", "job", "cancel", str(job["id"]), "--reason", "host died")
    assert ended.returncode == 0, ended.stderr
    assert "cancelled (unchanged)" in ended.stdout and "changed nothing" in ended.stdout
    got = live.session("operator").get(f"{live.url}/api/v1/jobs/{job['id']}").json()
    assert [s["state"] for s in got["steps"]][:3] == ["failed", "skipped", "skipped"]
    assert "cancelled by" in got["steps"][0]["message"]
    # The agent's late report changes nothing, and the node is free for a new job.
    late = enrolled.report(step["id"], "succeeded", result={})
    assert late.status_code == 409
    again = start_upgrade(live, enrolled)
    assert again["id"] != job["id"]
    twice = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/cancel", json={"reason": "again"}
    )
    assert twice.status_code == 409 and "cancelled already" in twice.json()["error"]["message"]
    audit = (
        live.session("admin")
        .get(f"{live.url}/api/v1/audit", params={"action": "job.cancel"})
        .json()
    )
    assert audit[0]["target"] == f"job:{job['id']}"
    assert audit[0]["details"]["reason"] == "host died"


def test_a_job_cancelled_after_it_stopped_nso_says_so(live, enrolled, releases) -> None:
    job = start_upgrade(live, enrolled)
    for expected in ("prestage", "backup", "stop"):
        step = enrolled.next()
        assert step is not None and step["name"] == expected
        done = enrolled.report(step["id"], "succeeded", result=agent_result(step))
        assert done.status_code == 200, done.text
    answer = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/cancel", json={"reason": "agent host lost"}
    )
    assert answer.status_code == 200, answer.text
    ended = answer.json()
    assert (ended["state"], ended["outcome"]) == ("cancelled", "needs_attention")
    assert "edge-1 (stop)" in ended["error"] and "check those nodes" in ended["error"]
