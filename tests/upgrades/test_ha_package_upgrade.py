"""Package upgrades on an HA group, the server's side: the plan and its refusals, the job
driven by two plain-HTTP agents, what a failed job says, and its rollback. The real agents
and simulated hosts run it in tests/e2e/test_ha_package_upgrade.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.api.helpers import assert_error
from tests.upgrades.builders import (
    Agent,
    agent_result,
    enroll_node,
    healthy_inventory,
    nso_repo,
    upload_package,
)

Outcome = tuple[str, dict[str, Any], str]  # state, result, message
LOADED = {"router-nc": "1.0.2", "l3vpn": "2.1"}


def _inventory(ha_id: str, primary: bool, **changes: Any) -> dict[str, Any]:
    inv = healthy_inventory("6.2", LOADED)
    inv["ha"] = {
        "enabled": True,
        "mode": "primary" if primary else "secondary",
        "current_id": ha_id,
        "assigned_role": "primary" if primary else "secondary",
        "primary_id": None if primary else "n1",
        "read_only": bool(changes.pop("read_only", False)),
        "connected_secondaries": ["n2"] if primary else [],
    }
    inv["load_paths"] = ["${NCS_RUN_DIR}/packages", "${NCS_DIR}/etc/ncs"]
    inv.update(changes)
    return {k: v for k, v in inv.items() if v is not None}


@pytest.fixture
def pair(live) -> dict[str, Agent]:
    """nso-a (primary n1) and nso-b (secondary n2) on 6.2, registered as group pair."""
    agents = {"nso-a": enroll_node(live, "nso-a"), "nso-b": enroll_node(live, "nso-b")}
    agents["nso-a"].heartbeat(_inventory("n1", True))
    agents["nso-b"].heartbeat(_inventory("n2", False))
    members = [
        {"node": "nso-a", "ha_id": "n1", "role": "primary"},
        {"node": "nso-b", "ha_id": "n2", "role": "secondary"},
    ]
    added = live.session("operator").post(
        f"{live.url}/api/v1/groups", json={"name": "pair", "members": members}
    )
    assert added.status_code == 201, added.text
    return agents


@pytest.fixture
def builds(live, tmp_path: Path) -> dict[str, str]:
    return {
        "router": upload_package(live, tmp_path, "router-nc", "1.0.3", "6.2"),
        "new-ned": upload_package(live, tmp_path, "switch-nc", "1.0", "6.2", ned_id="sw-1.0"),
        "new-service": upload_package(live, tmp_path, "l2vpn", "1.0", "6.2"),
    }


def _plan(live, *packages: str) -> dict[str, Any]:
    answer = live.session("viewer").get(
        f"{live.url}/api/v1/groups/pair/package-plan", params={"packages": list(packages)}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _start(live, *packages: str) -> dict[str, Any]:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/groups/pair/package-upgrade", json={"packages": list(packages)}
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _loaded(versions: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "version": v, "oper_status": "up"} for n, v in sorted(versions.items())]


def _healthy(node: str, step: dict[str, Any]) -> Outcome:
    """What a member's agent reports when everything works and the sync reloaded."""
    result = agent_result(step)
    name = step["name"]
    if name == "ha_package_check":
        primary = node == "nso-a"
        result = {
            "ha_mode": "primary" if primary else "secondary",
            "connected_secondaries": ["n2"] if primary else [],
            "read_only": False,
        }
    elif name == "ha_sync_packages":
        result = {"read_only_before": False, "read_only": False}
    elif name == "ha_verify_packages":
        expected = {p["name"]: p["version"] for p in step["params"]["packages"]}
        result = {"loaded": _loaded(expected or LOADED), "read_only": False}
    return "succeeded", result, ""


def _sync_unknown(node: str, step: dict[str, Any]) -> Outcome:
    """As _healthy, but the sync's outcome is unknown, and the survey finds the primary
    read-only (NSO may still hold it for the sync)."""
    if step["name"] == "ha_sync_packages":
        return "failed", {}, "packages ha sync and-reload: the outcome is UNKNOWN"
    if step["params"].get("survey"):
        return "succeeded", {"loaded": _loaded(LOADED), "read_only": node == "nso-a"}, ""
    return _healthy(node, step)


def _backup_fails(node: str, step: dict[str, Any]) -> Outcome:
    """As _healthy, but nso-b's backup fails (a full disk)."""
    if step["name"] == "backup" and node == "nso-b":
        return "failed", {}, "ncs-backup failed: No space left on device"
    return _healthy(node, step)


def _drive(
    live, agents: dict[str, Agent], job_id: int, outcome: Callable[[str, dict], Outcome]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Hand every member's steps to its agent and report ``outcome`` until the job ends:
    the job, and every step as its agent got it."""
    handed = []
    for _ in range(60):
        job = live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return dict(job), handed
        for node, agent in agents.items():
            step: Optional[dict[str, Any]] = agent.next()
            if step is not None:
                handed.append({**step, "node": node})
                state, result, message = outcome(node, step)
                answer = agent.report(step["id"], state, result=result, message=message)
                assert answer.status_code == 200, answer.text
    raise AssertionError(f"job {job_id} never ended: {job}")


def test_the_plan_runs_the_sync_on_the_primary_between_backups_and_verification(
    live, pair, builds
) -> None:
    plan = _plan(live, builds["router"])
    assert plan["ok"] and plan["sync"] == "and-reload", plan
    shown = [(s["node"], s["name"], s["batch"] is not None) for s in plan["steps"]]
    assert shown == [
        ("nso-a", "prestage_packages", True),
        ("nso-b", "prestage_packages", True),
        ("nso-a", "ha_package_check", True),
        ("nso-b", "ha_package_check", True),
        ("nso-a", "backup", True),
        ("nso-b", "backup", True),
        ("nso-a", "install_packages", False),
        ("nso-a", "ha_sync_packages", False),
        ("nso-a", "ha_verify_packages", False),
        ("nso-b", "ha_verify_packages", False),
    ]
    verify = plan["steps"][-1]["params"]
    assert verify["packages"] == [
        {"name": "l3vpn", "version": "2.1"},
        {"name": "router-nc", "version": "1.0.3"},
    ]
    # Only new NED packages: the lighter and-add; a new package that is no NED, or a NED
    # the group loads already, needs and-reload.
    assert _plan(live, builds["new-ned"])["sync"] == "and-add"
    assert _plan(live, builds["new-ned"], builds["new-service"])["sync"] == "and-reload"
    # An operator may hold the cluster read-only: the job keeps that mode, it does not refuse.
    pair["nso-a"].heartbeat(_inventory("n1", True, read_only=True))
    job = _start(live, builds["new-ned"])
    assert job["kind"] == "ha_package_upgrade" and sorted(job["nodes"]) == ["nso-a", "nso-b"]
    sync = next(s for s in job["steps"] if s["name"] == "ha_sync_packages")
    assert sync["node"] == "nso-a"


@pytest.mark.parametrize("load_paths", [["/opt/other/packages"], None], ids=["differ", "unknown"])
def test_members_whose_load_paths_differ_or_are_unknown_are_refused_and_nothing_starts(
    live, pair, builds, load_paths
) -> None:
    pair["nso-b"].heartbeat(_inventory("n2", False, load_paths=load_paths))
    plan = _plan(live, builds["router"])
    assert not plan["ok"] and plan["steps"] == []
    expected = "load paths" if load_paths else "did not report its load paths"
    assert any(expected in p and "nso-b" in p for p in plan["problems"]), plan["problems"]
    answer = live.session("operator").post(
        f"{live.url}/api/v1/groups/pair/package-upgrade", json={"packages": [builds["router"]]}
    )
    error = assert_error(answer, 422, "preflight_failed")
    assert any(expected in r for r in error["details"]["reasons"])
    jobs = live.session("operator").get(f"{live.url}/api/v1/jobs").json()
    assert jobs == []


def test_a_failed_sync_reads_every_member_and_says_the_way_back(live, pair, builds) -> None:
    job = _start(live, builds["router"])

    def sync_fails(node: str, step: dict[str, Any]) -> Outcome:
        if step["name"] == "ha_sync_packages":
            return "failed", {}, "packages ha sync and-reload failed; NSO said: reload on n2"
        if step["params"].get("survey"):
            return "succeeded", {"loaded": _loaded(LOADED), "read_only": False}, ""
        return _healthy(node, step)

    ended, handed = _drive(live, pair, job["id"], sync_fails)
    assert (ended["state"], ended["outcome"]) == ("failed", "needs_attention")
    surveyed = [s for s in handed if s["params"].get("survey")]
    assert sorted(s["node"] for s in surveyed) == ["nso-a", "nso-b"]
    error = ended["error"]
    assert "NSO said: reload on n2" in error
    assert "nso-a (primary) did not reload: it loads router-nc 1.0.2, read-only false" in error
    assert "nso-b did not reload: it loads router-nc 1.0.2" in error
    assert f"'nso-repo job rollback {job['id']}'" in error
    assert "finish the upgrade by hand on nso-a: 'packages ha sync and-reload" in error
    assert "nso-a /var/opt/ncs/backups/ncs-6.1@" in error  # the proven backups, by member
    # A viewer reads what happened, not where the files are on the hosts.
    for path in (f"/api/v1/jobs/{job['id']}", "/api/v1/jobs"):
        seen = live.session("viewer").get(f"{live.url}{path}").json()
        seen = seen if isinstance(seen, dict) else next(j for j in seen if j["id"] == job["id"])
        assert "NSO said: reload on n2" in seen["error"]
        assert "/var/opt/ncs" not in seen["error"] and "[a path on the host]" in seen["error"]

    answer = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    rollback = answer.json()
    assert rollback["kind"] == "ha_package_rollback"
    # Nor anywhere in the rollback, which names the upgrade's backups (options.backups).
    for path in (f"/api/v1/jobs/{rollback['id']}", "/api/v1/jobs"):
        seen = live.session("viewer").get(f"{live.url}{path}")
        assert seen.status_code == 200 and "/var/opt/ncs" not in seen.text, seen.text
    assert "/var/opt/ncs/backups" in json.dumps(rollback["options"])  # an operator sees them
    # Each member's role checked again and a fresh proven backup of each, before the sync.
    shape = [(s["node"], s["name"]) for s in rollback["steps"]]
    assert shape == [
        ("nso-a", "ha_package_check"),
        ("nso-b", "ha_package_check"),
        ("nso-a", "backup"),
        ("nso-b", "backup"),
        ("nso-a", "ha_sync_packages"),
        ("nso-a", "ha_verify_packages"),
        ("nso-b", "ha_verify_packages"),
    ]
    done, handed = _drive(live, pair, rollback["id"], _healthy)
    assert done["state"] == "succeeded", done["error"]
    assert [s["node"] for s in handed if s["name"] == "backup"] == ["nso-a", "nso-b"]
    check = next(s["params"] for s in handed if s["name"] == "ha_package_check")
    assert (check["mode"], check["secondaries"]) == ("primary", ["n2"])
    sync = next(s for s in handed if s["name"] == "ha_sync_packages")
    assert sync["params"]["restore_links"] == (
        f"/var/opt/ncs/backups/nso-agent-job-{job['id']}/package-links"
    )
    verified = [s["params"]["packages"] for s in handed if s["name"] == "ha_verify_packages"]
    assert verified == [[{"name": n, "version": v} for n, v in sorted(LOADED.items())]] * 2
    again = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert "rolled back already" in assert_error(again, 409, "conflict")["message"]


def test_a_rollback_ends_in_the_mode_the_group_had_before_the_upgrade(live, pair, builds) -> None:
    """The upgrade's sync was lost and NSO left the primary read-only: the rollback's sync
    must not take that for the mode to keep. It is told the mode before the upgrade, and a
    sync that leaves another is not a success."""
    job = _start(live, builds["router"])

    ended, _ = _drive(live, pair, job["id"], _sync_unknown)
    assert (ended["state"], ended["outcome"]) == ("failed", "needs_attention")
    answer = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    rollback = answer.json()

    def left_read_only(node: str, step: dict[str, Any]) -> Outcome:
        """The primary found read-only, and the sync kept the mode it found."""
        state, result, message = _healthy(node, step)
        if node == "nso-a" and step["name"] == "ha_package_check":
            result = {**result, "read_only": True}
        if step["name"] == "ha_sync_packages":
            result = {"read_only_before": True, "read_only": True}
        if step["name"] == "ha_verify_packages":
            result = {**result, "read_only": node == "nso-a"}
        return state, result, message

    done, handed = _drive(live, pair, rollback["id"], left_read_only)
    sync = next(s for s in handed if s["name"] == "ha_sync_packages")
    assert sync["params"]["read_only_after"] is False
    assert (done["state"], done["outcome"]) == ("failed", "needs_attention")
    assert "left the primary read-only True and the step ends it False" in done["error"]

    # An agent that ends the sync as told: the rollback succeeds, the primary read-write.
    again = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert again.status_code == 202, again.text

    def as_told(node: str, step: dict[str, Any]) -> Outcome:
        state, result, message = _healthy(node, step)
        if node == "nso-a" and step["name"] == "ha_package_check":
            result = {**result, "read_only": True}
        if step["name"] == "ha_sync_packages":
            result = {"read_only_before": True, "read_only": step["params"]["read_only_after"]}
        return state, result, message

    done, _ = _drive(live, pair, again.json()["id"], as_told)
    assert done["state"] == "succeeded", done["error"]


def test_a_rollback_whose_fresh_backup_fails_changes_nothing(live, pair, builds) -> None:
    job = _start(live, builds["router"])
    ended, _ = _drive(live, pair, job["id"], _healthy)
    assert ended["state"] == "succeeded", ended["error"]
    answer = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    rollback = answer.json()

    done, handed = _drive(live, pair, rollback["id"], _backup_fails)
    assert (done["state"], done["outcome"]) == ("failed", "unchanged")
    assert "nothing was changed on the group" in done["error"]
    assert not any(s["name"] == "ha_sync_packages" for s in handed)
    # Nothing changed: the rollback may be asked for again.
    again = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert again.status_code == 202, again.text


@pytest.mark.parametrize("lie", ["old-build", "extra-package", "down", "read-only", "failed-over"])
def test_a_verification_that_contradicts_the_job_is_a_failure(live, pair, builds, lie) -> None:
    """A member's agent says ha_verify_packages succeeded while its own result shows the
    old build, a package the job does not expect, one not up, the primary's read-only
    mode changed, or the primary in another HA mode: the server does not take the success."""
    job = _start(live, builds["router"])

    def verify_lies(node: str, step: dict[str, Any]) -> Outcome:
        state, result, message = _healthy(node, step)
        if step["name"] != "ha_verify_packages" or node != "nso-a" or step["params"].get("survey"):
            return state, result, message
        loaded = [dict(p) for p in result["loaded"]]
        if lie == "old-build":
            loaded = [{**p, "version": "1.0.2"} if p["name"] == "router-nc" else p for p in loaded]
        elif lie == "extra-package":
            loaded.append({"name": "stray", "version": "1.0", "oper_status": "up"})
        elif lie == "down":
            loaded = [{**p, "oper_status": "down"} for p in loaded]
        mode = {"ha_mode": "secondary"} if lie == "failed-over" else {}
        return state, {**result, "loaded": loaded, "read_only": lie == "read-only", **mode}, message

    ended, _ = _drive(live, pair, job["id"], verify_lies)
    assert (ended["state"], ended["outcome"]) == ("failed", "needs_attention")
    verify = next(
        s
        for s in ended["steps"]
        if s["name"] == "ha_verify_packages" and s["node"] == "nso-a" and s["state"] == "failed"
    )
    assert "not taken as a success" in verify["message"]


def test_a_failure_before_the_install_changes_nothing_and_reads_no_member(
    live, pair, builds
) -> None:
    job = _start(live, builds["router"])

    ended, handed = _drive(live, pair, job["id"], _backup_fails)
    assert (ended["state"], ended["outcome"]) == ("failed", "unchanged")
    assert "nothing was changed on the group" in ended["error"]
    assert len(ended["steps"]) == ended["plan"]["step_count"]  # no member was read
    assert not any(s["name"] == "install_packages" for s in handed)
    assert [s["state"] for s in ended["steps"] if s["name"] == "install_packages"] == ["skipped"]
    answer = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert "changed nothing" in assert_error(answer, 409, "conflict")["message"]


def test_a_failed_install_says_the_primary_may_link_new_builds(live, pair, builds) -> None:
    job = _start(live, builds["router"])

    def install_fails(node: str, step: dict[str, Any]) -> Outcome:
        if step["name"] == "install_packages":
            return "failed", {}, "NSO CLI refused 'software packages install ...'"
        return _healthy(node, step)

    ended, _ = _drive(live, pair, job["id"], install_fails)
    assert (ended["state"], ended["outcome"]) == ("failed", "needs_attention")
    assert len(ended["steps"]) == ended["plan"]["step_count"]  # nothing reloaded: none read
    error = ended["error"]
    assert "no member reloaded, but /var/opt/ncs/packages on nso-a may link" in error
    assert "'software packages install package ncs-6.2-router-nc-1.0.3 replace-existing'" in error
    assert f"'nso-repo job rollback {job['id']}'" in error


def test_the_cli_plans_and_starts_a_group_package_upgrade(live, pair, builds) -> None:
    shown = nso_repo(live, "viewer", "group", "package-plan", "pair", "--package", builds["router"])
    assert shown.returncode == 0, shown.stderr
    assert "with packages ha sync and-reload: may proceed" in shown.stdout
    assert re.search(r"8\. nso-a\s+ha_sync_packages", shown.stdout), shown.stdout
    pair["nso-b"].heartbeat(_inventory("n2", False, load_paths=["/opt/other"]))
    refused = nso_repo(
        live, "viewer", "group", "package-plan", "pair", "--package", builds["router"]
    )
    assert refused.returncode == 1 and "REFUSED" in refused.stdout
    assert "load paths" in refused.stdout
    pair["nso-b"].heartbeat(_inventory("n2", False))
    started = nso_repo(
        live, "operator", "group", "package-upgrade", "pair", "--package", builds["router"]
    )
    assert started.returncode == 0, started.stderr
    job = live.session("viewer").get(f"{live.url}/api/v1/jobs/{started.stdout.strip()}").json()
    assert job["kind"] == "ha_package_upgrade"


def test_a_job_cancelled_after_its_backups_changed_nothing_and_is_not_rolled_back(
    live, pair, builds
) -> None:
    """Backups write only the agent's files: a job cancelled before its install changed
    nothing, and a rollback (a cluster-wide reload) of it is refused."""
    job = _start(live, builds["router"])
    backed_up = 0
    for _ in range(30):
        for node, agent in pair.items():
            step = agent.next()
            if step is None:
                continue
            state, result, message = _healthy(node, step)
            assert (
                agent.report(step["id"], state, result=result, message=message).status_code == 200
            )
            backed_up += step["name"] == "backup"
        if backed_up == 2:
            break
    assert backed_up == 2
    answer = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/cancel", json={"reason": "not today"}
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["state"], answer.json()["outcome"]) == ("cancelled", "unchanged")
    again = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert_error(again, 409, "conflict")


def test_a_job_cancelled_with_its_sync_handed_out_says_to_check_read_only(
    live, pair, builds
) -> None:
    """The primary's agent took the sync and went away: the sync may have run, holding the
    primary read-only or leaving it read-write; the cancelled job says so, with the mode it
    had before and the command that sets it back."""
    job = _start(live, builds["router"])
    sync: Optional[dict[str, Any]] = None
    for _ in range(30):
        for node, agent in pair.items():
            step = agent.next()
            if step is None:
                continue
            if step["name"] == "ha_sync_packages":
                sync = step
                break
            state, result, message = _healthy(node, step)
            assert (
                agent.report(step["id"], state, result=result, message=message).status_code == 200
            )
        if sync is not None:
            break
    assert sync is not None, "the sync was never handed out"
    answer = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/cancel", json={"reason": "nso-a's agent host died"}
    )
    assert answer.status_code == 200, answer.text
    ended = answer.json()
    assert (ended["state"], ended["outcome"]) == ("cancelled", "needs_attention")
    error = ended["error"]
    assert "nso-a (ha_sync_packages, handed out: it may have run)" in error
    assert "was handed out on nso-a and may have run" in error
    assert "before the job it was read-only false" in error
    assert "'high-availability read-only mode false' on nso-a" in error
    assert f"'nso-repo job rollback {job['id']}'" in error


def _refused(live, body: dict[str, Any]) -> dict[str, Any]:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/groups/pair/package-upgrade", json=body
    )
    return assert_error(answer, 422, "preflight_failed")


def test_the_old_ned_goes_from_every_member_with_remove(live, pair, builds) -> None:
    """After a major NED upgrade: the primary deinstalls the old NED in the install step,
    and-reload (never and-add) takes it off the secondaries, and every member is verified
    without it."""
    answer = live.session("viewer").get(
        f"{live.url}/api/v1/groups/pair/package-plan",
        params={"packages": [builds["new-ned"]], "remove": ["router-nc"]},
    )
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    # Only a new NED is added, but a package goes: and-reload.
    assert plan["ok"] and plan["sync"] == "and-reload" and plan["remove"] == ["router-nc"], plan
    install = next(s for s in plan["steps"] if s["name"] == "install_packages")
    assert install["node"] == "nso-a" and install["params"]["remove"] == ["router-nc"]
    assert "software packages deinstall router-nc" in install["title"]
    gone = [{"name": "l3vpn", "version": "2.1"}, {"name": "switch-nc", "version": "1.0"}]
    verify = [s for s in plan["steps"] if s["name"] == "ha_verify_packages"]
    assert [(s["node"], s["params"]["packages"]) for s in verify] == [
        ("nso-a", gone),
        ("nso-b", gone),
    ]

    answer = live.session("operator").post(
        f"{live.url}/api/v1/groups/pair/package-upgrade", json={"remove": ["router-nc"]}
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["options"]["remove"] == ["router-nc"] and job["options"]["sync"] == "and-reload"
    assert job["options"]["before"] == LOADED and job["options"]["after"] == {"l3vpn": "2.1"}
    assert "prestage_packages" not in [s["name"] for s in job["steps"]]  # nothing to stage
    ended, handed = _drive(live, pair, job["id"], _healthy)
    assert ended["state"] == "succeeded", ended["error"]
    install = next(s for s in handed if s["name"] == "install_packages")
    assert install["node"] == "nso-a"
    assert install["params"] == {"packages": [], "remove": ["router-nc"]}
    sync = next(s for s in handed if s["name"] == "ha_sync_packages")
    # What the sync takes out: an agent that lost track of it waits for those to go.
    assert sync["params"]["sync"] == "and-reload" and sync["params"]["remove"] == ["router-nc"]
    verified = [
        (s["node"], s["params"]["packages"]) for s in handed if s["name"] == "ha_verify_packages"
    ]
    assert sorted(verified) == [
        (n, [{"name": "l3vpn", "version": "2.1"}]) for n in ("nso-a", "nso-b")
    ]


def test_a_removal_the_single_node_path_refuses_is_refused_and_nothing_starts(
    live, pair, builds
) -> None:
    for body, said in [
        ({"remove": ["nothing-here"]}, "nso-a does not run a package named nothing-here"),
        (
            {"packages": [builds["router"]], "remove": ["router-nc"]},
            "router-nc is both installed and removed",
        ),
        ({}, "no package was named"),
    ]:
        error = _refused(live, body)
        assert any(said in r for r in error["details"]["reasons"]), error
        plan = live.session("viewer").get(
            f"{live.url}/api/v1/groups/pair/package-plan", params=body
        )
        assert plan.status_code == 200 and not plan.json()["ok"], plan.text
        assert plan.json()["steps"] == []
    assert live.session("operator").get(f"{live.url}/api/v1/jobs").json() == []


def test_a_failed_install_with_a_removal_says_what_to_finish_by_hand(live, pair, builds) -> None:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/groups/pair/package-upgrade",
        json={"packages": [builds["new-ned"]], "remove": ["router-nc"]},
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()

    def install_fails(node: str, step: dict[str, Any]) -> Outcome:
        if step["name"] == "install_packages":
            return "failed", {}, "NSO CLI refused 'software packages deinstall ...'"
        return _healthy(node, step)

    ended, _ = _drive(live, pair, job["id"], install_fails)
    assert (ended["state"], ended["outcome"]) == ("failed", "needs_attention")
    error = ended["error"]
    assert "may link some of the new builds or no longer link router-nc" in error
    assert "'software packages install package ncs-6.2-switch-nc-1.0 replace-existing'" in error
    assert "'software packages deinstall package router-nc-1.0.2'" in error
    assert "then 'packages ha sync and-reload { wait-commit-queue-empty }'" in error


def test_the_cli_removes_a_package_from_the_group(live, pair, builds) -> None:
    shown = nso_repo(live, "viewer", "group", "package-plan", "pair", "--remove", "router-nc")
    assert shown.returncode == 0, shown.stderr
    assert "remove router-nc with packages ha sync and-reload: may proceed" in shown.stdout
    nothing = nso_repo(live, "operator", "group", "package-upgrade", "pair")
    assert nothing.returncode == 2 and "--remove" in nothing.stderr
    started = nso_repo(
        live, "operator", "group", "package-upgrade", "pair", "--remove", "router-nc"
    )
    assert started.returncode == 0, started.stderr
    job = live.session("viewer").get(f"{live.url}/api/v1/jobs/{started.stdout.strip()}").json()
    assert job["options"]["remove"] == ["router-nc"]


def test_a_plan_right_after_a_job_waits_for_every_members_inventory(live, pair, builds) -> None:
    """The reviewer's case: an and-add upgrade succeeds and the next package change is
    planned at once. The members' last inventories are from before the job (the new NED
    missing), so the plan would expect, and a removal would leave, the wrong set: refused,
    naming each member, until each has reported again."""
    job = _start(live, builds["new-ned"])
    done, _ = _drive(live, pair, job["id"], _healthy)
    assert done["state"] == "succeeded", done
    plan = _plan(live, builds["router"])
    assert not plan["ok"]
    behind = [
        r["message"]
        for v in plan["members"]
        for r in v["reasons"]
        if r["code"] == "inventory_behind"
    ]
    assert len(behind) == 2 and "nso-a's last inventory" in " ".join(behind)
    pair["nso-a"].heartbeat(_inventory("n1", True))
    pair["nso-b"].heartbeat(_inventory("n2", False))
    assert _plan(live, builds["router"])["ok"]


def test_a_ned_dry_run_since_does_not_stand_in_the_way_of_a_rollback(live, pair, builds) -> None:
    """The guide's order: add the new NED, dry-run the migration, and, reading it, decide
    against it. The dry-run changed nothing, so the NED's addition can still be rolled
    back; a real migration since refuses it, saying why and what to do instead."""
    from tests.upgrades.test_ned_migrations import result_for

    job = _start(live, builds["new-ned"])
    ended, _ = _drive(live, pair, job["id"], _healthy)
    assert ended["state"] == "succeeded", ended["error"]
    operator = live.session("operator")

    def migrate(**options: Any) -> dict[str, Any]:
        pair["nso-a"].heartbeat(_inventory("n1", True))
        pair["nso-b"].heartbeat(_inventory("n2", False))
        body = {"new_ned_id": "sw-1.0", "devices": ["r1"], **options}
        answer = operator.post(f"{live.url}/api/v1/nodes/nso-a/ned-migrations", json=body)
        assert answer.status_code == 202, answer.text
        step = pair["nso-a"].next()
        result = result_for(step, options["dry_run"])
        result["ned_migration"]["new_ned_id"] = "sw-1.0"
        for device in result["ned_migration"]["devices"]:
            device["new_ned_id"] = "sw-1.0"
        assert pair["nso-a"].report(step["id"], "succeeded", result=result).status_code == 200
        done = operator.get(f"{live.url}/api/v1/jobs/{answer.json()['id']}").json()
        assert done["state"] == "succeeded", done
        return done

    def rollback() -> Any:
        return operator.post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})

    migrate(dry_run=True)
    accepted = rollback()
    assert accepted.status_code == 202, accepted.text
    # Before the rollback runs, the operator thinks again: cancelled, it changed nothing.
    cancelled = operator.post(
        f"{live.url}/api/v1/jobs/{accepted.json()['id']}/cancel", json={"reason": "migrate"}
    )
    assert cancelled.status_code == 200, cancelled.text
    # A job ran since that dry-run: confirm a fresh one.
    migrate(dry_run=False, confirm=migrate(dry_run=True)["id"])
    said = assert_error(rollback(), 409, "conflict")["message"]
    assert "a migration is not rolled back" in said and "Move forward" in said


def test_a_member_takes_no_single_node_package_upgrade_even_with_ha_off(
    live, pair, tmp_path: Path
) -> None:
    """HA disabled by hand, or after a way back: still a member of its group, whose members
    run the same packages. A single-node change would make them drift."""
    from tests.upgrades.builders import healthy_inventory, upload_package

    inventory = healthy_inventory("6.2", {"router-nc": "1.0.2", "l3vpn": "2.1"})
    inventory["ha"] = {"enabled": False, "mode": "none", "current_id": None, "read_only": False}
    assert pair["nso-b"].heartbeat(inventory).status_code == 200
    build = upload_package(live, tmp_path, "router-nc", "1.0.3", "6.2")
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/nso-b/package-upgrade", json={"packages": [build]}
    )
    error = assert_error(answer, 422, "preflight_failed")
    assert [r["code"] for r in error["details"]["reasons"]] == ["group_member"]
    assert "group package-plan pair" in error["message"]


def test_a_later_upgrade_rolled_back_since_leaves_the_way_back_open(live, pair, builds) -> None:
    """A, then B, then B rolled back: A's rollback is the way back now. B (undone) and its
    rollback (an undo) do not stand in the way, as they do not for a single node."""

    def done(job_id: int) -> dict[str, Any]:
        ended, _ = _drive(live, pair, job_id, _healthy)
        assert ended["state"] == "succeeded", ended["error"]
        pair["nso-a"].heartbeat(_inventory("n1", True))
        pair["nso-b"].heartbeat(_inventory("n2", False))
        return ended

    first = done(_start(live, builds["router"])["id"])
    second = done(_start(live, builds["new-service"])["id"])
    operator = live.session("operator")
    undo = operator.post(f"{live.url}/api/v1/jobs/{second['id']}/rollback", json={})
    assert undo.status_code == 202, undo.text
    done(undo.json()["id"])
    again = operator.post(f"{live.url}/api/v1/jobs/{first['id']}/rollback", json={})
    assert again.status_code == 202, again.text


def test_a_later_job_cancelled_before_it_changed_anything_leaves_the_rollback_open(
    live, pair, builds
) -> None:
    """A later job cancelled before any member took a step (cancelled, unchanged) left the
    group as it was: it has no rollback of its own, so it must not stand in the way of
    the earlier job's."""
    first = _start(live, builds["router"])
    done, _ = _drive(live, pair, first["id"], _healthy)
    assert done["state"] == "succeeded", done["error"]
    pair["nso-a"].heartbeat(_inventory("n1", True))
    pair["nso-b"].heartbeat(_inventory("n2", False))
    second = _start(live, builds["new-service"])
    operator = live.session("operator")
    cancelled = operator.post(
        f"{live.url}/api/v1/jobs/{second['id']}/cancel", json={"reason": "wrong package"}
    )
    assert (cancelled.json()["state"], cancelled.json()["outcome"]) == ("cancelled", "unchanged")
    refused = operator.post(f"{live.url}/api/v1/jobs/{second['id']}/rollback", json={})
    assert_error(refused, 409, "conflict")
    back = operator.post(f"{live.url}/api/v1/jobs/{first['id']}/rollback", json={})
    assert back.status_code == 202, back.text


@pytest.mark.parametrize(
    "said",
    [
        {"read_only_before": False, "read_only": True},  # left read-only, and says so
        {"read_only_before": True, "read_only": True},  # says it found it read-only
    ],
    ids=["left-another-mode", "before-unlike-the-check"],
)
def test_a_sync_that_ends_in_another_mode_than_before_is_no_success(
    live, pair, builds, said
) -> None:
    """The primary was read-write before (its check read it so). A sync whose agent says it
    left the primary read-only is not taken for a success, however the verification that
    follows agrees with it: the group would stay read-only and nobody be told."""
    job = _start(live, builds["router"])

    def left_read_only(node: str, step: dict[str, Any]) -> Outcome:
        state, result, message = _healthy(node, step)
        if step["name"] == "ha_sync_packages":
            result = dict(said)
        if step["params"].get("survey"):
            result = {"loaded": _loaded(LOADED), "read_only": node == "nso-a"}
        elif step["name"] == "ha_verify_packages" and node == "nso-a":
            result = {**result, "read_only": True}
        return state, result, message

    ended, _ = _drive(live, pair, job["id"], left_read_only)
    assert (ended["state"], ended["outcome"]) == ("failed", "needs_attention"), ended
    sync = next(s for s in ended["steps"] if s["name"] == "ha_sync_packages")
    assert sync["state"] == "failed" and "before the sync" in sync["message"], sync
    assert "read-only true" in ended["error"], ended["error"]


def test_a_primary_left_read_only_by_a_job_that_needs_attention_is_no_mode_to_keep(
    live, pair, builds
) -> None:
    """A sync whose outcome is unknown left the primary read-only (read-write before). A
    new package change would read that mode as the one before it, keep it, succeed, and
    close the way back that ends read-write (the old job's rollback): it is refused until
    the old job is rolled back or the mode is set by hand."""
    job = _start(live, builds["router"])

    first, _ = _drive(live, pair, job["id"], _sync_unknown)
    assert first["outcome"] == "needs_attention", first
    pair["nso-a"].heartbeat(_inventory("n1", True, read_only=True))
    pair["nso-b"].heartbeat(_inventory("n2", False))
    operator = live.session("operator")
    plan = operator.get(
        f"{live.url}/api/v1/groups/pair/package-plan", params={"packages": [builds["router"]]}
    ).json()
    assert plan["ok"] is False
    assert any(
        f"job {job['id']} (ha_package_upgrade) needs attention and left nso-a read-only" in p
        for p in plan["problems"]
    ), plan["problems"]
    again = operator.post(
        f"{live.url}/api/v1/groups/pair/package-upgrade", json={"packages": [builds["router"]]}
    )
    assert (
        f"'nso-repo job rollback {job['id']}'"
        in assert_error(again, 422, "preflight_failed")["message"]
    )

    # Set read-write by hand: the next heartbeat says so, and the group may change again.
    pair["nso-a"].heartbeat(_inventory("n1", True))
    plan = operator.get(
        f"{live.url}/api/v1/groups/pair/package-plan", params={"packages": [builds["router"]]}
    ).json()
    assert plan["ok"] is True, plan


def test_a_rollback_that_left_the_primary_read_only_points_at_the_upgrade_to_roll_back(
    live, pair, builds
) -> None:
    """The same, when the job that left the primary read-only is a rollback (read-write
    when it began, its sync's outcome unknown): a rollback has no rollback, so the plan
    names the upgrade it undoes, to roll back again."""
    job = _start(live, builds["router"])
    ended, _ = _drive(live, pair, job["id"], _sync_unknown)
    assert ended["outcome"] == "needs_attention"
    answer = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert answer.status_code == 202, answer.text
    back, _ = _drive(live, pair, answer.json()["id"], _sync_unknown)
    assert back["outcome"] == "needs_attention", back
    pair["nso-a"].heartbeat(_inventory("n1", True, read_only=True))
    pair["nso-b"].heartbeat(_inventory("n2", False))
    plan = (
        live.session("operator")
        .get(f"{live.url}/api/v1/groups/pair/package-plan", params={"packages": [builds["router"]]})
        .json()
    )
    [said] = [p for p in plan["problems"] if "needs attention and left nso-a read-only" in p]
    assert f"job {back['id']} (ha_package_rollback)" in said
    assert f"Roll job {job['id']} back again ('nso-repo job rollback {job['id']}'" in said
    again = live.session("operator").post(f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={})
    assert again.status_code == 202, again.text


def test_a_patch_job_since_does_not_hide_a_primary_left_read_only(
    live, pair, builds, tmp_path: Path
) -> None:
    """A package upgrade left the primary read-only (its sync lost); a patch rolled out to
    the group since is the newest job on the members, but changed no mode: the plan of a
    new package change still names the package job and refuses."""
    from tests.api.helpers import put_file
    from tests.factories import make_patch_bundle

    job = _start(live, builds["router"])
    first, _ = _drive(live, pair, job["id"], _sync_unknown)
    assert first["outcome"] == "needs_attention", first

    def beat() -> None:
        pair["nso-a"].heartbeat(_inventory("n1", True, read_only=True))
        pair["nso-b"].heartbeat(_inventory("n2", False))

    beat()
    bundle = make_patch_bundle(tmp_path, "6.2", "CSCfix1", ("ncs_fix",))
    assert put_file(live.session("uploader"), live.url, bundle).status_code == 201
    operator = live.session("operator")
    started = operator.post(
        f"{live.url}/api/v1/patch-rollouts", json={"patch": bundle.name, "groups": ["pair"]}
    )
    assert started.status_code == 201, started.text
    for name in ("nso-b", "nso-a"):
        step = pair[name].next()
        assert step is not None and step["name"] == "apply_patch", (name, step)
        done = {"modules": ["ncs_fix"], "changed": True}
        assert pair[name].report(step["id"], "succeeded", result=done).status_code == 200
    beat()
    plan = operator.get(
        f"{live.url}/api/v1/groups/pair/package-plan", params={"packages": [builds["router"]]}
    ).json()
    assert plan["ok"] is False, plan
    left = f"job {job['id']} (ha_package_upgrade) needs attention and left nso-a read-only"
    assert any(left in p for p in plan["problems"]), plan["problems"]


def test_a_read_only_primary_is_planned_not_refused_by_a_server_error(live, pair, builds) -> None:
    """An operator holds the group read-only: the plan and the start still answer (the
    check for a primary left read-only by a failed job reads the members' jobs)."""
    pair["nso-a"].heartbeat(_inventory("n1", True, read_only=True))
    assert _plan(live, builds["router"])["ok"] is True
    _start(live, builds["router"])


def test_members_loading_other_packages_are_refused_naming_the_difference(
    live, pair, builds
) -> None:
    """A secondary loads switch-nc 0.9, which the primary does not: adding switch-nc 1.0 is
    no addition there (and-add would reload nothing), and any sync would give it the
    primary's packages unsaid. The plan refuses, naming the difference."""
    pair["nso-b"].heartbeat(
        _inventory("n2", False, packages=_loaded({**LOADED, "switch-nc": "0.9"}))
    )
    plan = _plan(live, builds["new-ned"])
    assert plan["ok"] is False, plan
    said = " ".join(plan["problems"])
    assert "nso-b loads other packages than the primary nso-a: switch-nc 0.9" in said, said
    refused = live.session("operator").post(
        f"{live.url}/api/v1/groups/pair/package-upgrade", json={"packages": [builds["new-ned"]]}
    )
    assert refused.status_code == 422, refused.text
    assert live.session("operator").get(f"{live.url}/api/v1/jobs").json() == []


def test_a_signed_file_named_like_a_ned_gets_the_full_reload(live, pair, tmp_path) -> None:
    """A signed NED file's content is not read at upload: only its name says NED. Its
    change is planned with and-reload, right whatever it holds, not the lighter and-add."""
    path = tmp_path / "ncs-6.2-l2vpn-1.0.signed.bin"
    path.write_bytes(b"not a NED at all")
    with path.open("rb") as body:
        put = live.session("uploader").put(f"{live.url}/api/v1/artifacts/{path.name}", data=body)
    assert put.status_code == 201, put.text
    plan = _plan(live, path.name)
    assert plan["sync"] == "and-reload", plan


def test_members_differing_only_in_time_during_a_job_are_not_told_to_sync(
    live, pair, builds
) -> None:
    """While a job holds the members (the primary reported its new build, the secondary
    not yet), the plan says to wait for that job, not to run a sync by hand."""
    _start(live, builds["router"])
    pair["nso-a"].heartbeat(
        _inventory("n1", True, packages=_loaded({**LOADED, "router-nc": "1.0.3"}))
    )
    plan = _plan(live, builds["new-service"])
    assert plan["ok"] is False
    said = json.dumps(plan)
    assert "is still running on" in said and "loads other packages" not in said, said


def test_a_later_job_that_changed_nothing_does_not_hide_a_primary_left_read_only(
    live, pair, builds, app_state
) -> None:
    """After the package job that left the primary read-only, a job failed having changed
    nothing (NSO refused a NED migration on the read-only node): the plan still names the
    package job."""
    from repo_server.fleet.models import Node
    from repo_server.upgrades.models import Job

    job = _start(live, builds["router"])
    first, _ = _drive(live, pair, job["id"], _sync_unknown)
    assert first["outcome"] == "needs_attention", first
    with app_state.sessions() as session:
        node = session.query(Node).filter_by(name="nso-a").one()
        session.add(
            Job(
                nodes=[node],
                kind="ned_migration",
                state="failed",
                outcome="unchanged",
                created_by="test",
            )
        )
        session.commit()
    pair["nso-a"].heartbeat(_inventory("n1", True, read_only=True))
    pair["nso-b"].heartbeat(_inventory("n2", False))
    plan = _plan(live, builds["router"])
    assert plan["ok"] is False, plan
    assert any(
        f"job {job['id']} (ha_package_upgrade) needs attention" in p for p in plan["problems"]
    )
