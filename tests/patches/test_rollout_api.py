"""Patch rollouts over the real HTTP API (SQLite and PostgreSQL), with protocol-speaking
agents: who gets a job, what the step carries, the HA group's order, every refusal creating
nothing, the audit, the plan's dropped patches, and the cost of a large rollout."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy import event, select, update

from repo_server.db import utcnow
from repo_server.fleet.models import Node
from repo_server.upgrades.models import Job, job_nodes
from tests.api.helpers import assert_error, put_file
from tests.console.helpers import logged_in
from tests.factories import make_package, make_patch_bundle
from tests.upgrades.builders import (
    Agent,
    agent_result,
    enroll_node,
    healthy_inventory,
    inventory,
    nso_repo,
    publish_release,
    start_upgrade,
)

BUNDLE = "nso-6.2-patch-CSCfix1.tar.gz"
MODULES = ["ncs_fix", "ncs_fix2"]


@pytest.fixture
def bundle(live, tmp_path: Path) -> dict[str, Any]:
    """nso-6.2-patch-CSCfix1.tar.gz (two modules) in the catalog."""
    path = make_patch_bundle(tmp_path, "6.2", "CSCfix1", tuple(MODULES))
    answer = put_file(live.session("uploader"), live.url, path)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def node_on(live, name: str, version: Optional[str], **changes: Any) -> Agent:
    """An enrolled node whose last heartbeat says it runs ``version`` (None: no heartbeat)."""
    agent = enroll_node(live, name)
    if version is not None:
        answer = agent.heartbeat(inventory(version, **changes))
        assert answer.status_code == 200, answer.text
    return agent


def rollout(live, role: str = "operator", **body: Any) -> Any:
    return live.session(role).post(
        f"{live.url}/api/v1/patch-rollouts", json={"patch": BUNDLE, **body}
    )


def get(live, path: str) -> Any:
    return get_as(live, "operator", path)


def get_as(live, role: str, path: str) -> Any:
    answer = live.session(role).get(f"{live.url}/api/v1{path}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def shown_json(live, rollout_id: str) -> list[dict[str, Any]]:
    return list(get(live, f"/patch-rollouts/{rollout_id}")["nodes"])


def ha(mode: str, ha_id: str, **more: Any) -> dict[str, Any]:
    return {
        "ha": {
            "enabled": True,
            "mode": mode,
            "current_id": ha_id,
            "read_only": False,
            "connected_secondaries": [],
            "primary_id": None,
            **more,
        }
    }


def group_on(live, name: str, size: int, version: str = "6.2") -> list[Agent]:
    """HA group ``name`` of ``size`` members (n1 primary), each heartbeat agreeing with it."""
    ids = [f"n{i}" for i in range(1, size + 1)]
    agents = [
        node_on(live, f"{name}-a", version, **ha("primary", "n1", connected_secondaries=ids[1:]))
    ]
    for i in ids[1:]:
        agents.append(node_on(live, f"{name}-{i}", version, **ha("secondary", i, primary_id="n1")))
    members = [
        {"node": f"{name}-a", "ha_id": "n1", "role": "primary"},
        *(
            {"node": f"{name}-{i}", "ha_id": i, "role": "secondary", "failover": i == "n2"}
            for i in ids[1:]
        ),
    ]
    added = live.session("operator").post(
        f"{live.url}/api/v1/groups", json={"name": name, "members": members}
    )
    assert added.status_code == 201, added.text
    return agents


def test_all_affected_patches_exactly_the_nodes_on_the_bundles_release(live, bundle) -> None:
    on_62 = {name: node_on(live, name, "6.2") for name in ("edge-a", "edge-b")}
    other = node_on(live, "edge-old", "6.1")
    node_on(live, "edge-silent", None)
    answer = rollout(live, all_affected=True)
    assert answer.status_code == 201, answer.text
    started = answer.json()
    assert answer.headers["Location"] == f"/api/v1/patch-rollouts/{started['id']}"
    assert {k: started[k] for k in ("patch", "patch_id", "nso_version", "action")} == {
        "patch": BUNDLE,
        "patch_id": "CSCfix1",
        "nso_version": "6.2",
        "action": "apply",
    }
    assert started["created_by"] == "operator:test-operator"
    assert sorted(n["node"] for n in started["nodes"]) == ["edge-a", "edge-b"]
    assert {n["state"] for n in started["nodes"]} == {"queued"}
    assert len({n["job_id"] for n in started["nodes"]}) == 2  # one job per node

    # The node on another release got nothing: no job, no step, no blob.
    assert other.next() is None
    assert get(live, "/jobs?node=edge-old") == []
    sha = bundle["sha256"]
    assert other.http.get(f"{live.url}/api/v1/blobs/{sha}").status_code == 404

    agent = on_62["edge-a"]
    # Least privilege: the bundle is the node's to download only while its step runs.
    assert agent.http.get(f"{live.url}/api/v1/blobs/{sha}").status_code == 404
    step = agent.next()
    assert step is not None and step["name"] == "apply_patch"
    assert step["job"]["kind"] == "patch"
    # The bundle is small: the step carries it, and the agent checks it as a download.
    carried = base64.b64decode(step["params"]["patch"].pop("content_base64"), validate=True)
    assert hashlib.sha256(carried).hexdigest() == sha and len(carried) == bundle["size"]
    assert step["params"] == {
        "patch": {
            "filename": BUNDLE,
            "sha256": sha,
            "size": bundle["size"],
            "url": f"/api/v1/blobs/{sha}",
        },
        "patch_id": "CSCfix1",
        "nso_version": "6.2",
        "modules": MODULES,
        # For agents that install only signed files (tests/patches/test_patch_signing.py).
        "patch_manifest": json.dumps(
            {
                "bundle": {"filename": BUNDLE, "sha256": sha, "size": bundle["size"]},
                "format": "nso-fleet-patch/1",
                "modules": ["ncs_fix", "ncs_fix2"],
                "nso_version": "6.2",
                "patch_id": "CSCfix1",
            },
            separators=(",", ":"),
        ),
        "patch_signatures": [],
    }
    assert agent.http.get(f"{live.url}/api/v1/blobs/{sha}").status_code == 200
    done = agent.report(
        step["id"], "succeeded", result={"modules": MODULES, "changed": True}, progress=100
    )
    assert done.status_code == 200, done.text
    assert agent.http.get(f"{live.url}/api/v1/blobs/{sha}").status_code == 404

    shown = get(live, f"/patch-rollouts/{started['id']}")
    states = {n["node"]: (n["state"], n["result"]) for n in shown["nodes"]}
    assert states == {
        "edge-a": ("succeeded", {"modules": MODULES, "changed": True}),
        "edge-b": ("queued", None),
    }
    assert shown["state"] == "running" and shown["counts"] == {"succeeded": 1, "queued": 1}
    listed = get(live, "/patch-rollouts")
    assert [(r["id"], r["counts"]) for r in listed] == [(started["id"], shown["counts"])]

    # An undeclared result key is refused, as for every step.
    second = on_62["edge-b"].next()
    assert second is not None
    refused = on_62["edge-b"].report(second["id"], "succeeded", result={"file": "/etc/x"})
    assert_error(refused, 422, "result_invalid")

    audit = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": "patch.rollout"}
    )
    [event_] = audit.json()
    assert event_["actor"] == "operator:test-operator"
    assert event_["target"] == f"patch-rollout:{started['id']}"
    assert event_["details"]["patch"] == BUNDLE and event_["details"]["all_affected"] is True
    assert sorted(event_["details"]["jobs"]) == ["edge-a", "edge-b"]


def test_a_waiting_agent_gets_its_step_as_the_rollout_commits(live, bundle) -> None:
    agent = node_on(live, "edge-wait", "6.2")
    got: list[Any] = []

    def wait() -> None:
        got.append((agent.next(wait=20), time.monotonic()))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)  # the long-poll is waiting
    began = time.monotonic()
    assert rollout(live, nodes=["edge-wait"]).status_code == 201
    waiter.join(timeout=25)
    [(step, at)] = got
    assert step is not None and step["name"] == "apply_patch"
    assert at - began < 2.0


def test_members_that_cannot_take_a_patch_do_not_stop_the_others(live, bundle) -> None:
    """A member left on another release (an HA upgrade that needs attention) or gone quiet:
    naming the others is how their patch goes on, or comes off."""
    *_, third = group_on(live, "trio", 3)
    assert third.heartbeat(healthy_inventory("6.1")).status_code == 200
    answer = rollout(live, nodes=["trio-a", "trio-n2"], action="remove")
    assert answer.status_code == 201, answer.text
    assert sorted(n["node"] for n in answer.json()["nodes"]) == ["trio-a", "trio-n2"]


@pytest.mark.parametrize(
    "named",
    [{"groups": ["trio"]}, {"nodes": ["trio-a", "trio-n3", "trio-n2"]}],
    ids=["the group", "every member"],
)
def test_an_ha_group_is_one_job_secondaries_first(live, bundle, named) -> None:
    primary, secondary, third = group_on(live, "trio", 3)
    answer = rollout(live, action="remove", **named)
    assert answer.status_code == 201, answer.text
    nodes = answer.json()["nodes"]
    assert {n["group"] for n in nodes} == {"trio"}
    [job_id] = {n["job_id"] for n in nodes}
    job = get(live, f"/jobs/{job_id}")
    assert sorted(job["nodes"]) == ["trio-a", "trio-n2", "trio-n3"]
    assert [(s["node"], s["name"], s["batch"]) for s in job["steps"]] == [
        ("trio-n2", "remove_patch", 1),
        ("trio-n3", "remove_patch", 1),
        ("trio-a", "remove_patch", None),
    ]
    # The secondaries work at the same time; the primary waits for both.
    assert primary.next() is None
    steps = [secondary.next(), third.next()]
    assert all(s is not None for s in steps)
    assert primary.next() is None
    for agent, step in zip((secondary, third), steps):
        result = {"modules": MODULES, "kept": [], "changed": True}
        assert agent.report(step["id"], "succeeded", result=result).status_code == 200
    last = primary.next()
    assert last is not None and last["name"] == "remove_patch"
    assert primary.report(last["id"], "failed", message="NSO refused").status_code == 200
    job = get(live, f"/jobs/{job_id}")
    # The secondaries took the change: the failed job says so.
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention")
    shown = get(live, f"/patch-rollouts/{answer.json()['id']}")
    assert shown["state"] == "failed"
    assert shown["counts"] == {"succeeded": 2, "failed": 1}


def test_a_failed_secondary_skips_the_primary_and_changes_nothing_else(live, bundle) -> None:
    primary, secondary = group_on(live, "pair", 2)
    started = rollout(live, groups=["pair"]).json()
    step = secondary.next()
    assert step is not None
    assert secondary.report(step["id"], "failed", message="load-modules failed").status_code == 200
    assert primary.next() is None
    shown = get(live, f"/patch-rollouts/{started['id']}")
    assert {n["node"]: n["state"] for n in shown["nodes"]} == {
        "pair-a": "skipped",
        "pair-n2": "failed",
    }
    job = get(live, f"/jobs/{shown['nodes'][0]['job_id']}")
    assert (job["state"], job["outcome"]) == ("failed", "unchanged")
    assert "pair-n2" in job["error"]


@pytest.mark.parametrize("action", ["apply", "remove"])
@pytest.mark.parametrize("changed", [True, False])
def test_a_failed_step_that_says_it_changed_the_node_needs_attention(
    live, bundle, action, changed
) -> None:
    """The agent's failed report says whether it left the node as it was (``changed``
    false: the files put back, NSO's listing as before) or not: only then is the job
    "unchanged"."""
    agent = node_on(live, "edge-x", "6.2")
    started = rollout(live, nodes=["edge-x"], action=action).json()
    step = agent.next()
    assert step is not None and step["name"] == f"{action}_patch"
    failed = agent.report(
        step["id"], "failed", message="NSO did not load patch CSCfix1", result={"changed": changed}
    )
    assert failed.status_code == 200, failed.text
    job = get(live, f"/jobs/{started['nodes'][0]['job_id']}")
    assert job["steps"][0]["result"] == {"changed": changed}
    outcome = "needs_attention" if changed else "unchanged"
    assert (job["state"], job["outcome"]) == ("failed", outcome)
    if changed:
        # The files the agent could not put back are named to operators, not to viewers.
        kept = "/var/lib/nso-agent/patch-undo/job-1-step-1"
        step = agent.next()
        assert step is None
        started = rollout(live, nodes=["edge-x"], action=action).json()
        step = agent.next()
        assert step is not None
        said = f"NSO did not load it; the files from before are kept in {kept} for 30 days"
        agent.report(step["id"], "failed", message=said, result={"changed": True})
        for role, shown in (("operator", kept), ("viewer", "[a path on the host]")):
            seen = get_as(live, role, f"/patch-rollouts/{started['id']}")["nodes"][0]
            assert shown in seen["message"] and "NSO did not load it" in seen["message"]
            job = get_as(live, role, f"/jobs/{started['nodes'][0]['job_id']}")
            assert shown in job["steps"][0]["message"] and shown in job["error"]
            assert (kept in job["error"]) is (role == "operator")
            # The console's job page as well.
            page = logged_in(live.url, live.tokens[role]).get(f"/ui/jobs/{job['id']}").text
            assert shown in page and (kept in page) is (role == "operator")


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("apply", {"modules": ["other_mod"], "changed": False}),
        ("apply", {"modules": ["ncs_fix"], "changed": True}),  # one of the two
        ("apply", {"changed": False}),
        ("remove", {"modules": ["ncs_fix"], "kept": [], "changed": True}),
        ("remove", {"modules": MODULES, "kept": ["ncs_fix"], "changed": True}),
    ],
    ids=["other-module", "half", "no-modules", "remove-half", "removed-and-kept"],
)
def test_a_success_that_contradicts_its_step_is_a_failure(live, bundle, action, result) -> None:
    """The server holds an agent's success to what the step asked for: a report naming
    other modules than the patch's is no success, and the node is not called unchanged."""
    agent = node_on(live, "edge-x", "6.2")
    started = rollout(live, nodes=["edge-x"], action=action).json()
    step = agent.next()
    assert step is not None
    answer = agent.report(step["id"], "succeeded", result=result)
    assert answer.status_code == 200, answer.text
    assert answer.json()["step"]["state"] == "failed"
    job = get(live, f"/jobs/{started['nodes'][0]['job_id']}")
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention")
    assert "not taken as a success" in job["steps"][0]["message"]
    shown = get(live, f"/patch-rollouts/{started['id']}")
    assert shown["counts"] == {"failed": 1} and shown["state"] != "succeeded"


def _counts(live) -> tuple[int, int]:
    return len(get(live, "/patch-rollouts")), len(get(live, "/jobs"))


def test_each_refusal_says_why_and_creates_nothing(live, bundle, tmp_path: Path) -> None:
    node_on(live, "edge-62", "6.2")
    node_on(live, "edge-61", "6.1")
    node_on(live, "edge-down", "6.2", running_version=None, status="stopped")
    node_on(live, "edge-new", None)
    group_on(live, "mixed", 2)
    package = make_package(tmp_path, "router-nc", "1.0.2", "6.2")
    assert put_file(live.session("uploader"), live.url, package).status_code == 201
    before = _counts(live)

    error = assert_error(
        rollout(live, patch="nso-6.2-patch-nope.tar.gz", nodes=["edge-62"]), 404, "not_found"
    )
    assert "nso-6.2-patch-nope.tar.gz" in error["message"]
    error = assert_error(
        rollout(live, nodes=["edge-62", "ghost"], groups=["nogroup"]), 404, "not_found"
    )
    assert "ghost" in error["message"] and "nogroup" in error["message"]
    assert error["details"] == {"nodes": ["ghost"], "groups": ["nogroup"]}
    error = assert_error(rollout(live, nodes=["edge-62", "edge-61"]), 409, "release_mismatch")
    assert "edge-61 runs NSO 6.1" in error["message"] and "6.2" in error["message"]
    assert error["details"]["nodes"] == {"edge-61": "6.1"}
    # A removal for a release the node left: its files are inert where they are.
    error = assert_error(rollout(live, nodes=["edge-61"], action="remove"), 409, "release_mismatch")
    assert "inert until the node is back on 6.2" in error["message"], error
    assert "start NSO" not in error["message"]
    error = assert_error(rollout(live, nodes=["edge-down"]), 409, "release_mismatch")
    assert "edge-down runs no NSO now (status stopped)" in error["message"]
    error = assert_error(rollout(live, nodes=["edge-new"]), 409, "no_heartbeat")
    assert "edge-new" in error["message"]
    assert_error(rollout(live, patch=package.name, nodes=["edge-62"]), 422, "validation_failed")
    assert_error(rollout(live), 422, "validation_failed")
    assert_error(rollout(live, all_affected=True, nodes=["edge-62"]), 422, "validation_failed")
    assert_error(rollout(live, action="undo", nodes=["edge-62"]), 422, "validation_failed")
    assert_error(rollout(live, "viewer", nodes=["edge-62"]), 403, "forbidden")
    # One member of an HA group named alone: the others would serve writes without the fix
    # after a failover, and it would take the patch before its secondary.
    error = assert_error(rollout(live, nodes=["mixed-a", "edge-62"]), 409, "group_member")
    assert "leaves out mixed-n2 of HA group mixed, on NSO 6.2" in error["message"], error
    assert "--group mixed" in error["message"] and "nothing was started" in error["message"]
    assert error["details"]["groups"] == {"mixed": ["mixed-n2"]}
    assert_error(rollout(live, nodes=["mixed-n2"], action="remove"), 409, "group_member")
    assert _counts(live) == before

    # No node runs 6.3: an empty target set.
    other = make_patch_bundle(tmp_path, "6.3", "CSCfix9", ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, other).status_code == 201
    error = assert_error(rollout(live, patch=other.name, all_affected=True), 409, "no_targets")
    assert "no node runs NSO 6.3" in error["message"]
    assert _counts(live) == before

    # A node held by a job is refused, naming the job; the others in the request too.
    first = rollout(live, nodes=["edge-62"])
    assert first.status_code == 201
    job_id = first.json()["nodes"][0]["job_id"]
    before = _counts(live)
    error = assert_error(rollout(live, groups=["mixed"], nodes=["edge-62"]), 409, "node_busy")
    assert f"edge-62 (job {job_id})" in error["message"]
    assert error["details"]["jobs"] == {"edge-62": job_id}
    assert_error(rollout(live, all_affected=True), 409, "node_busy")
    assert _counts(live) == before

    # Refused triggers are audited too, with who asked and why, each once: those the
    # service refuses, and those refused before it (a viewer's role, a body the schema
    # refuses: an unknown action).
    refused = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": "patch.rollout_refused", "limit": 100}
    )
    assert refused.status_code == 200, refused.text
    events = refused.json()
    codes = sorted(e["details"]["code"] for e in events)
    assert codes.count("node_busy") == 2 and "release_mismatch" in codes, codes
    assert {"no_heartbeat", "no_targets", "not_found", "validation_failed"} <= set(codes)
    assert codes.count("group_member") == 2 and codes.count("release_mismatch") == 3, codes
    [viewer] = [e for e in events if e["actor"].startswith("viewer:")]
    assert viewer["details"]["code"] == "forbidden" and viewer["target"] == f"patch:{BUNDLE}"
    [schema] = [e for e in events if "action" in e["details"].get("fields", [])]
    assert schema["details"]["code"] == "validation_failed" and schema["actor"].startswith(
        "operator:"
    )
    others = [e for e in events if e is not viewer]
    assert all(e["actor"].startswith("operator:") for e in others), others
    assert len(events) == 16, codes


def test_a_trigger_whose_body_is_not_json_is_audited_with_its_caller(live, bundle) -> None:
    """Refused before any schema could read it (cut short: 400), the emergency trigger is
    still part of the incident's story, with who sent it and the code they got."""
    cut = live.session("operator").post(
        f"{live.url}/api/v1/patch-rollouts",
        data=json.dumps({"patch": BUNDLE, "all_affected": True})[:-1],
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= cut.status_code < 500, cut.text
    refused = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": "patch.rollout_refused"}
    )
    assert refused.status_code == 200, refused.text
    [event] = refused.json()
    assert event["actor"].startswith("operator:")
    assert event["details"]["code"] == cut.json()["error"]["code"]


def _report_aged(app_state, *names: str, minutes: int = 10) -> None:
    """The nodes' last inventory arrived ``minutes`` ago (their agents went quiet)."""
    with app_state.sessions() as session:
        session.execute(
            update(Node)
            .where(Node.name.in_(names))
            .values(inventory_at=utcnow() - timedelta(minutes=minutes))
        )
        session.commit()


def test_all_affected_leaves_out_quiet_nodes_and_partial_groups_saying_why(
    live, app_state, bundle, tmp_path: Path
) -> None:
    node_on(live, "edge-up", "6.2")
    node_on(live, "edge-quiet", "6.2")
    group_on(live, "pair", 2)  # pair-a (primary), pair-n2
    half = group_on(live, "half", 2)
    # half's secondary moved to 6.1: its primary alone is on the bundle's release.
    moved = half[1].heartbeat(inventory("6.1", **ha("secondary", "n2", primary_id="n1")))
    assert moved.status_code == 200, moved.text
    _report_aged(app_state, "edge-quiet", "pair-n2")
    before = _counts(live)

    # Named, a quiet node is refused, with what to check; nothing starts.
    error = assert_error(rollout(live, nodes=["edge-up", "edge-quiet"]), 409, "inventory_stale")
    assert "edge-quiet" in error["message"] and "nso-agent" in error["message"]
    assert "edge-up" not in error["message"]
    assert error["details"]["nodes"] == ["edge-quiet"]
    assert_error(rollout(live, groups=["pair"]), 409, "inventory_stale")
    assert _counts(live) == before

    answer = rollout(live, all_affected=True)
    assert answer.status_code == 201, answer.text
    started = answer.json()
    assert [n["node"] for n in started["nodes"]] == ["edge-up"]
    reasons = {item["node"]: item["reason"] for item in started["left_out"]}
    assert sorted(reasons) == ["edge-quiet", "half-a", "pair-a", "pair-n2"]
    assert "no inventory since" in reasons["edge-quiet"]
    assert "no inventory since" in reasons["pair-n2"]
    assert "--group pair" in reasons["pair-a"] and "--group half" in reasons["half-a"]
    # Nothing holds the nodes left out: each can take a job of its own at once.
    assert get(live, "/jobs?node=pair-a") == [] and get(live, "/jobs?node=edge-quiet") == []
    [event_] = (
        live.session("admin")
        .get(f"{live.url}/api/v1/audit", params={"action": "patch.rollout"})
        .json()
    )
    assert sorted(event_["details"]["left_out"]) == sorted(reasons)

    # Every node on the release left out: no target, and the answer says which and why.
    # (edge-up's job ends first: a node held by a job is busy, however old its inventory.)
    job_id = started["nodes"][0]["job_id"]
    cancelled = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job_id}/cancel", json={"reason": "its host went away"}
    )
    assert cancelled.status_code == 200, cancelled.text
    _report_aged(app_state, "edge-up")
    again = make_patch_bundle_in_catalog(live, tmp_path, "CSCfix2")
    error = assert_error(rollout(live, patch=again, all_affected=True), 409, "no_targets")
    assert "edge-up" in error["message"]
    assert "edge-up" in error["details"]["left_out"]


def test_a_busy_node_is_refused_as_busy_however_old_its_inventory(live, app_state, bundle) -> None:
    """A node in a long step heartbeats late: it is busy, not silent, named or not."""
    node_on(live, "edge-busy", "6.2")
    first = rollout(live, nodes=["edge-busy"])
    assert first.status_code == 201, first.text
    _report_aged(app_state, "edge-busy")
    for body in ({"nodes": ["edge-busy"]}, {"all_affected": True}):
        error = assert_error(rollout(live, **body), 409, "node_busy")
        assert "edge-busy (job" in error["message"], error


def make_patch_bundle_in_catalog(live, folder: Path, patch_id: str) -> str:
    """Another 6.2 bundle in the catalog: its name."""
    path = make_patch_bundle(folder, "6.2", patch_id, ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, path).status_code == 201
    return path.name


def test_a_patch_job_holds_its_node_against_an_upgrade(live, tmp_path: Path) -> None:
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", pkgs)
    publish_release(live, tmp_path, "6.2", pkgs)
    agent = enroll_node(live, "edge-up")
    assert agent.heartbeat(healthy_inventory("6.1")).status_code == 200
    path = make_patch_bundle(tmp_path, "6.1", "CSCold", ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, path).status_code == 201
    started = rollout(live, patch=path.name, nodes=["edge-up"])
    assert started.status_code == 201, started.text
    job_id = started.json()["nodes"][0]["job_id"]
    upgrade = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-up/upgrade", json={"to": "6.2"}
    )
    error = assert_error(upgrade, 422, "preflight_failed")
    assert [r["code"] for r in error["details"]["reasons"]] == ["job_active"]
    assert f"job {job_id}" in error["message"]


def test_a_plan_to_another_release_says_which_patches_it_drops(live, tmp_path: Path) -> None:
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", pkgs)
    publish_release(live, tmp_path, "6.2", pkgs)
    agent = enroll_node(live, "edge-p")
    facts = healthy_inventory("6.1")
    facts["patches"] = [
        {
            "module": "ncs_fix",
            "file": "ncs_fix.beam",
            "loaded": True,
            "patch_id": "CSCfix1",
            "nso_version": "6.1",
        },
        {"module": "ncs_old", "file": "ncs_old.beam", "loaded": False},
    ]
    assert agent.heartbeat(facts).status_code == 200
    plan = (
        live.session("viewer")
        .get(f"{live.url}/api/v1/nodes/edge-p/plan", params={"to": "6.2"})
        .json()
    )
    assert plan["ok"] is True, plan["reasons"]
    assert plan["drops_patches"] == [
        {"module": "ncs_fix", "patch_id": "CSCfix1"},
        {"module": "ncs_old", "patch_id": None},
    ]
    shown = nso_repo(live, "viewer", "node", "plan", "edge-p", "--to", "6.2")
    assert shown.returncode == 0, shown.stderr
    assert "drops patches: ncs_fix (CSCfix1), ncs_old (patch id unknown)" in shown.stdout
    # A fleet rollout's plan says it too, for each target that would move.
    planned = live.session("viewer").post(
        f"{live.url}/api/v1/rollouts/plan", json={"release": "6.2", "select": {"nodes": ["edge-p"]}}
    )
    assert planned.status_code == 200, planned.text
    [target] = planned.json()["targets"]
    assert target["drops_patches"] == [
        {"node": "edge-p", "module": "ncs_fix", "patch_id": "CSCfix1"},
        {"node": "edge-p", "module": "ncs_old", "patch_id": None},
    ]
    shown = nso_repo(
        live, "viewer", "rollout", "plan", "--release", "6.2", "--select", "node:edge-p"
    )
    assert shown.returncode == 0, shown.stderr
    assert "edge-p: drops patches: ncs_fix (CSCfix1)" in shown.stdout
    # A heartbeat's patch entries are checked like the rest of the inventory.
    facts["patches"][0]["loaded"] = "yes"
    refused = agent.heartbeat(facts)
    assert_error(refused, 422, "validation_failed")
    assert "patches" in str(refused.json()["error"]["details"])


def test_a_group_plan_says_which_patches_each_member_drops(live, tmp_path: Path) -> None:
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", pkgs)
    publish_release(live, tmp_path, "6.2", pkgs)
    patched = {"patches": [{"module": "ncs_fix", "file": "ncs_fix.beam", "patch_id": "P1"}]}
    primary, _secondary = group_on(live, "grp", 2, "6.1")
    healthy = healthy_inventory("6.1")
    answer = primary.heartbeat(
        {**healthy, **ha("primary", "n1", connected_secondaries=["n2"]), **patched}
    )
    assert answer.status_code == 200, answer.text
    plan = (
        live.session("viewer")
        .get(f"{live.url}/api/v1/groups/grp/plan", params={"to": "6.2"})
        .json()
    )
    drops = {m["node"]: m["drops_patches"] for m in plan["members"]}
    assert drops == {"grp-a": [{"module": "ncs_fix", "patch_id": "P1"}], "grp-n2": []}
    shown = nso_repo(live, "viewer", "group", "plan", "grp", "--to", "6.2")
    assert "grp-a drops patches: ncs_fix (P1)" in shown.stdout, shown.stdout + shown.stderr


def test_the_cli_rolls_out_lists_and_shows(live, bundle) -> None:
    agent = node_on(live, "edge-cli", "6.2")
    # Without a target, the refusal names the options to give, not only the API's fields.
    nowhere = nso_repo(live, "operator", "patch", "rollout", BUNDLE)
    assert nowhere.returncode == 1 and "--node, --group" in nowhere.stderr, nowhere.stderr
    assert "--all-affected" in nowhere.stderr
    empty = nso_repo(live, "operator", "patch", "rollout", BUNDLE, "--node", "")
    assert empty.returncode == 1 and "[validation_failed]" in empty.stderr, empty.stderr
    assert "\n  nodes.0: " in empty.stderr, empty.stderr  # which field, and what is wrong
    # Named by the path it was uploaded from: the catalog knows it by its file name.
    started = nso_repo(live, "operator", "patch", "rollout", f"dist/{BUNDLE}", "--node", "edge-cli")
    assert started.returncode == 0, started.stderr
    rollout_id = started.stdout.strip()
    step = agent.next()
    assert step is not None
    agent.report(step["id"], "succeeded", result={"modules": MODULES, "changed": False})
    listed = nso_repo(live, "viewer", "patch", "ls")
    assert (
        f"{rollout_id} apply  {BUNDLE} (NSO 6.2) by operator:test-operator: succeeded"
        in listed.stdout
    )
    shown = nso_repo(live, "operator", "patch", "show", rollout_id)
    assert "edge-cli" in shown.stdout and "modules ncs_fix, ncs_fix2 (unchanged)" in shown.stdout
    # A viewer sees the states, not what the agents reported (job:details, as for jobs).
    seen = nso_repo(live, "viewer", "patch", "show", rollout_id)
    assert seen.returncode == 0, seen.stderr
    assert "edge-cli" in seen.stdout and "succeeded" in seen.stdout
    assert "modules" not in seen.stdout
    as_viewer = get_as(live, "viewer", f"/patch-rollouts/{rollout_id}")
    assert [set(n) for n in as_viewer["nodes"]] == [
        set(n) - {"result"} for n in shown_json(live, rollout_id)
    ]
    removed = nso_repo(
        live, "operator", "patch", "rollout", BUNDLE, "--node", "edge-cli", "--remove", "--json"
    )
    assert removed.returncode == 0, removed.stderr
    assert '"action": "remove"' in removed.stdout
    refused = nso_repo(live, "operator", "patch", "rollout", BUNDLE, "--node", "nobody")
    assert refused.returncode == 1 and "no node named nobody" in refused.stderr


def _statements(app: Any, request: Any) -> tuple[int, Any]:
    """How many SQL statements the server ran for ``request()``, and its answer."""
    engine = app.extensions["nso_repo"].engine
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        answer = request()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen), answer


def test_a_rollout_costs_the_same_statements_for_2_nodes_and_for_30(app, live, bundle) -> None:
    for i in range(30):
        node_on(live, f"big-{i:02}", "6.2")
    node_on(live, "small-a", "6.2")
    node_on(live, "small-b", "6.2")
    small, answer = _statements(app, lambda: rollout(live, nodes=["small-a", "small-b"]))
    assert answer.status_code == 201, answer.text
    big, answer = _statements(app, lambda: rollout(live, nodes=[f"big-{i:02}" for i in range(30)]))
    assert answer.status_code == 201, answer.text
    assert len(answer.json()["nodes"]) == 30
    assert big == small, (small, big)
    shown, answer = _statements(
        app,
        lambda: live.session("viewer").get(
            answer.headers["Location"].replace("/api/v1", f"{live.url}/api/v1")
        ),
    )
    assert answer.status_code == 200 and len(answer.json()["nodes"]) == 30
    assert shown < 15, shown


def test_a_pulled_bundle_is_taken_off_again_once_it_is_uploaded_again(
    live, bundle, tmp_path: Path
) -> None:
    """A bundle pulled from the catalog is served to no one, so a removal cannot run; the
    way docs/patches.md gives: release its name, upload the same file, roll out --remove."""
    agent = node_on(live, "edge-x", "6.2")
    started = rollout(live, nodes=["edge-x"]).json()
    step = agent.next()
    assert step is not None
    result = {"modules": MODULES, "changed": True}
    assert agent.report(step["id"], "succeeded", result=result).status_code == 200
    admin = live.session("admin")
    assert admin.delete(f"{live.url}/api/v1/artifacts/{BUNDLE}").status_code == 200
    refused = assert_error(rollout(live, nodes=["edge-x"], action="remove"), 404, "not_found")
    # The way out, not "upload it" (its name stays reserved: that upload would be refused).
    assert f"nso-repo release-name {BUNDLE}" in refused["message"]
    released = admin.post(f"{live.url}/api/v1/artifacts/{BUNDLE}/release-name", json={})
    assert released.status_code == 200, released.text
    again = tmp_path / BUNDLE  # the file the bundle fixture uploaded
    assert put_file(live.session("uploader"), live.url, again).status_code == 201
    removal = rollout(live, nodes=["edge-x"], action="remove")
    assert removal.status_code == 201, removal.text
    step = agent.next()
    assert step is not None and step["name"] == "remove_patch"
    assert step["params"]["modules"] == MODULES
    assert step["params"]["patch"]["sha256"] == bundle["sha256"]  # the same bytes as applied
    assert started["nodes"][0]["job_id"] != removal.json()["nodes"][0]["job_id"]


def test_a_member_falsely_saying_primary_does_not_put_the_writer_first(live, bundle) -> None:
    """A secondary whose heartbeat says primary (a lie, or a split brain) while the real
    primary says so too: the group's nominal primary, which serves writes, is still
    patched last."""
    _primary, _secondary, third = group_on(live, "trio", 3)
    assert third.heartbeat(inventory("6.2", **ha("primary", "n3"))).status_code == 200
    answer = rollout(live, groups=["trio"])
    assert answer.status_code == 201, answer.text
    [job_id] = {n["job_id"] for n in answer.json()["nodes"]}
    steps = get(live, f"/jobs/{job_id}")["steps"]
    order = [s["node"] for s in steps]
    assert order == ["trio-n2", "trio-n3", "trio-a"], [(s["node"], s["batch"]) for s in steps]


def test_a_failed_group_patch_job_names_the_members_that_have_it(live, bundle) -> None:
    """n2 took the patch, n3 failed, the primary was skipped: the job's error names n2 and
    the rollout that takes the patch off the group."""
    _primary, n2, n3 = group_on(live, "trio", 3)
    started = rollout(live, groups=["trio"])
    assert started.status_code == 201, started.text
    s2, s3 = n2.next(), n3.next()
    took = {"modules": MODULES, "changed": True}
    assert n2.report(s2["id"], "succeeded", result=took).status_code == 200
    refused = n3.report(
        s3["id"], "failed", message="load-modules refused", result={"changed": False}
    )
    assert refused.status_code == 200
    job = get(live, f"/jobs/{started.json()['nodes'][0]['job_id']}")
    assert (job["state"], job["outcome"]) == ("failed", "needs_attention")
    assert "the patch is (or may be) on trio-n2" in job["error"], job["error"]
    assert f"patch rollout {BUNDLE} --remove --group trio" in job["error"]


def test_the_way_forward_a_group_patch_jobs_rollback_names_works(live, bundle) -> None:
    primary, n2 = group_on(live, "pair", 2)
    started = rollout(live, groups=["pair"]).json()
    for agent in (n2, primary):
        step = agent.next()
        done = {"modules": MODULES, "changed": True}
        assert agent.report(step["id"], "succeeded", result=done).status_code == 200
    job_id = started["nodes"][0]["job_id"]
    refused = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job_id}/rollback", json={"discard_writes": True}
    )
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert f"patch rollout {BUNDLE} --remove --group pair" in message, message
    assert rollout(live, action="remove", groups=["pair"]).status_code == 201


def test_a_node_whose_inventory_predates_its_last_upgrade_waits_for_its_heartbeat(
    live, bundle, tmp_path: Path
) -> None:
    """A node just upgraded onto the bundle's release, whose agent has not sent its
    inventory since: named, it is refused (the release its inventory names is the one it
    left); with all_affected, it is listed as left out, not skipped unsaid. Its next
    heartbeat lifts both."""
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    publish_release(live, tmp_path, "6.1", pkgs)
    publish_release(live, tmp_path, "6.2", pkgs)
    agent = enroll_node(live, "edge-up")
    job = start_upgrade(live, agent, "edge-up", "6.2")
    while (step := agent.next()) is not None:
        done = agent.report(step["id"], "succeeded", result=agent_result(step), progress=100)
        assert done.status_code == 200, done.text
    assert get(live, f"/jobs/{job['id']}")["state"] == "succeeded"
    node_on(live, "edge-other", "6.2")
    named = rollout(live, nodes=["edge-up"])
    assert_error(named, 409, "inventory_behind")
    assert "edge-up's last inventory (NSO 6.1)" in named.json()["error"]["message"]
    every = rollout(live, all_affected=True)
    assert every.status_code == 201, every.text
    assert [n["node"] for n in every.json()["nodes"]] == ["edge-other"]
    (left,) = every.json()["left_out"]
    assert left["node"] == "edge-up" and "next heartbeat" in left["reason"]
    beat = agent.heartbeat(healthy_inventory("6.2"))
    assert beat.status_code == 200, beat.text
    again = rollout(live, nodes=["edge-up"])
    assert again.status_code == 201, again.text


@pytest.mark.parametrize("flag", ["on", "yes", 1, "1", "true"])
def test_all_affected_is_a_json_boolean_only(live, bundle, flag: Any) -> None:
    """The fleet-wide trigger is taken from ``true`` alone, not from a word or a number."""
    node_on(live, "edge-flag", "6.2")
    answer = rollout(live, all_affected=flag)
    assert_error(answer, 422, "validation_failed")
    assert get(live, "/patch-rollouts") == []


def test_a_group_with_a_member_on_another_release_is_told_how_to_patch_the_rest(
    live, bundle
) -> None:
    """Both refusals name what works: the members on the release, by name."""
    agents = group_on(live, "half", 3)
    agents[2].heartbeat(inventory("6.1", **ha("secondary", "n3", primary_id="n1")))
    by_group = rollout(live, groups=["half"])
    assert_error(by_group, 409, "release_mismatch")
    assert "--node half-a --node half-n2" in by_group.json()["error"]["message"]
    by_all = rollout(live, all_affected=True)
    assert_error(by_all, 409, "no_targets")
    assert "(--node half-a --node half-n2)" in by_all.json()["error"]["message"]
    assert rollout(live, nodes=["half-a", "half-n2"]).status_code == 201


def test_the_cli_watching_with_json_prints_the_rollout_as_json(live, bundle) -> None:
    """--json --watch: the progress on stderr, the finished rollout as JSON on stdout."""
    agent = node_on(live, "edge-json", "6.2")
    env = {**os.environ, "NSO_REPO_URL": live.url, "NSO_REPO_TOKEN": live.tokens["operator"]}
    command = ["patch", "rollout", BUNDLE, "--node", "edge-json", "--json", "--watch"]
    with subprocess.Popen(
        [sys.executable, "-m", "repo_server.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as watching:
        deadline = time.monotonic() + 60
        while (step := agent.next()) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert step is not None
        agent.report(step["id"], "succeeded", result={"modules": MODULES, "changed": True})
        out, err = watching.communicate(timeout=60)
    assert watching.returncode == 0, err
    shown = json.loads(out)
    assert shown["state"] == "succeeded" and [n["node"] for n in shown["nodes"]] == ["edge-json"]
    assert "succeeded" in err


def test_node_ls_says_which_patch_modules_nso_loads(live) -> None:
    """The inventory's patches by what NSO says of them, not only the files."""
    patches = [
        {"module": "ncs_fix", "file": "ncs_fix.beam", "loaded": True, "patch_id": "CSCfix1"},
        {"module": "ncs_fix2", "file": "ncs_fix2.beam", "loaded": False},
        {"module": "ncs_old", "file": "ncs_old.beam"},
    ]
    node_on(live, "edge-patched", "6.2", patches=patches)
    listed = nso_repo(live, "viewer", "node", "ls")
    assert listed.returncode == 0, listed.stderr
    assert (
        "patches loaded: ncs_fix (CSCfix1); patch files not loaded: ncs_fix2; "
        "patch files, loading unknown: ncs_old"
    ) in listed.stdout


def test_a_group_member_behind_its_upgrade_keeps_the_group_whole(live, bundle, app_state) -> None:
    """Group pair has just been upgraded to 6.2: pair-a reported since, pair-n2 not yet
    (its inventory still names 6.1). Neither all_affected's advice nor a request naming
    pair-a alone patches half the group, the primary first."""
    agents = group_on(live, "pair", 2, version="6.1")
    with app_state.sessions() as session:
        ids = dict(session.execute(select(Node.name, Node.id)).all())
        job = Job(
            kind="ha_upgrade",
            source_version="6.1",
            target_version="6.2",
            state="succeeded",
            finished_at=utcnow(),
            created_by="test",
        )
        session.add(job)
        session.flush()
        session.execute(job_nodes.insert(), [{"job_id": job.id, "node_id": ids[n]} for n in ids])
        session.commit()
    beat = agents[0].heartbeat(
        inventory("6.2", **ha("primary", "n1", connected_secondaries=["n2"]))
    )
    assert beat.status_code == 200, beat.text
    every = rollout(live, all_affected=True)
    assert_error(every, 409, "no_targets")
    assert "--node" not in every.json()["error"]["message"]
    named = rollout(live, nodes=["pair-a"])
    assert_error(named, 409, "inventory_behind")
    assert "pair-n2's last inventory (NSO 6.1)" in named.json()["error"]["message"]
    assert get(live, "/patch-rollouts") == []
    # Its agent down for good (no inventory for 30 minutes): a quiet member does not stop
    # the others, behind or not.
    with app_state.sessions() as session:
        quiet = utcnow() - timedelta(minutes=30)
        session.execute(update(Node).where(Node.name == "pair-n2").values(inventory_at=quiet))
        session.commit()
    assert rollout(live, nodes=["pair-a"]).status_code == 201
