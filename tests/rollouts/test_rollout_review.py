"""Fleet rollouts where a second read found them wrong: resume past a failed canary, retry
into another rollout's node, a refused canary, a node upgraded outside the rollout, a job
whose agent comes back after its window, a window too short for any job, a group removed
mid-rollout, labels in any case."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from repo_server.upgrades.models import Job
from tests.api.helpers import assert_error
from tests.patches.test_rollout_api import group_on
from tests.upgrades.builders import healthy_inventory, inventory

from .test_rollout_api import (
    PKGS,
    _window,
    act,
    busy,
    create,
    get,
    run_job,
    targets,
)


def test_resume_past_a_failed_canary_opens_the_next_wave(live, fleet) -> None:
    rid = create(live, select={"nodes": ["edge-1"], "all": True}, canary=1, concurrency=5).json()[
        "id"
    ]
    assert run_job(fleet["edge-1"], fail="prestage") == "failed"
    assert get(live, rid)["state"] == "paused"
    resumed = act(live, rid, "resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "running", resumed.json()["reason"]
    assert busy(fleet, live, rid) == {"edge-2", "edge-3", "edge-4", "edge-5"}
    for name in ("edge-2", "edge-3", "edge-4", "edge-5"):
        run_job(fleet[name])
    done = get(live, rid)
    assert done["state"] == "incomplete" and done["counts"]["failed"] == 1


def test_retry_refuses_a_target_another_rollout_took_meanwhile(live, fleet) -> None:
    rid = create(live, select={"nodes": ["edge-3"]}, error_threshold=100).json()["id"]
    run_job(fleet["edge-3"], fail="prestage")
    assert get(live, rid)["state"] == "incomplete"
    taken = create(live, select={"nodes": ["edge-3"]})
    assert taken.status_code == 201, taken.text
    assert_error(act(live, rid, "retry"), 409, "rollout_overlap")
    assert targets(get(live, rid))["edge-3"]["state"] == "failed"
    assert get(live, rid)["state"] == "incomplete"


def test_a_refused_target_is_never_the_canary(live, fleet) -> None:
    fleet["edge-1"].heartbeat(
        inventory("6.1", PKGS, disk_free_bytes={"/opt/ncs": 1, "/var/opt/ncs": 1})
    )
    fleet["edge-2"].heartbeat(healthy_inventory("6.2"))  # on the release already
    rollout = create(
        live, select={"nodes": ["edge-1", "edge-2"], "all": True}, canary=1, waves=[100]
    )
    assert rollout.status_code == 201, rollout.text
    shown = targets(rollout.json())
    assert shown["edge-3"]["wave"] == 0 and shown["edge-3"]["state"] == "running"
    assert {shown[n]["wave"] for n in ("edge-1", "edge-2", "edge-4", "edge-5")} == {1}
    assert busy(fleet, live, rollout.json()["id"]) == {"edge-3"}


def test_a_node_upgraded_outside_the_rollout_counts_as_done(live, fleet) -> None:
    rid = create(live, select={"nodes": ["edge-1", "edge-2"]}).json()["id"]
    fleet["edge-2"].heartbeat(healthy_inventory("6.2.0"))  # 6.2.0 is 6.2
    run_job(fleet["edge-1"])
    done = get(live, rid)
    assert done["state"] == "succeeded", done
    assert targets(done)["edge-2"]["reason"] == "runs 6.2 already"
    assert targets(done)["edge-2"]["job_id"] is None


def test_a_job_its_agent_asks_for_after_its_window_waits_for_the_next(
    live, fleet, app_state
) -> None:
    now = datetime.now(timezone.utc)
    _window(live, "edge-1", now - timedelta(minutes=5), 180)
    rid = create(live, select={"nodes": ["edge-1"]}, job_minutes=30).json()["id"]
    job_id = targets(get(live, rid))["edge-1"]["job_id"]
    with app_state.sessions() as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
        assert job.options["start_by"] and "window" in job.options["start_by_why"]
        # The agent was away until after the window's last start.
        job.options = {**job.options, "start_by": (now - timedelta(minutes=1)).isoformat()}
        session.commit()
    assert fleet["edge-1"].next(0) is None
    job = live.session("viewer").get(f"{live.url}/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["outcome"] == "unchanged"
    assert "maintenance window would close" in job["error"]
    app_state.driver.advance(rid)
    after = targets(get(live, rid))["edge-1"]
    # Pending again, and (its window still open) started anew at once.
    assert after["state"] == "running" and after["job_id"] != job_id and after["attempts"] == 2


def test_a_window_too_short_for_any_job_refuses_the_target(live, fleet) -> None:
    _window(live, "edge-1", datetime.now(timezone.utc) + timedelta(hours=1), 20)
    rid = create(
        live, select={"nodes": ["edge-1", "edge-2"]}, job_minutes=30, concurrency=2
    ).json()["id"]
    shown = targets(get(live, rid))
    assert shown["edge-1"]["state"] == "refused"
    assert "no window is long enough" in shown["edge-1"]["reason"]
    assert shown["edge-2"]["state"] == "running"


def test_a_group_still_to_upgrade_cannot_be_removed(live, fleet) -> None:
    group_on(live, "pair", 2, version="6.1")
    answer = create(live, select={"groups": ["pair"]}, allow_extra_packages=True)
    assert answer.status_code == 201, answer.text
    removed = live.session("operator").delete(f"{live.url}/api/v1/groups/pair")
    assert "rollout" in assert_error(removed, 409, "conflict")["message"]
    assert act(live, answer.json()["id"], "cancel", reason="not now").status_code == 200


def test_labels_are_matched_in_any_case_and_changed_without_losing_others(live, fleet) -> None:
    http = live.session("operator")
    for added in ("Site=Oslo", "tier:GOLD"):
        answer = http.patch(f"{live.url}/api/v1/nodes/edge-3/labels", json={"add": [added]})
        assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == ["site=oslo", "tier:gold"]
    listed = live.session("viewer").get(f"{live.url}/api/v1/nodes", params={"label": "SITE=oslo"})
    assert [n["name"] for n in listed.json()["items"]] == ["edge-3"]
    gone = http.patch(f"{live.url}/api/v1/nodes/edge-3/labels", json={"remove": ["TIER:gold"]})
    assert gone.json()["labels"] == ["site=oslo"]


def test_a_request_starts_a_bounded_number_of_jobs_and_the_ticker_the_rest(
    live, fleet, app_state
) -> None:
    from repo_server.rollouts.driver import REQUEST_STARTS
    from tests.upgrades.builders import enroll_node

    for i in range(6, REQUEST_STARTS + 3):
        assert enroll_node(live, f"edge-{i}").heartbeat(healthy_inventory("6.1")).status_code == 200
    answer = create(live, select={"all": True}, concurrency=100)
    assert answer.status_code == 201, answer.text
    assert answer.json()["counts"]["running"] == REQUEST_STARTS
    app_state.driver.tick()
    assert get(live, answer.json()["id"])["counts"]["running"] == REQUEST_STARTS + 2


def test_a_patch_for_a_node_a_rollout_is_about_to_move_is_refused_saying_so(
    live, fleet, tmp_path
) -> None:
    """edge-2 waits in a fleet rollout to 6.2: a 6.1 patch applied now would be left behind
    by that upgrade minutes later, and nobody told. Refused, saying what to do; with the
    rollout paused the patch goes through; all_affected leaves the node out, saying why."""
    from tests.api.helpers import put_file
    from tests.factories import make_patch_bundle

    # Its maintenance window opens in two hours: it waits, pending.
    _window(live, "edge-2", datetime.now(timezone.utc) + timedelta(hours=2), 180)
    rid = create(live, select={"nodes": ["edge-2"]}).json()["id"]
    assert targets(get(live, rid))["edge-2"]["state"] == "pending"
    path = make_patch_bundle(tmp_path, "6.1", "CSCfix7", ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, path).status_code == 201
    operator = live.session("operator")

    def patch(**body: object) -> object:
        return operator.post(f"{live.url}/api/v1/patch-rollouts", json={"patch": path.name, **body})

    error = assert_error(patch(nodes=["edge-2"]), 409, "rollout_pending")
    assert f"edge-2 (waits in fleet rollout {rid} for its upgrade to NSO 6.2)" in error["message"]
    assert "rollout pause" in error["message"]
    everywhere = patch(all_affected=True)
    assert everywhere.status_code == 201, everywhere.text
    assert sorted(n["node"] for n in everywhere.json()["nodes"]) == [
        "edge-1",
        "edge-3",
        "edge-4",
        "edge-5",
    ]
    left = {n["node"]: n["reason"] for n in everywhere.json()["left_out"]}
    assert list(left) == ["edge-2"] and "fleet rollout" in left["edge-2"]
    # Removing a patch before the upgrade is fine: nothing is left behind.
    assert patch(nodes=["edge-2"], action="remove").status_code == 201
    for agent in (fleet["edge-2"],):
        step = agent.next(0)
        result = {"modules": ["ncs_fix"], "kept": [], "changed": False}
        assert agent.report(step["id"], "succeeded", result=result).status_code == 200
    assert act(live, rid, "pause", reason="the patch first").status_code == 200
    assert patch(nodes=["edge-2"]).status_code == 201


def test_all_affected_leaves_out_the_whole_group_of_a_member_about_to_move(
    live, fleet, tmp_path
) -> None:
    """edge-2 waits alone in a rollout, and has since become the primary of a group with
    edge-3: a group goes whole or not at all, so edge-3 is left out with it."""
    from tests.api.helpers import put_file
    from tests.factories import make_patch_bundle
    from tests.patches.test_rollout_api import ha

    _window(live, "edge-2", datetime.now(timezone.utc) + timedelta(hours=2), 180)
    rid = create(live, select={"nodes": ["edge-2"]}).json()["id"]
    primary = ha("primary", "n1", connected_secondaries=["n2"])
    assert fleet["edge-2"].heartbeat(healthy_inventory("6.1") | primary).status_code == 200
    secondary = ha("secondary", "n2", primary_id="n1")
    assert fleet["edge-3"].heartbeat(healthy_inventory("6.1") | secondary).status_code == 200
    members = [
        {"node": "edge-2", "ha_id": "n1", "role": "primary"},
        {"node": "edge-3", "ha_id": "n2", "role": "secondary", "failover": True},
    ]
    added = live.session("operator").post(
        f"{live.url}/api/v1/groups", json={"name": "late", "members": members}
    )
    assert added.status_code == 201, added.text
    path = make_patch_bundle(tmp_path, "6.1", "CSCfix8", ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, path).status_code == 201
    answer = live.session("operator").post(
        f"{live.url}/api/v1/patch-rollouts", json={"patch": path.name, "all_affected": True}
    )
    assert answer.status_code == 201, answer.text
    left = {n["node"]: n["reason"] for n in answer.json()["left_out"]}
    assert left["edge-2"] == f"waits in fleet rollout {rid} for its upgrade to NSO 6.2"
    assert left["edge-3"].startswith("its HA group late has a member that waits")
    assert sorted(n["node"] for n in answer.json()["nodes"]) == ["edge-1", "edge-4", "edge-5"]
