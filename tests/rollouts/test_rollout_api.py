"""Fleet rollouts over the real HTTP API (SQLite and PostgreSQL) with protocol-speaking
agents: the canary and waves in order, the concurrency, the error threshold pausing, retry
and resume finishing, cancel, maintenance windows, gates, and every refusal creating
nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.api.helpers import assert_error
from tests.upgrades.builders import (
    Agent,
    agent_result,
    enroll_node,
    healthy_inventory,
    inventory,
    nso_repo,
    publish_release,
)

PKGS = {"router-nc": "1.0.2", "l3vpn": "2.1"}


@pytest.fixture
def fleet(live, tmp_path: Path) -> dict[str, Agent]:
    publish_release(live, tmp_path, "6.1", PKGS)
    publish_release(live, tmp_path, "6.2", PKGS, java="11", glibc="2.28", min_source_version="5.7")
    agents = {}
    for i in range(1, 6):
        agent = enroll_node(live, f"edge-{i}")
        assert agent.heartbeat(healthy_inventory("6.1")).status_code == 200
        agents[f"edge-{i}"] = agent
    return agents


def create(live, role: str = "operator", **body: Any) -> Any:
    body.setdefault("release", "6.2")
    return live.session(role).post(f"{live.url}/api/v1/rollouts", json=body)


def get(live, rollout_id: int) -> dict[str, Any]:
    answer = live.session("viewer").get(f"{live.url}/api/v1/rollouts/{rollout_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def act(live, rollout_id: int, action: str, role: str = "operator", **body: Any) -> Any:
    return live.session(role).post(f"{live.url}/api/v1/rollouts/{rollout_id}/{action}", json=body)


def targets(rollout: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in rollout["targets"]}


def run_job(agent: Agent, fail: Optional[str] = None) -> Optional[str]:
    """Run every step the node's agent is handed now, as a healthy agent would; fail the
    step named ``fail``. The job's end state as the last report says it."""
    state = None
    while True:
        step = agent.next(0)
        if step is None:
            return state
        if step["name"] == fail:
            answer = agent.report(step["id"], "failed", message="injected failure")
        else:
            answer = agent.report(step["id"], "succeeded", result=agent_result(step))
        assert answer.status_code == 200, answer.text
        state = answer.json()["job"]["state"]


def busy(agents: dict[str, Agent], live, rollout_id: int) -> set[str]:
    return {t["name"] for t in get(live, rollout_id)["targets"] if t["state"] == "running"}


def test_the_canary_goes_alone_then_the_waves_within_the_concurrency(live, fleet) -> None:
    answer = create(
        live,
        select={"nodes": ["edge-3"], "labels": [], "all": True},
        canary=1,
        waves=[50, 100],
        concurrency=2,
    )
    assert answer.status_code == 201, answer.text
    rollout = answer.json()
    rid = rollout["id"]
    # The named node is the canary, alone in wave 0; the four others split 2 + 2.
    assert [(t["name"], t["wave"]) for t in rollout["targets"]] == [
        ("edge-3", 0),
        ("edge-1", 1),
        ("edge-2", 1),
        ("edge-4", 2),
        ("edge-5", 2),
    ]
    assert busy(fleet, live, rid) == {"edge-3"}
    for name in ("edge-1", "edge-2", "edge-4", "edge-5"):
        assert fleet[name].next(0) is None, f"{name} got work before the canary finished"
    assert run_job(fleet["edge-3"]) == "succeeded"
    assert busy(fleet, live, rid) == {"edge-1", "edge-2"}
    assert fleet["edge-4"].next(0) is None
    run_job(fleet["edge-1"])
    # Wave 1 has not reached its 100% success threshold: wave 2 waits for edge-2.
    assert busy(fleet, live, rid) == {"edge-2"}
    run_job(fleet["edge-2"])
    assert busy(fleet, live, rid) == {"edge-4", "edge-5"}
    run_job(fleet["edge-4"])
    run_job(fleet["edge-5"])
    done = get(live, rid)
    assert done["state"] == "succeeded"
    assert done["counts"]["succeeded"] == 5
    assert all(t["job_id"] for t in done["targets"])
    nodes = live.session("viewer").get(f"{live.url}/api/v1/nodes").json()["items"]
    assert {n["assigned_version"] for n in nodes} == {"6.2"}
    audit = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": "rollout.create"}
    )
    assert audit.status_code == 200 and audit.json()[0]["actor"].startswith("operator:")


def test_a_failure_over_the_error_threshold_pauses_and_retry_then_resume_finish(
    live, fleet
) -> None:
    rid = create(live, select={"all": True}, waves=[100], concurrency=5, error_threshold=20).json()[
        "id"
    ]
    assert busy(fleet, live, rid) == set(fleet)
    assert run_job(fleet["edge-2"], fail="prestage") == "failed"
    # 1 of 5 is 20%: not above the threshold, the rollout runs on.
    assert get(live, rid)["state"] == "running"
    assert run_job(fleet["edge-4"], fail="prestage") == "failed"
    paused = get(live, rid)
    assert paused["state"] == "paused"
    assert "above the error threshold of 20%" in paused["reason"]
    # Jobs already running finish, and are recorded while paused.
    for name in ("edge-1", "edge-3", "edge-5"):
        assert run_job(fleet[name]) == "succeeded"
    paused = get(live, rid)
    assert paused["counts"]["succeeded"] == 3 and paused["counts"]["failed"] == 2
    assert "prestage failed" in targets(paused)["edge-2"]["reason"]
    # Retry plans only the failed ones again; they wait until the operator resumes.
    retried = act(live, rid, "retry")
    assert retried.status_code == 200, retried.text
    assert {t["name"] for t in retried.json()["targets"] if t["state"] == "pending"} == {
        "edge-2",
        "edge-4",
    }
    assert fleet["edge-2"].next(0) is None
    assert act(live, rid, "resume").status_code == 200
    assert busy(fleet, live, rid) == {"edge-2", "edge-4"}
    run_job(fleet["edge-2"])
    run_job(fleet["edge-4"])
    done = get(live, rid)
    assert done["state"] == "succeeded", done
    assert targets(done)["edge-2"]["attempts"] == 2


def test_cancel_starts_nothing_more_and_lets_running_jobs_finish(live, fleet) -> None:
    rid = create(live, select={"all": True}, concurrency=2).json()["id"]
    running = busy(fleet, live, rid)
    assert len(running) == 2
    assert assert_error(act(live, rid, "cancel"), 422, "validation_failed")
    cancelled = act(live, rid, "cancel", reason="change freeze")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["state"] == "cancelled"
    assert body["counts"]["cancelled"] == 3 and body["counts"]["running"] == 2
    for name in running:
        assert run_job(fleet[name]) == "succeeded"
    for name in set(fleet) - running:
        assert fleet[name].next(0) is None
    after = get(live, rid)
    assert after["counts"]["succeeded"] == 2 and after["state"] == "cancelled"
    # The listing: the same counts and waves, without the targets.
    (listed,) = live.session("viewer").get(f"{live.url}/api/v1/rollouts").json()
    assert "targets" not in listed
    assert {k: listed[k] for k in ("id", "release", "state", "counts", "wave_progress")} == {
        k: after[k] for k in ("id", "release", "state", "counts", "wave_progress")
    }
    # As an operator reads them in a terminal.
    shown = nso_repo(live, "viewer", "rollout", "ls")
    assert shown.returncode == 0, shown.stderr
    assert f"{rid} NSO 6.2" in shown.stdout and "cancelled" in shown.stdout
    assert "2 succeeded, 3 cancelled" in shown.stdout
    shown = nso_repo(live, "viewer", "rollout", "show", str(rid))
    assert shown.returncode == 0, shown.stderr
    assert "rollout cancelled by operator:" in shown.stdout
    nodes = {
        n["name"]: n["assigned_version"]
        for n in live.session("viewer").get(f"{live.url}/api/v1/nodes").json()["items"]
    }
    assert {nodes[n] for n in running} == {"6.2"}
    assert {nodes[n] for n in set(fleet) - running} == {None}
    assert assert_error(act(live, rid, "resume"), 409, "conflict")


def test_bad_requests_are_refused_and_create_nothing(live, fleet, tmp_path) -> None:
    assert_error(create(live, select={}), 422, "validation_failed")
    assert_error(create(live, select={"nodes": ["nope"]}), 404, "not_found")
    assert_error(create(live, select={"versions": ["5.8"]}), 409, "no_targets")
    assert_error(create(live, release="9.9", select={"all": True}), 404, "not_found")
    assert_error(create(live, select={"all": True}, waves=[50, 40]), 422, "validation_failed")
    assert_error(create(live, select={"all": True}, waves=[50]), 422, "validation_failed")
    assert_error(create(live, select={"all": True}, gates=["edge-1"]), 409, "gate_not_met")
    assert_error(create(live, "viewer", select={"all": True}), 403, "forbidden")
    # Every target refused by preflight (disk full everywhere): nothing is created.
    for agent in fleet.values():
        agent.heartbeat(inventory("6.1", PKGS, disk_free_bytes={"/opt/ncs": 1, "/var/opt/ncs": 1}))
    refused = assert_error(create(live, select={"all": True}), 422, "preflight_failed")
    assert "every target" in refused["message"]
    assert live.session("viewer").get(f"{live.url}/api/v1/rollouts").json() == []
    # One healthy node: the rollout goes ahead with it, the others shown refused.
    fleet["edge-1"].heartbeat(healthy_inventory("6.1"))
    rollout = create(live, select={"all": True})
    assert rollout.status_code == 201, rollout.text
    shown = targets(rollout.json())
    assert shown["edge-1"]["state"] == "running"
    assert shown["edge-2"]["state"] == "refused"
    assert "MiB free" in " ".join(shown["edge-2"]["reasons"])
    # The same nodes in a second rollout overlap the first.
    assert_error(create(live, select={"nodes": ["edge-1"]}), 409, "rollout_overlap")


def test_a_gate_met_lets_the_rollout_start(live, fleet) -> None:
    fleet["edge-5"].heartbeat(healthy_inventory("6.2"))
    answer = create(live, select={"versions": ["6.1"]}, gates=["edge-5"])
    assert answer.status_code == 201, answer.text
    assert "edge-5" not in targets(answer.json())


def _window(live, node: str, start: datetime, minutes: int) -> None:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/windows",
        json={
            "node": node,
            "days": "daily",
            "start": start.astimezone(timezone.utc).strftime("%H:%M"),
            "minutes": minutes,
            "timezone": "UTC",
        },
    )
    assert answer.status_code == 201, answer.text


def test_windows_start_work_only_inside_them_and_only_work_that_fits(live, fleet) -> None:
    now = datetime.now(timezone.utc)
    _window(live, "edge-1", now + timedelta(hours=2), 120)  # closed now
    _window(live, "edge-2", now - timedelta(minutes=30), 40)  # closes in 10 minutes
    _window(live, "edge-3", now - timedelta(minutes=5), 180)  # open for hours
    rid = create(
        live, select={"nodes": ["edge-1", "edge-2", "edge-3"]}, concurrency=3, job_minutes=30
    ).json()["id"]
    shown = targets(get(live, rid))
    assert shown["edge-3"]["state"] == "running"
    assert shown["edge-1"]["state"] == "pending"
    assert "outside its maintenance windows" in shown["edge-1"]["reason"]
    assert "next window long enough opens" in shown["edge-1"]["reason"]
    assert shown["edge-2"]["state"] == "pending"
    assert "closes before a job of 30 minutes could finish" in shown["edge-2"]["reason"]
    assert fleet["edge-1"].next(0) is None and fleet["edge-2"].next(0) is None
    windows = live.session("viewer").get(f"{live.url}/api/v1/windows").json()
    assert [w["node"] for w in windows] == ["edge-1", "edge-2", "edge-3"]
    bad = live.session("operator").post(
        f"{live.url}/api/v1/windows",
        json={"node": "edge-4", "days": "someday", "start": "25:00", "minutes": 60},
    )
    assert_error(bad, 422, "validation_failed")
    bad = live.session("operator").post(
        f"{live.url}/api/v1/windows",
        json={
            "node": "edge-4",
            "days": "daily",
            "start": "22:00",
            "minutes": 60,
            "timezone": "Mars/Base",
        },
    )
    assert "time zone" in assert_error(bad, 422, "validation_failed")["message"]


def test_a_window_that_closes_stops_new_work(live, fleet) -> None:
    now = datetime.now(timezone.utc)
    for name in ("edge-1", "edge-2"):
        _window(live, name, now - timedelta(minutes=5), 180)
    rid = create(live, select={"nodes": ["edge-1", "edge-2"]}, job_minutes=30).json()["id"]
    assert busy(fleet, live, rid) == {"edge-1"}
    # edge-2's only window is replaced by one that is closed now.
    windows = live.session("viewer").get(f"{live.url}/api/v1/windows").json()
    window_id = next(w["id"] for w in windows if w["node"] == "edge-2")
    removed = live.session("operator").delete(f"{live.url}/api/v1/windows/{window_id}")
    assert removed.status_code == 204
    _window(live, "edge-2", now + timedelta(hours=3), 60)
    assert run_job(fleet["edge-1"]) == "succeeded"
    after = get(live, rid)
    assert targets(after)["edge-2"]["state"] == "pending"
    assert "outside its maintenance windows" in targets(after)["edge-2"]["reason"]
    assert fleet["edge-2"].next(0) is None
    assert after["state"] == "running"


def test_labels_select_nodes_and_filter_the_fleet(live, fleet) -> None:
    for name in ("edge-2", "edge-4"):
        answer = live.session("operator").put(
            f"{live.url}/api/v1/nodes/{name}/labels", json={"labels": ["site=oslo", "tier:gold"]}
        )
        assert answer.status_code == 200, answer.text
    bad = live.session("operator").put(
        f"{live.url}/api/v1/nodes/edge-1/labels", json={"labels": ['x" OR 1=1']}
    )
    assert_error(bad, 422, "validation_failed")
    listed = (
        live.session("viewer").get(f"{live.url}/api/v1/nodes", params={"label": "site=oslo"}).json()
    )
    assert [n["name"] for n in listed["items"]] == ["edge-2", "edge-4"]
    # A label that is a prefix of another matches only itself.
    none = live.session("viewer").get(f"{live.url}/api/v1/nodes", params={"label": "site"})
    assert none.json()["total"] == 0
    planned = live.session("viewer").post(
        f"{live.url}/api/v1/rollouts/plan",
        json={"release": "6.2", "select": {"labels": ["tier:gold"]}},
    )
    assert planned.status_code == 200, planned.text
    assert [t["name"] for t in planned.json()["targets"]] == ["edge-2", "edge-4"]
    assert live.session("viewer").get(f"{live.url}/api/v1/rollouts").json() == []


def test_a_viewer_reads_why_a_target_failed_without_the_host_paths(live, fleet) -> None:
    """A target that ended repeats its job's error, which may name files on the host: a
    viewer reads it with those paths masked (as in the job itself), in the API and in the
    console; an operator reads it whole."""
    from tests.console.helpers import logged_in

    rid = create(live, select={"nodes": ["edge-2"]}, waves=[100]).json()["id"]
    step = fleet["edge-2"].next(0)
    backup = "/var/opt/ncs/backups/ncs-6.1@edge-2.backup.gz"
    answer = fleet["edge-2"].report(
        step["id"], "failed", message=f"the proven backup {backup} could not be read"
    )
    assert answer.status_code == 200, answer.text
    whole = live.session("operator").get(f"{live.url}/api/v1/rollouts/{rid}").json()
    assert backup in targets(whole)["edge-2"]["reason"]
    assert backup in live.session("operator").get(f"{live.url}/api/v1/nodes/edge-2").text

    seen = targets(get(live, rid))["edge-2"]["reason"]
    assert backup not in seen and "[a path on the host]" in seen and "could not be read" in seen
    for path in ("/api/v1/nodes/edge-2", "/api/v1/nodes"):
        shown = live.session("viewer").get(f"{live.url}{path}")
        assert shown.status_code == 200 and "could not be read" in shown.text
        assert backup not in shown.text
    browser = logged_in(live.url, live.tokens["viewer"])
    for page in (f"/ui/rollouts/{rid}", "/ui/fleet", "/ui/nodes/edge-2"):
        shown = browser.get(page)
        assert shown.status_code == 200 and "could not be read" in shown.text, page
        assert "backups/ncs-6.1" not in shown.text, page


def test_a_node_not_reported_since_its_last_job_waits_and_is_not_refused(
    live, app_state, fleet
) -> None:
    """edge-1's upgrade has just ended and its agent has not reported since (its last
    heartbeat, mid-job, saw NSO stopped for the switch): a rollout neither refuses it for
    that old inventory nor plans on it; it waits, then takes it up."""
    from tests.upgrades.builders import start_upgrade

    start_upgrade(live, fleet["edge-1"])
    fleet["edge-1"].heartbeat({**healthy_inventory("6.1"), "status": "stopped"})
    assert run_job(fleet["edge-1"]) == "succeeded"
    answer = create(live, select={"nodes": ["edge-1", "edge-2"]}, waves=[100], concurrency=2)
    assert answer.status_code == 201, answer.text
    shown = targets(get(live, answer.json()["id"]))
    assert shown["edge-1"]["state"] == "pending", shown["edge-1"]
    assert "last inventory was sent before its last step ended" in shown["edge-1"]["reason"]
    assert shown["edge-2"]["state"] == "running"

    fleet["edge-1"].heartbeat(healthy_inventory("6.2"))
    app_state.driver.tick()
    shown = targets(get(live, answer.json()["id"]))
    assert shown["edge-1"]["state"] == "succeeded", shown["edge-1"]


def test_a_node_in_a_long_job_is_waited_for_however_old_its_inventory(
    live, app_state, fleet
) -> None:
    """An operator's job holds edge-1 and one of its steps runs long: the agent sends no
    heartbeat meanwhile, so the inventory is over 5 minutes old. A rollout waits for the
    job, at creation and at each pass, and does not refuse the node as silent."""
    from datetime import timedelta

    from sqlalchemy import update

    from repo_server.db import utcnow
    from repo_server.fleet.models import Node
    from tests.upgrades.builders import start_upgrade

    start_upgrade(live, fleet["edge-1"])
    step = fleet["edge-1"].next(0)
    assert step is not None  # handed out, and running for a while
    with app_state.sessions() as session:
        session.execute(
            update(Node)
            .where(Node.name == "edge-1")
            .values(inventory_at=utcnow() - timedelta(minutes=10))
        )
        session.commit()
    answer = create(live, select={"nodes": ["edge-1"]}, waves=[100])
    assert answer.status_code == 201, answer.text
    app_state.driver.tick()
    (target,) = get(live, answer.json()["id"])["targets"]
    assert target["state"] == "pending", target
    assert "is still running on edge-1" in target["reason"]


def test_a_rollout_plan_over_a_node_being_patched_says_the_patch_goes(live, tmp_path) -> None:
    """A patch job for 6.1 holds the node: the rollout to 6.2 waits for it, then leaves
    the patch behind; no heartbeat lists it yet, so the plan says so from the job."""
    from tests.api.helpers import put_file
    from tests.factories import make_patch_bundle

    packages = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", packages)
    publish_release(live, tmp_path, "6.2", packages)
    agent = enroll_node(live, "edge-p")
    assert agent.heartbeat(healthy_inventory("6.1")).status_code == 200
    bundle = make_patch_bundle(tmp_path, "6.1", "CSCfix1", ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, bundle).status_code == 201
    patched = live.session("operator").post(
        f"{live.url}/api/v1/patch-rollouts", json={"patch": bundle.name, "nodes": ["edge-p"]}
    )
    assert patched.status_code == 201, patched.text
    job_id = patched.json()["nodes"][0]["job_id"]
    plan = live.session("viewer").post(
        f"{live.url}/api/v1/rollouts/plan",
        json={"release": "6.2", "select": {"nodes": ["edge-p"]}},
    )
    assert plan.status_code == 200, plan.text
    [target] = plan.json()["targets"]
    assert target["drops_patches"] == [
        {"node": "edge-p", "module": "ncs_fix", "patch_id": "CSCfix1", "job": job_id}
    ], target
    shown = nso_repo(
        live, "viewer", "rollout", "plan", "--release", "6.2", "--select", "node:edge-p"
    )
    assert f"ncs_fix (CSCfix1, being applied by job {job_id})" in shown.stdout, shown.stdout
