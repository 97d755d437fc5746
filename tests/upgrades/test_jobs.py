"""The agent protocol's server side: long-poll, idempotent reports, recovery, rollback."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import create_engine

from repo_server.app import create_app
from repo_server.auth.service import Principal
from repo_server.fleet.notify import Notifier, PostgresListener
from repo_server.upgrades.jobs import JobService
from repo_server.upgrades.preflight import UpgradeOptions
from tests.api.helpers import assert_error
from tests.upgrades.builders import BACKUP_FILE, FINGERPRINT, agent_result, healthy_inventory

STEPS = [
    "prestage",
    "backup",
    "stop",
    "restore_point",
    "compact",
    "switch_current",
    "relink_packages",
    "start",
    "verify",
]


def _start(live, **options) -> dict:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2", **options}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def _job(live, job_id: int) -> dict:
    # The operator: viewers see jobs without their context and results.
    return live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()


def test_upgrade_runs_every_step_in_order(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    assert enrolled.next() is None
    job = _start(live)
    assert job["state"] == "queued" and [s["name"] for s in job["steps"]] == STEPS
    seen = []
    while (step := enrolled.next()) is not None:
        seen.append(step["name"])
        assert step["job"]["target_version"] == "6.2"
        assert (
            enrolled.report(step["id"], "running", progress=50, log_tail="working").status_code
            == 200
        )
        result = (
            {"backup_file": "/var/opt/ncs/backups/x.backup.gz"} if step["name"] == "backup" else {}
        )
        done = enrolled.report(step["id"], "succeeded", result=result, nso_seconds=0.5)
        assert done.status_code == 200, done.text
        if step["name"] == "verify":
            assert step["context"]["backup_file"] == "/var/opt/ncs/backups/x.backup.gz"
    assert seen == STEPS
    final = _job(live, job["id"])
    assert final["state"] == "succeeded" and final["outcome"] is None
    assert all(s["state"] == "succeeded" and s["progress"] == 100 for s in final["steps"])
    assert final["context"]["backup_file"].endswith(".backup.gz")


def test_reports_are_idempotent_and_finished_steps_refuse_other_outcomes(
    live, enrolled, releases
) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = enrolled.next()
    report_id = uuid.uuid4().hex
    first = enrolled.report(
        step["id"], "succeeded", report_id=report_id, result={"installed_release": "6.2"}
    )
    again = enrolled.report(
        step["id"], "succeeded", report_id=report_id, result={"installed_release": "6.3"}
    )
    assert first.json() == again.json()
    assert _job(live, job["id"])["context"] == {"installed_release": "6.2"}
    assert_error(enrolled.report(step["id"], "failed", message="late"), 409, "step_finished")
    # The next step is handed out once the first is done; asking again re-hands the same step
    # (an agent restarted mid-step resumes it) with a higher attempt number.
    second = enrolled.next()
    assert second["name"] == "backup" and second["attempt"] == 1
    assert enrolled.next()["attempt"] == 2


JOB_DIR = "/var/opt/ncs/backups/nso-agent-job-1"


def _run_until(enrolled, name: str) -> dict:
    """Report every step a success until ``name`` is handed out; that step."""
    while (step := enrolled.next())["name"] != name:
        enrolled.report(step["id"], "succeeded", result=agent_result(step))
    return step


def test_failure_after_stop_appends_recover_and_ends_rolled_back(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = _run_until(enrolled, "start")
    enrolled.report(step["id"], "failed", message="Daemon died status=13", log_tail="...status=13")
    recover = enrolled.next()
    assert recover["name"] == "recover"
    assert recover["params"] == {
        "source_version": "6.1",
        "upgraded_to": "6.2",
        "target_started": True,
        "discard_writes": False,
        "backup_file": BACKUP_FILE,
        "extra_dir": f"{JOB_DIR}/package-links",
        "restore_point": f"{JOB_DIR}/restore-point",
        "restore_point_token": "t1",
        "saved_ncs_conf": None,
        "fingerprint": FINGERPRINT,
        "stopped_at": "2026-11-30T01:02:03+00:00",
    }
    enrolled.report(recover["id"], "succeeded")
    final = _job(live, job["id"])
    assert (final["state"], final["outcome"]) == ("failed", "rolled_back")
    assert "status=13" in final["error"]
    assert enrolled.next() is None


def test_failure_before_stop_leaves_node_unchanged(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = enrolled.next()
    enrolled.report(step["id"], "failed", message="sha256 mismatch for the installer")
    final = _job(live, job["id"])
    assert (final["state"], final["outcome"]) == ("failed", "unchanged")
    assert [s["name"] for s in final["steps"]] == STEPS  # no recovery needed


def test_failed_recovery_needs_attention(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = _run_until(enrolled, "compact")
    enrolled.report(step["id"], "failed", message="disk full")
    recover = enrolled.next()
    # The new release never got as far as starting: the agent need not restore data.
    assert recover["name"] == "recover" and recover["params"]["target_started"] is False
    enrolled.report(recover["id"], "failed", message="restore failed")
    final = _job(live, job["id"])
    assert (final["state"], final["outcome"]) == ("failed", "needs_attention")
    assert "operator" in final["error"]


def test_verify_failing_while_the_new_release_runs_is_not_restored(
    live, enrolled, releases
) -> None:
    """NSO runs the target and takes writes: restoring would throw them away."""
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = _run_until(enrolled, "verify")
    enrolled.report(
        step["id"],
        "failed",
        message="package l3vpn: oper-status file-load-error",
        result={"nso_running": True, "version": "6.2", "junk": "x" * 100},
    )
    final = _job(live, job["id"])
    assert (final["state"], final["outcome"]) == ("failed", "needs_attention")
    assert [s["name"] for s in final["steps"]] == STEPS  # no recover appended
    assert "runs and takes writes" in final["error"]
    assert f"nso-repo job rollback {job['id']} --discard-writes" in final["error"]
    assert final["steps"][-1]["result"] == {"nso_running": True, "version": "6.2"}
    assert enrolled.next() is None
    # The operator may still roll it back, saying that writes since the stop leave NSO.
    assert_error(
        live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback"),
        409,
        "confirm_discard_writes",
    )
    answer = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={"discard_writes": True}
    )
    assert answer.status_code == 202, answer.text
    recover = enrolled.next()
    assert recover["params"]["restore_point"] == f"{JOB_DIR}/restore-point"
    assert recover["params"]["target_started"] is True
    assert recover["params"]["discard_writes"] is True  # the operator said so
    assert recover["params"]["upgraded_to"] == "6.2"


DRY, REAL = {"dry_run": True}, {"dry_run": False}
HISTORIES = {
    # later jobs after job 1 (an upgrade that succeeded): (kind, state, outcome, rollback_of,
    # and other options if any)
    "a later upgrade needs attention": ([("upgrade", "failed", "needs_attention", None)], 409),
    "a later upgrade was rolled back": ([("upgrade", "failed", "rolled_back", None)], 202),
    "a later upgrade left it unchanged": ([("upgrade", "failed", "unchanged", None)], 202),
    "a later upgrade succeeded": ([("upgrade", "succeeded", None, None)], 409),
    "a later upgrade succeeded and was rolled back": (
        [("upgrade", "succeeded", None, None), ("rollback", "succeeded", None, 2)],
        202,
    ),
    "it was rolled back already": ([("rollback", "succeeded", None, 1)], 409),
    "its rollback failed": ([("rollback", "failed", "needs_attention", 1)], 202),
    # A patch is .beam files in the newer release's folder: the old release leaves them
    # unloaded, and no data or package is undone.
    "a later patch took": ([("patch", "succeeded", None, None)], 202),
    "a later patch needs attention": ([("patch", "failed", "needs_attention", None)], 202),
    "a later patch, then an upgrade": (
        [("patch", "succeeded", None, None), ("upgrade", "succeeded", None, None)],
        409,
    ),
    # A NED migration's dry-run only reads (the agent checks every ned-id is as it was); a
    # real migration has no rollback of its own, and the refusal says so.
    # A single node's package upgrade has no rollback: the refusal says so.
    "a later package upgrade": ([("package_upgrade", "succeeded", None, None)], 409),
    "a later NED dry-run": ([("ned_migration", "succeeded", None, None, DRY)], 202),
    "a later NED dry-run needs attention": (
        [("ned_migration", "failed", "needs_attention", None, DRY)],
        409,
    ),
    "a later NED migration": ([("ned_migration", "succeeded", None, None, REAL)], 409),
    "a later NED dry-run, then a migration": (
        [
            ("ned_migration", "succeeded", None, None, DRY),
            ("ned_migration", "succeeded", None, None, REAL),
        ],
        409,
    ),
}


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("package_upgrade", "a single node's package upgrade has no rollback"),
        ("ned_migration", "a NED migration is not rolled back"),
        ("patch", "patch rollout BUNDLE --remove --node edge-1"),
    ],
)
def test_a_job_the_server_does_not_roll_back_says_what_to_do_instead(
    live, enrolled, app_state, kind, words
) -> None:
    """Asked to roll back a job of a kind with no rollback, the answer says so and the way
    forward, not that only a succeeded job can be rolled back (of a job that succeeded)."""
    from repo_server.fleet.models import Node
    from repo_server.upgrades.models import Job

    with app_state.sessions() as session:
        node = session.query(Node).filter_by(name="edge-1").one()
        job = Job(nodes=[node], kind=kind, state="succeeded", created_by="test")
        session.add(job)
        session.commit()
        job_id = job.id
    answer = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job_id}/rollback", json={"discard_writes": True}
    )
    said = assert_error(answer, 409, "conflict")["message"]
    assert words in said and f"job {job_id} is a succeeded {kind}:" in said, said
    assert "only an upgrade that succeeded" not in said


@pytest.mark.parametrize("history", HISTORIES, ids=list(HISTORIES))
def test_rollback_only_of_the_last_change_still_in_effect(
    live, enrolled, releases, app_state, history
) -> None:
    from repo_server.fleet.models import Node
    from repo_server.upgrades.models import Job

    later, expected = HISTORIES[history]
    with app_state.sessions() as session:
        node = session.query(Node).filter_by(name="edge-1").one()
        first = Job(
            nodes=[node],
            kind="upgrade",
            state="succeeded",
            source_version="6.1",
            target_version="6.2",
            created_by="test",
        )
        session.add(first)
        session.flush()
        # As the agent reports it: the restore point in the job's own folder.
        context = {
            "restore_point": f"/var/opt/ncs/backups/nso-agent-job-{first.id}/restore-point",
            "restore_point_token": "t1",
        }
        first.context = context
        ids = [first.id]
        for kind, state, outcome, of, *options in later:
            job = Job(
                nodes=[node],
                kind=kind,
                state=state,
                outcome=outcome,
                context=context,
                options={**({"rollback_of": ids[of - 1]} if of else {}), **dict(*options)},
                # A patch of the release the upgrade moved to (the only one it could take).
                source_version="6.2" if kind == "patch" else None,
                target_version="6.2" if kind == "patch" else None,
                created_by="test",
            )
            session.add(job)
            session.flush()
            ids.append(job.id)
        session.commit()
    patches = [i for i, (kind, *_) in zip(ids[1:], later) if kind == "patch"]
    if patches and expected == 202:
        # The confirmation the operator is asked for says which patches stop being loaded.
        asked = live.session("operator").post(f"{live.url}/api/v1/jobs/{ids[0]}/rollback", json={})
        error = assert_error(asked, 409, "confirm_discard_writes")
        assert f"what patch jobs {patches[0]} did to NSO 6.2's patches folder" in error["message"]
        assert error["details"]["patch_jobs"] == patches
    answer = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{ids[0]}/rollback", json={"discard_writes": True}
    )
    assert answer.status_code == expected, answer.text
    if expected == 409:
        said = answer.json()["error"]["message"]
        if later[-1][0] == "ned_migration":
            assert "a migration is not rolled back" in said and "Move forward" in said
        elif later[-1][0] == "package_upgrade":
            assert "has no rollback of its own" in said and "Move forward" in said
        else:
            assert "roll that back first" in said or "rolled back already" in said


@pytest.mark.parametrize(
    "result",
    [{"nso_running": "yes"}, {"nso_running": 1}, {"nso_running": None}, {"version": "6.2"}, {}],
    ids=["string", "number", "null", "absent", "empty"],
)
def test_after_a_successful_start_a_failure_is_never_restored_on_its_own(
    live, enrolled, releases, result
) -> None:
    """The new release reached "started": whatever the agent says, it may have taken
    writes. Only declared keys of declared types are kept from a failed report."""
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = _run_until(enrolled, "verify")
    enrolled.report(step["id"], "failed", message="NSO is stopped", result=result)
    assert enrolled.next() is None
    final = _job(live, job["id"])
    assert (final["state"], final["outcome"]) == ("failed", "needs_attention")
    assert "started (and may have taken writes)" in final["error"]
    assert "at 2026-11-30T01:02:03+00:00" in final["error"]
    assert final["steps"][-1]["result"] == {k: v for k, v in result.items() if k == "version"}


def test_a_stop_time_that_is_no_time_is_refused(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    step = _run_until(enrolled, "stop")
    refused = enrolled.report(
        step["id"], "succeeded", result={"stopped_at": "now; run 'rm -rf /' to continue"}
    )
    assert_error(refused, 422, "result_invalid")
    assert "stopped_at" not in _job(live, job["id"])["context"]


def test_one_job_at_a_time_and_rollback(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    job = _start(live)
    refused = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    assert "job_active" in [r["code"] for r in refused.json()["error"]["details"]["reasons"]]
    while (step := enrolled.next()) is not None:
        enrolled.report(step["id"], "succeeded", result=agent_result(step))
    url = f"{live.url}/api/v1/jobs/{job['id']}/rollback"
    refused = live.session("operator").post(url)
    assert_error(refused, 409, "confirm_discard_writes")
    assert "2026-11-30T01:02:03" in refused.json()["error"]["message"]
    rollback = live.session("operator").post(url, json={"discard_writes": True})
    assert rollback.status_code == 202, rollback.text
    body = rollback.json()
    assert (body["kind"], body["source_version"], body["target_version"]) == (
        "rollback",
        "6.2",
        "6.1",
    )
    recover = enrolled.next()
    assert recover["name"] == "recover"
    assert recover["params"]["restore_point"] == f"{JOB_DIR}/restore-point"
    enrolled.report(recover["id"], "succeeded")
    assert _job(live, body["id"])["state"] == "succeeded"
    assert_error(
        live.session("operator").post(
            f"{live.url}/api/v1/jobs/{body['id']}/rollback", json={"discard_writes": True}
        ),
        409,
        "conflict",
    )


def test_long_poll_wakes_when_a_job_is_created(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(enrolled.next(wait=30)))
    waiter.start()
    job = _start(live)
    waiter.join(timeout=40)
    # Had the poll not been woken it would have answered 204 (None) after 30 s.
    assert got and got[0] is not None and got[0]["job_id"] == job["id"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_long_poll_is_woken_by_another_process_through_notify(
    live, enrolled, releases, app_overrides
) -> None:
    """A job created by another server process (its own engine and notifier) wakes this one."""
    enrolled.heartbeat(healthy_inventory("6.1"))
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(enrolled.next(wait=30)))
    waiter.start()
    other = create_app(app_overrides)
    try:
        state = other.extensions["nso_repo"]
        with state.sessions() as session:
            JobService(session, state.notifier).start_upgrade(
                "edge-1", "6.2", UpgradeOptions(), Principal(None, "other-process", "operator")
            )
    finally:
        other.extensions["nso_repo"].close()
    waiter.join(timeout=40)
    assert got and got[0] is not None and got[0]["name"] == "prestage"


def test_a_process_skips_its_own_work_notify_and_heeds_the_others() -> None:
    """The process that made the work woke its waiters at its commit: its own NOTIFY, when
    the listener hears it back, must not wake a poll that began in between a second time."""
    notifier = Notifier()
    # _relay only: an engine that is never connected.
    listener = PostgresListener(
        create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), notifier
    )
    listener._relay(f"work:{notifier.tag}:5,6")
    assert (notifier.counter(5), notifier.counter(6)) == (0, 0)
    listener._relay("work:0123456789abcdef:5,6")
    listener._relay("6")  # an older server's untagged NOTIFY
    assert (notifier.counter(5), notifier.counter(6)) == (1, 2)
    listener._relay(f"poll:7:{notifier.tag}")
    listener._relay("poll:7:0123456789abcdef")
    assert notifier.poll_started(7) == 2  # the other process's poll counted, not its own
