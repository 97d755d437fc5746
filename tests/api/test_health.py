"""`/api/v1/health`: anonymous callers learn up or down, nothing more; admins and operators
also get the version and each check."""

from __future__ import annotations

import shutil

import pytest

from repo_server import __version__


def _health(live, role=None, token=None):
    http = live.session(role)
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    return http.get(f"{live.url}/api/v1/health")


def test_anonymous_health_says_up_and_nothing_more(live) -> None:
    answer = _health(live)
    assert answer.status_code == 200
    assert answer.json() == {"status": "up"}
    assert __version__ not in answer.text
    # A token that does not authenticate changes nothing: health keeps answering probes.
    assert _health(live, token="nsr_not-a-real-token").json() == {"status": "up"}


@pytest.mark.parametrize("role", ["uploader", "viewer", "agent"])
def test_other_roles_get_the_anonymous_answer(live, role) -> None:
    assert _health(live, role).json() == {"status": "up"}


@pytest.mark.parametrize("role", ["admin", "operator"])
def test_admins_and_operators_get_details(live, role) -> None:
    body = _health(live, role).json()
    assert body == {
        "status": "up",
        "version": __version__,
        "checks": {"database": "ok", "storage": "ok"},
    }


def test_down_says_down_and_details_say_why(live, app_state) -> None:
    shutil.rmtree(app_state.settings.resolved_storage_dir)
    answer = _health(live)
    assert answer.status_code == 503
    assert answer.json() == {"status": "down"}
    detailed = _health(live, "admin")
    assert detailed.status_code == 503
    checks = detailed.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["storage"].startswith("error: blob folder")
