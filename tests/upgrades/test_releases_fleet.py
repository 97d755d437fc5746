"""Release manifests, node registration and enrollment, heartbeat."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.api.helpers import assert_error, put_file
from tests.factories import make_installer, make_package
from tests.upgrades.builders import healthy_inventory, publish_release


def test_release_manifest_is_checked_whole(live, tmp_path: Path) -> None:
    uploader = live.session("uploader")
    files = [
        make_installer(tmp_path, "6.2"),
        make_package(tmp_path, "router-nc", "1.0.2", "6.1"),
        make_package(tmp_path, "l3vpn", "2.1", "6.2", requires=("resource-manager",)),
    ]
    for path in files:
        assert put_file(uploader, live.url, path).status_code == 201
    answer = live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={
            "nso_version": "6.3",
            "installer": files[0].name,
            "packages": [files[1].name, files[2].name, "ncs-6.2-missing-1.0.tar.gz"],
        },
    )
    error = assert_error(answer, 422, "validation_failed")
    assert "not in the catalog" in error["message"]
    answer = live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={
            "nso_version": "6.2",
            "installer": files[0].name,
            "packages": [f.name for f in files[1:]],
        },
    )
    error = assert_error(answer, 422, "validation_failed")
    problems = error["details"]["problems"]
    assert any("built for NSO 6.1" in p for p in problems)
    assert any("requires package resource-manager" in p for p in problems)


def test_release_lifecycle(live, tmp_path: Path) -> None:
    release = publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2"}, java="17")
    assert release["branch"] == "6.2"
    assert release["package_names"] == {"router-nc": "1.0.2"}
    assert release["requirements"] == {"java": "17"}
    got = live.session("viewer").get(f"{live.url}/api/v1/releases/6.2").json()
    assert got["installer"] == "nso-6.2.linux.x86_64.installer.bin"
    again = live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={"nso_version": "6.2", "installer": got["installer"], "packages": got["packages"]},
    )
    exists = assert_error(again, 409, "release_exists")
    # No way out it does not have: a release is never deleted; newer builds need none.
    assert "delete it" not in exists["message"] and "upgrade-packages" in exists["message"]
    assert_error(
        live.session("uploader").post(
            f"{live.url}/api/v1/releases", json={"nso_version": "6.3", "installer": "x"}
        ),
        403,
        "forbidden",
    )


def test_enrollment_is_one_time_and_heartbeat_records_inventory(live) -> None:
    operator = live.session("operator")
    added = operator.post(f"{live.url}/api/v1/nodes", json={"name": "edge-9"}).json()
    secret = added["enrollment_token"]
    first = requests.post(f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": secret})
    assert first.status_code == 201
    token = first.json()["token"]
    assert_error(
        requests.post(f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": secret}),
        401,
        "enrollment_refused",
    )
    agent = {"Authorization": f"Bearer {token}"}
    beat = requests.post(
        f"{live.url}/api/v1/agent/heartbeat",
        json={"inventory": healthy_inventory("6.1")},
        headers=agent,
    )
    assert beat.status_code == 200, beat.text
    node = operator.get(f"{live.url}/api/v1/nodes/edge-9").json()
    assert node["inventory"]["running_version"] == "6.1"
    assert node["last_seen_at"] is not None
    # The agent token speaks only the agent protocol, and only for its node.
    assert_error(requests.get(f"{live.url}/api/v1/nodes", headers=agent), 403, "forbidden")
    # Re-enrolling a rebuilt host revokes the old agent token.
    renewed = operator.post(f"{live.url}/api/v1/nodes/edge-9/enrollment-token").json()[
        "enrollment_token"
    ]
    assert (
        requests.post(
            f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": renewed}
        ).status_code
        == 201
    )
    assert_error(
        requests.post(f"{live.url}/api/v1/agent/heartbeat", json={"inventory": {}}, headers=agent),
        401,
        "unauthenticated",
    )
    # Ordinary tokens cannot use agent endpoints.
    assert_error(live.session("admin").get(f"{live.url}/api/v1/agent/next"), 403, "forbidden")


def test_requirements_that_are_not_figures_are_refused_not_a_server_error(
    live, tmp_path: Path
) -> None:
    # schemathesis never reaches this: its runs have no installer to define a release with.
    installer = make_installer(tmp_path, "6.2")
    assert put_file(live.session("uploader"), live.url, installer).status_code == 201
    operator = live.session("operator")
    bad = [
        {"min_free_bytes": "abc"},
        {"min_free_bytes": "12"},
        {"min_free_bytes": -5},
        {"min_free_bytes": True},
        {"min_free_bytes": 1.5},
        {"min_free_bytes": 1 << 70},
        {"java": "\u0661\u0667"},  # Arabic-Indic "17"
    ]
    for requirements in bad:
        answer = operator.post(
            f"{live.url}/api/v1/releases",
            json={"nso_version": "6.2", "installer": installer.name, "requirements": requirements},
        )
        error = assert_error(answer, 422, "validation_failed")
        assert error["details"]["field"].startswith("requirements.")
    # 1e999 is infinity to a JSON parser: refused before it reaches the release.
    answer = operator.post(
        f"{live.url}/api/v1/releases",
        data=f'{{"nso_version": "6.2", "installer": "{installer.name}", '
        '"requirements": {"min_free_bytes": 1e999}}',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code in (400, 422), answer.text
    good = operator.post(
        f"{live.url}/api/v1/releases",
        json={
            "nso_version": "6.2",
            "installer": installer.name,
            "requirements": {"min_free_bytes": 1 << 30, "java": "17"},
        },
    )
    assert good.status_code == 201, good.text
    assert good.json()["requirements"] == {"min_free_bytes": 1 << 30, "java": "17"}
