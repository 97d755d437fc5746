"""Package-only upgrade of a single node: preflight, steps, recovery of the package links."""

from __future__ import annotations

from pathlib import Path

from tests.api.helpers import assert_error, put_file
from tests.factories import make_package
from tests.upgrades.builders import BACKUP_FILE, agent_result, healthy_inventory, nso_repo


def _publish(live, tmp_path: Path, *specs: tuple[str, str, str]) -> list[str]:
    names = []
    for name, version, nso in specs:
        folder = tmp_path / f"{name}-{version}-{nso}"
        folder.mkdir()
        path = make_package(folder, name, version, nso)
        assert put_file(live.session("uploader"), live.url, path).status_code == 201
        names.append(path.name)
    return names


def _request(live, packages: list[str], **extra):
    return live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/package-upgrade", json={"packages": packages, **extra}
    )


def test_package_upgrade_steps_and_data_loss_flag(live, enrolled, tmp_path: Path) -> None:
    enrolled.heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.2"}))
    (new_build,) = _publish(live, tmp_path, ("router-nc", "1.0.3", "6.2"))
    answer = _request(live, [new_build])
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "package_upgrade"
    assert [s["name"] for s in job["steps"]] == [
        "prestage_packages",
        "backup",
        "install_packages",
        "reload_packages",
        "verify_packages",
    ]
    first = enrolled.next()
    assert first["params"]["packages"][0]["name"] == "router-nc"
    assert first["params"]["packages"][0]["version"] == "1.0.3"
    while (step := enrolled.next()) is not None and step["name"] != "reload_packages":
        enrolled.report(step["id"], "succeeded", result=agent_result(step))
    assert step is not None and step["params"]["allow_data_loss"] is False
    # What the reload is to load: the agent judges a reload whose answer was lost by it.
    assert [(p["name"], p["version"]) for p in step["params"]["packages"]] == [
        ("router-nc", "1.0.3")
    ]
    enrolled.report(
        step["id"], "failed", message="Error: The following namespaces will be deleted by upgrade"
    )
    recover = enrolled.next()
    assert recover["name"] == "recover_packages" and recover["params"]["backup_file"] == BACKUP_FILE
    enrolled.report(recover["id"], "succeeded")
    final = live.session("viewer").get(f"{live.url}/api/v1/jobs/{job['id']}").json()
    assert (final["state"], final["outcome"]) == ("failed", "rolled_back")
    assert "namespaces will be deleted" in final["error"]


def test_package_upgrade_preflight(live, enrolled, tmp_path: Path) -> None:
    enrolled.heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.2"}))
    wrong_release, same, twice = _publish(
        live,
        tmp_path,
        ("router-nc", "1.0.3", "6.1"),
        ("router-nc", "1.0.2", "6.2"),
        ("router-nc", "1.0.4", "6.2"),
    )
    error = assert_error(_request(live, [wrong_release, same, twice]), 422, "preflight_failed")
    codes = sorted(r["code"] for r in error["details"]["reasons"])
    assert codes == ["package_release", "package_same", "package_twice", "package_twice"]
    assert_error(_request(live, ["ncs-6.2-nothing-1.0.tar.gz"]), 422, "validation_failed")


def test_a_plan_waits_for_the_inventory_after_the_last_job(live, enrolled, tmp_path) -> None:
    """Right after a package upgrade ends, the node's last inventory is from before it: a
    plan built on it would start from packages the node no longer runs (and a later
    package set would leave out, and delete, what the job added). Refused until the next
    heartbeat, as an NSO upgrade's and an HA group's."""
    enrolled.heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.2", "l3vpn": "2.1"}))
    first, second = _publish(live, tmp_path, ("router-nc", "1.0.3", "6.2"), ("l3vpn", "2.2", "6.2"))
    job = _request(live, [first]).json()
    while (step := enrolled.next()) is not None:
        assert enrolled.report(step["id"], "succeeded", result=agent_result(step)).ok
    done = live.session("viewer").get(f"{live.url}/api/v1/jobs/{job['id']}").json()
    assert done["state"] == "succeeded"

    error = assert_error(_request(live, [second]), 422, "preflight_failed")
    (reason,) = error["details"]["reasons"]
    assert reason["code"] == "inventory_behind"
    assert "edge-1's last inventory was sent before its last step ended" in reason["message"]
    assert "wait for its next heartbeat" in reason["remedy"]

    enrolled.heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.3", "l3vpn": "2.1"}))
    assert _request(live, [second]).status_code == 202


def test_a_package_plan_shows_what_the_upgrade_would_do_and_starts_nothing(
    live, enrolled, tmp_path: Path
) -> None:
    """`GET /nodes/NAME/package-plan` (and `nso-repo node package-plan`): the verdict the
    upgrade would meet, with the same reasons, and its steps; no job, no hold."""
    enrolled.heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.2"}))
    new_build, wrong_release = _publish(
        live, tmp_path, ("router-nc", "1.0.3", "6.2"), ("router-nc", "1.0.4", "6.1")
    )
    viewer = live.session("viewer")
    plan = viewer.get(
        f"{live.url}/api/v1/nodes/edge-1/package-plan",
        params={"packages": [new_build], "allow_data_loss": "true"},
    )
    assert plan.status_code == 200, plan.text
    shown = plan.json()
    assert shown["ok"] is True and shown["packages"] == [new_build] and shown["remove"] == []
    names = [s["name"] for s in shown["steps"]]
    assert names[-3:] == ["install_packages", "reload_packages", "verify_packages"]
    assert shown["steps"][names.index("reload_packages")]["params"]["allow_data_loss"] is True

    refused = viewer.get(
        f"{live.url}/api/v1/nodes/edge-1/package-plan", params={"packages": [wrong_release]}
    ).json()
    error = assert_error(_request(live, [wrong_release]), 422, "preflight_failed")
    assert refused["ok"] is False
    assert refused["reasons"] == error["details"]["reasons"]
    assert live.session("viewer").get(f"{live.url}/api/v1/jobs").json() == []

    printed = nso_repo(live, "viewer", "node", "package-plan", "edge-1", "--package", new_build)
    assert printed.returncode == 0, printed.stderr
    assert f"edge-1: {new_build}: may proceed" in printed.stdout
    assert "reload_packages" in printed.stdout
    printed = nso_repo(live, "viewer", "node", "package-plan", "edge-1", "--remove", "router-nc")
    assert printed.returncode in (0, 1) and "edge-1: remove router-nc:" in printed.stdout
    assert live.session("viewer").get(f"{live.url}/api/v1/jobs").json() == []


def test_a_ned_build_with_a_new_ned_id_does_not_replace_the_loaded_one(
    live, enrolled, tmp_path: Path
) -> None:
    """router-nc 1.0.2 provides ned-id router-nc-1.0. A 2.0 build of the same package with
    ned-id router-nc-2.0 would leave the devices without their NED: refused, with the way
    (beside, migrate, remove). A build keeping the ned-id, and the new NED under its own
    name, may proceed."""
    builds = {}
    for name, version, ned_id in (
        ("router-nc", "1.0.2", "router-nc-1.0"),
        ("router-nc", "2.0", "router-nc-2.0"),
        ("router-nc", "1.0.3", "router-nc-1.0"),
        ("router-nc2", "2.0", "router-nc-2.0"),
    ):
        folder = tmp_path / f"{name}-{version}"
        folder.mkdir()
        path = make_package(folder, name, version, "6.2", ned_id=ned_id)
        assert put_file(live.session("uploader"), live.url, path).status_code == 201
        builds[(name, version)] = path.name
    enrolled.heartbeat(healthy_inventory("6.2", {"router-nc": "1.0.2"}))

    error = assert_error(_request(live, [builds["router-nc", "2.0"]]), 422, "preflight_failed")
    (reason,) = [r for r in error["details"]["reasons"] if r["code"] == "ned_id_changed"]
    assert "router-nc-1.0" in reason["message"] and "router-nc-2.0" in reason["message"]
    assert "beside" in reason["remedy"] and "nso-repo ned migrate" in reason["remedy"]
    viewer = live.session("viewer")
    assert viewer.get(f"{live.url}/api/v1/jobs").json() == []

    for kept in (builds["router-nc", "1.0.3"], builds["router-nc2", "2.0"]):
        plan = viewer.get(f"{live.url}/api/v1/nodes/edge-1/package-plan", params={"packages": kept})
        assert plan.status_code == 200, plan.text
        assert plan.json()["ok"] is True, plan.json()["reasons"]
