"""Step reports are trusted only as far as the protocol says (docs/agent-protocol.md,
"Reporting"): from the node the step belongs to, for the step handed out to it, in order,
with the result keys that step declares, and host paths inside the node's backup folder."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.api.helpers import assert_error
from tests.upgrades.builders import (
    BACKUP_FILE,
    agent_result,
    enroll_node,
    healthy_inventory,
    start_upgrade,
)


def _job(live, job_id: int) -> dict[str, Any]:
    return live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()


def _run_until(enrolled, name: str) -> dict[str, Any]:
    while (step := enrolled.next())["name"] != name:
        done = enrolled.report(step["id"], "succeeded", result=agent_result(step))
        assert done.status_code == 200, done.text
    return step


def test_a_reused_report_id_does_not_answer_for_another_nodes_step(
    live, enrolled, releases
) -> None:
    start_upgrade(live, enrolled)
    step = enrolled.next()
    report_id = uuid.uuid4().hex
    assert enrolled.report(step["id"], "running", report_id=report_id).status_code == 200
    intruder = enroll_node(live, "edge-2")
    # Ownership is checked first: the step is not edge-2's, whatever the report_id.
    assert_error(intruder.report(step["id"], "running", report_id=report_id), 404, "not_found")
    assert_error(intruder.report(step["id"], "succeeded"), 404, "not_found")
    # The owner's retry still gets its first answer.
    assert enrolled.report(step["id"], "running", report_id=report_id).status_code == 200


def test_verify_reported_before_it_was_handed_out_is_refused(live, enrolled, releases) -> None:
    job = start_upgrade(live, enrolled)
    ids = {s["name"]: s["id"] for s in job["steps"]}
    enrolled.next()  # prestage is handed out
    refused = assert_error(
        enrolled.report(ids["verify"], "succeeded", result={"version": "6.2"}),
        409,
        "step_not_handed_out",
    )
    assert refused["details"]["handed_out"] == {"id": ids["prestage"], "name": "prestage"}
    assert "nso-agent" in refused["message"] or "next" in refused["message"]
    assert _job(live, job["id"])["steps"][-1]["state"] == "pending"


def test_reporting_every_step_at_once_never_finishes_a_job(live, enrolled, releases) -> None:
    """Today's attack: report each step as succeeded without asking for it; the job ended
    `succeeded` although the host did nothing."""
    job = start_upgrade(live, enrolled)
    answers = [
        enrolled.report(s["id"], "succeeded").status_code for s in reversed(job["steps"])
    ] + [enrolled.report(s["id"], "succeeded").status_code for s in job["steps"]]
    assert set(answers) == {409}
    final = _job(live, job["id"])
    assert final["state"] == "queued" and final["context"] == {}
    assert {s["state"] for s in final["steps"]} == {"pending"}


def test_a_step_of_a_finished_job_takes_no_new_outcome(live, enrolled, releases) -> None:
    job = start_upgrade(live, enrolled)
    step = enrolled.next()
    assert enrolled.report(step["id"], "failed", message="sha256 mismatch").status_code == 200
    assert _job(live, job["id"])["state"] == "failed"
    # Any later step of the failed job was skipped; none can be reported into success.
    assert_error(enrolled.report(job["steps"][1]["id"], "succeeded"), 409, "step_finished")


@pytest.mark.parametrize(
    "result",
    [
        {"a": 1},
        {"backup_file": BACKUP_FILE},  # a key of another step
        {"installed_release": 62},
        {"installed_release": "6" * 65},
        {"staged_packages": "ncs-6.2-router-nc-1.0.2.tar.gz"},
        {"staged_packages": ["x"] * 5000},
        {"staged_packages": [{"a": 1}]},
    ],
    ids=["unknown", "other-step", "type", "too-long", "not-a-list", "too-many", "item-type"],
)
def test_result_keys_are_declared_per_step(live, enrolled, releases, result) -> None:
    job = start_upgrade(live, enrolled)
    step = enrolled.next()
    error = assert_error(
        enrolled.report(step["id"], "succeeded", result=result), 422, "result_invalid"
    )
    assert error["details"]["step"] == "prestage"
    assert set(error["details"]["allowed"]) == {"installed_release", "staged_packages"}
    final = _job(live, job["id"])
    assert final["steps"][0]["state"] == "dispatched" and final["context"] == {}
    # The agent can still report the step properly.
    ok = enrolled.report(step["id"], "succeeded", result={"installed_release": "6.2"})
    assert ok.status_code == 200, ok.text


ESCAPES = {
    "backup_file": [
        "/../../etc/evil",
        "/var/opt/ncs/backups/../../../etc/shadow",
        "/var/opt/ncs/backups/./x.backup.gz",
        "/var/opt/ncs/backups//x.backup.gz",
        "var/opt/ncs/backups/x.backup.gz",
        "/var/opt/ncs/backups",
        "/var/opt/ncs/backups/",
        "/var/opt/ncs/backups/..",
        "/var/opt/ncs/backups/a\nb",
        "/etc/passwd",
    ],
    "extra_dir": [
        "/var/opt/ncs/backups/nso-agent-job-999/package-links",  # another job's folder
        "/var/opt/ncs/backups/nso-agent-job-1/package-links/../../..",
        "/var/opt/ncs/packages",
    ],
}


@pytest.mark.parametrize(
    "key,value",
    [(key, value) for key, values in ESCAPES.items() for value in values],
)
def test_a_path_in_a_result_stays_in_the_nodes_backup_folder(
    live, enrolled, releases, key, value
) -> None:
    job = start_upgrade(live, enrolled)
    step = _run_until(enrolled, "backup")
    good = agent_result(step)
    error = assert_error(
        enrolled.report(step["id"], "succeeded", result={**good, key: value}),
        422,
        "result_invalid",
    )
    assert key in error["message"] and "/var/opt/ncs/backups" in error["message"]
    assert key not in _job(live, job["id"])["context"]


def test_an_escaping_backup_file_never_reaches_recover(live, enrolled, releases) -> None:
    """Today `{"backup_file": "/../../etc/evil"}` is merged into the job's context and
    handed to the recovery step, which runs as root."""
    job = start_upgrade(live, enrolled)
    step = _run_until(enrolled, "backup")
    evil = enrolled.report(step["id"], "succeeded", result={"backup_file": "/../../etc/evil"})
    assert_error(evil, 422, "result_invalid")
    assert enrolled.report(step["id"], "succeeded", result=agent_result(step)).status_code == 200
    start = _run_until(enrolled, "start")
    assert enrolled.report(start["id"], "failed", message="Daemon died").status_code == 200
    recover = enrolled.next()
    assert recover["name"] == "recover"
    assert recover["params"]["backup_file"] == BACKUP_FILE
    jobdir = f"/var/opt/ncs/backups/nso-agent-job-{job['id']}"
    assert recover["params"]["restore_point"] == f"{jobdir}/restore-point"
    assert recover["params"]["extra_dir"] == f"{jobdir}/package-links"


def test_the_recover_result_names_only_places_the_agent_writes(live, enrolled, releases) -> None:
    job = start_upgrade(live, enrolled)
    start = _run_until(enrolled, "start")
    enrolled.report(start["id"], "failed", message="Daemon died")
    recover = enrolled.next()
    jobdir = f"/var/opt/ncs/backups/nso-agent-job-{job['id']}"
    for replaced in (["/etc"], [f"{jobdir}/replaced-1/../../../../../etc"], "/x"):
        result = {"rolled_back": True, "version": "6.1", "replaced_data": replaced}
        assert_error(
            enrolled.report(recover["id"], "succeeded", result=result), 422, "result_invalid"
        )
    # Replaced data is kept in the job's folder, or beside the live data on another volume.
    kept = [f"{jobdir}/replaced-1/var/opt/ncs", "/data/cdb/.nso-agent-replaced-replaced-1"]
    result = {"rolled_back": True, "version": "6.1", "replaced_data": kept}
    assert enrolled.report(recover["id"], "succeeded", result=result).status_code == 200
    assert _job(live, job["id"])["outcome"] == "rolled_back"


def test_saved_ncs_conf_is_only_the_jobs_own_copy(live, enrolled, releases) -> None:
    enrolled.heartbeat(
        healthy_inventory("6.1") | {"ncs_conf_elements": ["ncs-config", "large-scale"]}
    )
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade",
        json={"to": "6.2", "strip_removed_ncs_conf": True},
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    step = _run_until(enrolled, "ncs_conf")
    for saved in ("/etc/ncs/ncs.conf", "/etc/ncs/ncs.conf.nso-agent-job-99", "/etc/shadow"):
        result = {"removed_elements": ["large-scale"], "saved_ncs_conf": saved}
        assert_error(enrolled.report(step["id"], "succeeded", result=result), 422, "result_invalid")
    saved = f"/etc/ncs/ncs.conf.nso-agent-job-{job_id}"
    result = {"removed_elements": ["large-scale"], "saved_ncs_conf": saved}
    assert enrolled.report(step["id"], "succeeded", result=result).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"message": "m" * 2001},
        {"log_tail": "l" * 16_001},
        {"nso_seconds": -1},
        {"progress": 101},
        {"result": {"installed_release": "6.2", "staged_packages": ["x" * 255] * 2000}},
    ],
    ids=["message", "log_tail", "nso_seconds", "progress", "result-size"],
)
def test_report_sizes_are_capped(live, enrolled, releases, fields) -> None:
    start_upgrade(live, enrolled)
    step = enrolled.next()
    answer = enrolled.report(step["id"], "succeeded", **fields)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] in ("validation_failed", "result_invalid")


def test_a_failed_report_keeps_its_declared_keys_and_is_never_refused_for_others(
    live, enrolled, releases
) -> None:
    """A failure must always land (refusing it would leave the job waiting on a step that
    ended on the host): its result keeps the declared keys of the declared types only."""
    job = start_upgrade(live, enrolled)
    step = _run_until(enrolled, "verify")
    result = {"nso_running": True, "version": "6.2", "backup_file": "/../../etc/evil"}
    answer = enrolled.report(step["id"], "failed", message="package down", result=result)
    assert answer.status_code == 200, answer.text
    final = _job(live, job["id"])
    assert final["steps"][-1]["result"] == {"nso_running": True, "version": "6.2"}
    assert final["context"]["backup_file"] == BACKUP_FILE


def test_reporting_again_and_again_grows_no_table(live, enrolled, releases, app_state) -> None:
    # An enrolled node sending a new report_id for every report kept a row each: a table
    # any node could grow without bound. Only the report that finishes a step is kept.
    from sqlalchemy import func, select

    from repo_server.upgrades.models import StepReport

    def rows() -> int:
        with app_state.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(StepReport)) or 0)

    start_upgrade(live, enrolled)
    step = enrolled.next()
    for percent in range(50):
        assert enrolled.report(step["id"], "running", progress=percent).status_code == 200
    finish = uuid.uuid4().hex
    done = enrolled.report(step["id"], "succeeded", report_id=finish, result=agent_result(step))
    assert done.status_code == 200, done.text
    for _ in range(50):
        again = enrolled.report(step["id"], "succeeded", result=agent_result(step))
        assert again.status_code == 200, again.text
    assert rows() == 1
    # The finishing report is still idempotent by its id: a resend gets the first answer.
    assert enrolled.report(step["id"], "succeeded", report_id=finish).json() == done.json()


@pytest.mark.parametrize("progress", [5.5, "5", True, -1, 101])
def test_progress_is_a_whole_percentage(live, enrolled, releases, progress: Any) -> None:
    start_upgrade(live, enrolled)
    step = enrolled.next()
    answer = enrolled.report(step["id"], "running", progress=progress)
    error = assert_error(answer, 422, "validation_failed")
    assert "progress" in error["details"]["fields"]["json"]


@pytest.mark.parametrize("name, key", [("switch_current", "current"), ("verify", "version")])
def test_a_step_saying_the_node_is_on_another_release_is_no_success(
    live, enrolled, releases, name, key
) -> None:
    """An upgrade to 6.2 whose switch or verify says the node is on 6.1: the step fails
    with why, and the job does not end `succeeded` (a fleet rollout would go on)."""
    job = start_upgrade(live, enrolled)
    step = _run_until(enrolled, name)
    said = enrolled.report(step["id"], "succeeded", result={key: "6.1"})
    assert said.status_code == 200, said.text
    final = _job(live, job["id"])
    mine = next(s for s in final["steps"] if s["id"] == step["id"])
    assert mine["state"] == "failed" and "on 6.1 and the step's is 6.2" in mine["message"]
    assert final["state"] != "succeeded"


def test_a_step_message_stays_one_line(live, enrolled, releases) -> None:
    """A line break in an agent's message would start a row of its own where a table
    shows it (`nso-repo patch show`: a forged row for another node)."""
    job = start_upgrade(live, enrolled)
    step = enrolled.next()
    forged = "NSO refused\n  edge-99      job 77     succeeded\u2028more"
    assert enrolled.report(step["id"], "failed", message=forged).status_code == 200
    (shown,) = (s for s in _job(live, job["id"])["steps"] if s["id"] == step["id"])
    assert shown["message"] == "NSO refused   edge-99      job 77     succeeded more"
