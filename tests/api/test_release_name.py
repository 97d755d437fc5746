"""An admin releases the reserved name of a deleted artifact (audited), so a squatted name is
not blocked forever; nobody else may."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.helpers import assert_error, put_file
from tests.factories import make_package
from tests.support.processes import clean_env


def release(live, role: str | None, filename: str):
    http = live.session(role)
    return http.post(f"{live.url}/api/v1/artifacts/{filename}/release-name")


def squatted(live, tmp_path: Path) -> tuple[Path, Path]:
    """A name published by someone with bytes of theirs, then deleted: reserved."""
    first = tmp_path / "first"
    first.mkdir()
    squat = make_package(first, payload=b"the squatter's bytes")
    assert put_file(live.session("uploader"), live.url, squat).status_code == 201
    deleted = live.session("admin").delete(f"{live.url}/api/v1/artifacts/{squat.name}")
    assert deleted.status_code == 200
    second = tmp_path / "second"
    second.mkdir()
    return squat, make_package(second, payload=b"the real build")


def test_admin_releases_a_reserved_name_and_it_can_be_uploaded_again(live, tmp_path: Path):
    squat, real = squatted(live, tmp_path)
    uploader = live.session("uploader")
    reserved = assert_error(put_file(uploader, live.url, real), 409, "name_reserved")
    assert f"nso-repo release-name {squat.name}" in reserved["message"]

    answer = release(live, "admin", squat.name)
    assert answer.status_code == 200, answer.text
    kept = answer.json()
    assert kept["deleted"] is True
    assert kept["filename"] == f"released-{kept['id']}-{squat.name}"
    assert kept["meta"]["released_name"] == squat.name
    assert kept["sha256"] == hashlib.sha256(squat.read_bytes()).hexdigest()

    again = put_file(uploader, live.url, real)
    assert again.status_code == 201, again.text
    assert again.json()["sha256"] == hashlib.sha256(real.read_bytes()).hexdigest()
    assert again.json()["id"] != kept["id"]
    shown = live.session("viewer").get(f"{live.url}/api/v1/artifacts/{squat.name}").json()
    assert shown["id"] == again.json()["id"] and shown["deleted"] is False

    events = live.session("admin").get(f"{live.url}/api/v1/audit").json()
    released = [e for e in events if e["action"] == "artifact.release_name"]
    assert len(released) == 1
    assert released[0]["target"] == f"artifact:{squat.name}"
    assert released[0]["actor"] == "admin:test-admin"
    assert released[0]["details"]["sha256"] == kept["sha256"]
    assert released[0]["details"]["kept_as"] == kept["filename"]


@pytest.mark.parametrize("role", ["uploader", "operator", "viewer", "agent"])
def test_only_an_admin_may_release_a_name(live, tmp_path: Path, role: str):
    squat, real = squatted(live, tmp_path)
    error = assert_error(release(live, role, squat.name), 403, "forbidden")
    assert "admin" in error["message"]
    assert_error(put_file(live.session("uploader"), live.url, real), 409, "name_reserved")


def test_anonymous_release_is_refused(live, tmp_path: Path):
    squat, _real = squatted(live, tmp_path)
    assert_error(release(live, None, squat.name), 401, "unauthenticated")


def test_a_live_or_unknown_name_is_not_released(live, tmp_path: Path):
    path = make_package(tmp_path)
    assert put_file(live.session("uploader"), live.url, path).status_code == 201
    error = assert_error(release(live, "admin", path.name), 409, "conflict")
    assert "nso-repo rm" in error["message"]
    assert_error(release(live, "admin", "ncs-6.2-nothing-1.0.tar.gz"), 404, "not_found")
    events = live.session("admin").get(f"{live.url}/api/v1/audit").json()
    assert not [e for e in events if e["action"] == "artifact.release_name"]


def test_release_name_through_the_cli(live, tmp_path: Path):
    squat, real = squatted(live, tmp_path)
    env = clean_env(NSO_REPO_URL=live.url, NSO_REPO_TOKEN=live.tokens["admin"])
    result = subprocess.run(
        [sys.executable, "-m", "repo_server.cli", "release-name", squat.name],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"released the name {squat.name}" in result.stdout
    assert put_file(live.session("uploader"), live.url, real).status_code == 201
