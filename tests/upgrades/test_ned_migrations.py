"""Major NED upgrades on the server: `POST /api/v1/nodes/<name>/ned-migrations`, a dry-run
first, the real migration only on a confirmed dry-run of exactly the same migration, the
refusals (each audited, none creating a job), and a failed migration that had moved devices.

The agent here is a plain HTTP client speaking the protocol; tests/e2e/test_ned_migration.py
drives a real agent and a simulated NSO.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from repo_server.db import utcnow
from repo_server.upgrades.models import Job
from tests.api.helpers import assert_error, put_file
from tests.factories import make_package
from tests.upgrades.builders import Agent, enroll_node, healthy_inventory

NEW = "router-nc-2.0"


@pytest.fixture
def nedded(live, enrolled, tmp_path: Path) -> Agent:
    """edge-1 running the old NED and, beside it, the new ned-id's package (both in the
    catalog, so the server knows their ned-ids)."""
    for name, version, ned_id in (
        ("router-nc", "1.0.2", "router-nc-1.0"),
        ("router-nc2", "2.0", NEW),
        ("l3vpn", "2.1", None),
    ):
        folder = tmp_path / name
        folder.mkdir()
        path = make_package(folder, name, version, "6.2", ned_id=ned_id)
        assert put_file(live.session("uploader"), live.url, path).status_code == 201
    inventory = healthy_inventory(
        "6.2", {"router-nc": "1.0.2", "router-nc2": "2.0", "l3vpn": "2.1"}
    )
    assert enrolled.heartbeat(inventory).status_code == 200
    return enrolled


def migrate(live, role: str = "operator", node: str = "edge-1", **body: Any):
    body = {"new_ned_id": NEW, "devices": ["r1"], "dry_run": True, **body}
    return live.session(role).post(f"{live.url}/api/v1/nodes/{node}/ned-migrations", json=body)


def result_for(step: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    devices = step["params"]["devices"]
    return {
        "ned_migration": {
            "new_ned_id": NEW,
            "dry_run": dry_run,
            "devices_total": len(devices),
            "lost_data_total": 0,
            "truncated": False,
            "devices": [
                {
                    "device": d,
                    "groups": [],
                    "old_ned_id": "router-nc-1.0",
                    "new_ned_id": NEW,
                    "state": "dry_run" if dry_run else "migrated",
                    "modified_paths": [
                        {"path": f"/ncs:devices/device{{{d}}}/device-type/netconf/ned-id"}
                    ],
                    "modified_paths_total": 1,
                    "lost_data": [],
                    "lost_data_total": 0,
                }
                for d in devices
            ],
        }
    }


def run_job(live, agent: Agent, answer) -> dict[str, Any]:
    """The agent runs the job's one step, which succeeds; the job as an operator sees it."""
    assert answer.status_code == 202, answer.text
    step = agent.next()
    assert step is not None and step["name"] == "ned_migrate"
    done = agent.report(step["id"], "succeeded", result=result_for(step, step["params"]["dry_run"]))
    assert done.status_code == 200, done.text
    return dict(
        live.session("operator").get(f"{live.url}/api/v1/jobs/{answer.json()['id']}").json()
    )


def jobs(live) -> list[dict[str, Any]]:
    return list(live.session("operator").get(f"{live.url}/api/v1/jobs").json())


def audit(live, action: str) -> list[dict[str, Any]]:
    found = live.session("admin").get(f"{live.url}/api/v1/audit", params={"action": action})
    return list(found.json())


def test_dry_run_then_the_migration_it_confirms(live, nedded) -> None:
    dry = run_job(live, nedded, migrate(live, devices=["r1", "r2"], device_groups=["edge"]))
    assert (dry["kind"], dry["state"]) == ("ned_migration", "succeeded")
    assert dry["options"] == {
        "new_ned_id": NEW,
        "devices": ["r1", "r2"],
        "device_groups": ["edge"],
        "dry_run": True,
        "confirm": None,
    }
    assert dry["context"]["ned_migration"]["devices"][0]["state"] == "dry_run"

    refused = migrate(live, devices=["r1", "r2"], device_groups=["edge"], dry_run=False)
    assert "dry-run" in assert_error(refused, 409, "dry_run_required")["message"]
    # A dry-run of other devices (or another ned-id) confirms nothing.
    other = run_job(live, nedded, migrate(live, devices=["r3"]))
    for body in (
        {"devices": ["r3"], "confirm": dry["id"]},
        {"devices": ["r1", "r2"], "confirm": other["id"]},
        {
            "devices": ["r1", "r2"],
            "device_groups": ["edge"],
            "new_ned_id": "router-nc-1.0",
            "confirm": dry["id"],
        },
    ):
        error = assert_error(migrate(live, dry_run=False, **body), 409, "dry_run_required")
        assert "is not a dry-run of this migration" in error["message"], error

    # The same devices in another order are the same migration.
    answer = migrate(
        live, devices=["r2", "r1"], device_groups=["edge"], dry_run=False, confirm=dry["id"]
    )
    real = run_job(live, nedded, answer)
    assert real["state"] == "succeeded", real
    assert real["context"]["ned_migration"]["devices"][0]["state"] == "migrated"
    assert real["options"]["confirm"] == dry["id"]
    again = migrate(
        live, devices=["r1", "r2"], device_groups=["edge"], dry_run=False, confirm=dry["id"]
    )
    assert (
        f"confirmed already, by job {real['id']}"
        in assert_error(again, 409, "dry_run_required")["message"]
    )

    created = audit(live, "ned.migrate")
    assert [e["target"] for e in created] == [
        f"job:{real['id']}",
        f"job:{other['id']}",
        f"job:{dry['id']}",
    ]
    assert created[0]["details"]["confirm"] == dry["id"]
    assert {e["actor"] for e in created} == {"operator:test-operator"}
    refusals = audit(live, "ned.migrate_refused")
    assert {e["details"]["code"] for e in refusals} == {"dry_run_required"}
    assert len(refusals) == 5


def test_a_dry_run_confirms_only_while_it_holds(live, nedded) -> None:
    first = run_job(live, nedded, migrate(live))
    answer = migrate(live)
    step = nedded.next()
    failed_report = nedded.report(step["id"], "failed", message="Error: ned-id is not loaded")
    assert failed_report.status_code == 200
    failed = answer.json()["id"]
    error = assert_error(migrate(live, dry_run=False, confirm=failed), 409, "dry_run_required")
    assert f"dry-run job {failed} is failed, not succeeded" in error["message"]
    # Another dry-run since leaves the first one valid; a migration that ran since does not.
    other = run_job(live, nedded, migrate(live, devices=["r9"]))
    run_job(live, nedded, migrate(live, devices=["r9"], dry_run=False, confirm=other["id"]))
    error = assert_error(migrate(live, dry_run=False, confirm=first["id"]), 409, "dry_run_required")
    assert f"ran on edge-1 after dry-run job {first['id']}" in error["message"], error


def test_refusals_say_why_and_create_nothing(live, nedded) -> None:
    cases = [
        (migrate(live, node="nowhere"), 404, "not_found"),
        (migrate(live, devices=[]), 422, "validation_failed"),
        (migrate(live, devices=["r1; devices device r2 migrate"]), 422, "validation_failed"),
        (migrate(live, devices=["../r1"]), 422, "validation_failed"),
        (migrate(live, new_ned_id="router-nc-2.0 dry-run"), 422, "validation_failed"),
        (migrate(live, devices=["r1", "r1"]), 422, "validation_failed"),
        (migrate(live, new_ned_id="other-9.9"), 409, "ned_id_not_loaded"),
        (migrate(live, dry_run=False), 409, "dry_run_required"),
        (migrate(live, "viewer"), 403, "forbidden"),
    ]
    for answer, status, code in cases:
        assert_error(answer, status, code)
    assert "router-nc-1.0, router-nc-2.0" in cases[6][0].json()["error"]["message"]
    assert jobs(live) == []
    refused = audit(live, "ned.migrate_refused")
    assert len(refused) == len(cases) - 1  # the viewer never got past authorisation
    assert refused[-1]["target"] == "node:nowhere"

    held = migrate(live)
    assert held.status_code == 202
    busy = assert_error(migrate(live, devices=["r2"]), 409, "job_active")
    assert f"job {held.json()['id']}" in busy["message"]

    other = enroll_node(live, "edge-2")
    for inventory, said in [
        (None, "never reported"),
        (healthy_inventory("6.2") | {"status": "stopped"}, "is not running"),
        (healthy_inventory("6.2") | {"ha": {"enabled": True, "mode": "secondary"}}, "HA secondary"),
    ]:
        if inventory is not None:
            assert other.heartbeat(inventory).status_code == 200
        error = assert_error(migrate(live, node="edge-2"), 409, "node_not_ready")
        assert said in error["message"], error
    assert len(jobs(live)) == 1


def test_a_failed_migration_that_moved_devices_needs_attention(live, nedded) -> None:
    dry = run_job(live, nedded, migrate(live, devices=["r1", "r2"]))
    answer = migrate(live, devices=["r1", "r2"], dry_run=False, confirm=dry["id"])
    assert answer.status_code == 202, answer.text
    step = nedded.next()
    said = "NSO refused the migration to router-nc-2.0: ...; already on router-nc-2.0: r1"
    report = nedded.report(step["id"], "failed", message=said, result={"changed": True})
    assert report.status_code == 200, report.text
    job = live.session("operator").get(f"{live.url}/api/v1/jobs/{answer.json()['id']}").json()
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention"), job
    assert said in job["error"]


def test_the_old_ned_goes_with_a_package_upgrade_that_removes_it(live, nedded) -> None:
    def upgrade(**body):
        return live.session("operator").post(
            f"{live.url}/api/v1/nodes/edge-1/package-upgrade", json=body
        )

    for body, code in [
        ({}, "no_change"),
        ({"remove": ["nothing-here"]}, "package_not_loaded"),
        (
            {"packages": ["ncs-6.2-router-nc2-2.0.tar.gz"], "remove": ["router-nc2"]},
            "package_twice",
        ),
    ]:
        error = assert_error(upgrade(**body), 422, "preflight_failed")
        assert code in [r["code"] for r in error["details"]["reasons"]], error
    answer = upgrade(remove=["router-nc"])
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["options"] == {"allow_data_loss": False, "remove": ["router-nc"]}
    assert [s["name"] for s in job["steps"]] == [
        "backup",
        "install_packages",
        "reload_packages",
        "verify_packages",
    ]
    nedded.report(nedded.next()["id"], "succeeded", result={})
    install = nedded.next()
    assert install["params"] == {"packages": [], "remove": ["router-nc"]}


def test_a_dry_run_too_old_to_hold_is_refused(live, app_state, nedded) -> None:
    """Device configuration also changes through NSO itself, which no job of ours sees: a
    dry-run's result is confirmed only within NSO_REPO_NED_DRY_RUN_MAX_AGE (a day)."""
    dry = run_job(live, nedded, migrate(live))
    with app_state.sessions() as session:
        old = utcnow() - timedelta(hours=25)
        session.execute(update(Job).where(Job.id == dry["id"]).values(finished_at=old))
        session.commit()
    error = assert_error(migrate(live, dry_run=False, confirm=dry["id"]), 409, "dry_run_required")
    assert re.search(rf"dry-run job {dry['id']} ended 900\d\d s ago", error["message"]), error
    assert "NSO_REPO_NED_DRY_RUN_MAX_AGE" in error["message"]
    assert [j["id"] for j in jobs(live)] == [dry["id"]]  # nothing was created
    fresh = run_job(live, nedded, migrate(live))
    done = run_job(live, nedded, migrate(live, dry_run=False, confirm=fresh["id"]))
    assert done["state"] == "succeeded"


def test_a_confirmed_migration_the_agent_asks_for_too_late_does_not_start(
    live, app_state, nedded
) -> None:
    """The dry-run's result holds for its age limit from when it ended, also for an agent
    that was away when the migration was confirmed: past it, the job ends unchanged."""
    dry = run_job(live, nedded, migrate(live))
    answer = migrate(live, dry_run=False, confirm=dry["id"])
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    with app_state.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and "start_by" in job.options
        past = (utcnow() - timedelta(seconds=1)).isoformat()
        job.options = {**job.options, "start_by": past}
        session.commit()
    assert nedded.next() is None  # nothing handed out
    shown = live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()
    assert (shown["state"], shown["outcome"]) == ("failed", "unchanged"), shown
    assert "not started: it had to start by" in shown["error"]
    assert [s["state"] for s in shown["steps"]] == ["skipped"]
    fresh = run_job(live, nedded, migrate(live))  # the node is free again
    assert fresh["state"] == "succeeded"


def dry_run_reporting(live, agent: Agent, result: dict[str, Any]) -> int:
    """A dry-run whose agent reports ``result``: its job id."""
    answer = migrate(live, devices=["r1"], device_groups=["edge"])
    assert answer.status_code == 202, answer.text
    step = agent.next()
    assert step is not None
    done = agent.report(step["id"], "succeeded", result=result)
    assert done.status_code == 200, done.text
    return int(answer.json()["id"])


def test_a_confirmed_migration_carries_the_devices_its_dry_run_showed(live, nedded) -> None:
    # The group edge resolved to r2 and r3 on the host: the dry-run shows r1, r2, r3.
    shown = result_for({"params": {"devices": ["r1", "r2", "r3"]}}, True)
    lost = {"path": "/ncs:devices/device{r2}/config/snmp-community", "value": "public"}
    shown["ned_migration"]["devices"][1].update(lost_data=[lost], lost_data_total=1)
    shown["ned_migration"]["lost_data_total"] = 1
    dry = dry_run_reporting(live, nedded, shown)
    answer = migrate(live, devices=["r1"], device_groups=["edge"], dry_run=False, confirm=dry)
    assert answer.status_code == 202, answer.text
    step = nedded.next()
    assert step is not None and step["params"]["dry_run"] is False
    # The agent migrates nothing unless the group still resolves to what was shown, and a
    # dry-run right before loses no more than this one showed.
    assert step["params"]["expected_devices"] == ["r1", "r2", "r3"]
    assert step["params"]["expected_lost_data"] == {
        "r1": {"total": 0, "blocks": []},
        "r2": {"total": 1, "blocks": [lost]},
        "r3": {"total": 0, "blocks": []},
    }
    assert "expected_lost_data" not in answer.json()["plan"]


def test_only_the_newest_dry_run_of_a_migration_is_confirmed(live, nedded) -> None:
    """Two dry-runs of the same migration: the older one's result may no longer hold (the
    newer may show more data lost), so only the newer is confirmed."""
    older = run_job(live, nedded, migrate(live))
    newer = run_job(live, nedded, migrate(live))
    error = assert_error(migrate(live, dry_run=False, confirm=older["id"]), 409, "dry_run_required")
    assert f"dry-run job {newer['id']}, of the same migration, ran after" in error["message"]
    assert migrate(live, dry_run=False, confirm=newer["id"]).status_code == 202


@pytest.mark.parametrize(
    "spoil",
    [
        lambda found: found.update(dry_run=False),
        lambda found: found.update(devices=[]),
        lambda found: found.update(devices_total=5),  # devices left out of the result
        lambda found: found.update(new_ned_id="router-nc-3.0"),
        lambda found: found["devices"][0].update(state="migrated"),
    ],
    ids=["not-a-dry-run", "no-devices", "devices-left-out", "other-ned-id", "one-migrated"],
)
def test_only_a_whole_dry_run_result_can_be_confirmed(live, nedded, spoil) -> None:
    result = result_for({"params": {"devices": ["r1", "r2"]}}, True)
    spoil(result["ned_migration"])
    dry = dry_run_reporting(live, nedded, result)
    answer = migrate(live, devices=["r1"], device_groups=["edge"], dry_run=False, confirm=dry)
    error = assert_error(answer, 409, "dry_run_required")
    assert f"dry-run job {dry}" in error["message"]
    assert nedded.next() is None  # nothing was started


def test_a_dry_run_naming_a_dry_run_to_confirm_is_refused(live, nedded) -> None:
    """A dry-run confirms nothing: with confirm it is refused, and the dry-run it names
    can still be confirmed by the real migration."""
    dry = run_job(live, nedded, migrate(live))
    refused = migrate(live, confirm=dry["id"])
    assert assert_error(refused, 422, "validation_failed")["details"]["field"] == "confirm"
    assert nedded.next() is None
    done = run_job(live, nedded, migrate(live, dry_run=False, confirm=dry["id"]))
    assert done["state"] == "succeeded", done.get("error")


def test_a_success_that_contradicts_its_step_is_not_taken(live, nedded) -> None:
    """The agent says a confirmed migration left r1 as a dry-run leaves it and moved r7,
    never asked about, to another ned-id: the step fails, and the job says the node may
    have changed (it needs attention, and stands in the way of rollbacks)."""
    dry = run_job(live, nedded, migrate(live, devices=["r1"]))
    answer = migrate(live, devices=["r1"], dry_run=False, confirm=dry["id"])
    assert answer.status_code == 202, answer.text
    step = nedded.next()
    assert step["params"]["expected_devices"] == ["r1"]
    assert step["params"]["expected_ned_ids"] == {"r1": "router-nc-1.0"}
    bogus = result_for({"params": {"devices": ["r1", "r7"]}}, True)
    bogus["ned_migration"]["dry_run"] = False
    bogus["ned_migration"]["devices"][1].update(state="migrated", new_ned_id="other-9.9")
    assert nedded.report(step["id"], "succeeded", result=bogus).status_code == 200
    job = live.session("operator").get(f"{live.url}/api/v1/jobs/{answer.json()['id']}").json()
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention"), job
    assert "not taken as a success" in job["steps"][0]["message"]


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda m: m.update(dry_run=True), "reports dry_run True"),
        (lambda m: m.update(new_ned_id="router-nc-3.0"), "a move to router-nc-3.0"),
        (lambda m: m["devices"][0].update(state="dry_run"), "in a state a migration"),
        (lambda m: m.update(devices=[], devices_total=0), "its dry-run showed r1"),
    ],
)
def test_each_way_a_migration_result_can_disagree_fails_the_step(live, nedded, spoil, why):
    dry = run_job(live, nedded, migrate(live, devices=["r1"]))
    answer = migrate(live, devices=["r1"], dry_run=False, confirm=dry["id"])
    step = nedded.next()
    said = result_for(step, False)
    spoil(said["ned_migration"])
    assert nedded.report(step["id"], "succeeded", result=said).status_code == 200
    job = live.session("operator").get(f"{live.url}/api/v1/jobs/{answer.json()['id']}").json()
    assert job["state"] == "failed" and why in job["steps"][0]["message"], job["steps"][0]


def test_a_later_dry_run_that_may_have_changed_the_node_voids_the_earlier_one(live, nedded) -> None:
    first = run_job(live, nedded, migrate(live, devices=["r1"]))
    answer = migrate(live, devices=["r9"])
    step = nedded.next()
    said = "after the dry-run NSO shows r9 on router-nc-2.0; expected no change"
    failed = nedded.report(step["id"], "failed", message=said, result={"changed": True})
    assert failed.status_code == 200, failed.text
    later = live.session("operator").get(f"{live.url}/api/v1/jobs/{answer.json()['id']}").json()
    assert later["outcome"] == "needs_attention"
    confirmed = migrate(live, devices=["r1"], dry_run=False, confirm=first["id"])
    assert confirmed.status_code == 409, confirmed.json()
    assert f"job {later['id']}" in confirmed.json()["error"]["message"]


def test_a_dry_run_cancelled_while_its_agent_had_it_changed_nothing(live, nedded) -> None:
    """A dry-run handed out, then cancelled (its agent went away): NSO only said what it
    would change, so the job ends unchanged, and an earlier dry-run still holds."""
    first = run_job(live, nedded, migrate(live))
    answer = migrate(live, devices=["r9"])
    assert answer.status_code == 202, answer.text
    assert nedded.next() is not None  # handed out, never reported
    cancelled = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{answer.json()['id']}/cancel", json={"reason": "agent gone"}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["state"], cancelled.json()["outcome"]) == ("cancelled", "unchanged")
    assert migrate(live, dry_run=False, confirm=first["id"]).status_code == 202


def test_a_refused_package_upgrade_is_audited_with_who_asked(live, nedded) -> None:
    """Refused by preflight (a NED migration holds the node): nothing is created, and the
    audit log says who tried and why."""
    held = migrate(live)
    assert held.status_code == 202, held.text
    refused = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/package-upgrade", json={"remove": ["router-nc"]}
    )
    assert_error(refused, 422, "preflight_failed")
    (event,) = audit(live, "job.create_refused")
    assert event["actor"] == "operator:test-operator" and event["target"] == "node:edge-1"
    assert event["details"]["kind"] == "package_upgrade"
    assert "job_active" in event["details"]["reasons"]
    assert len(jobs(live)) == 1
