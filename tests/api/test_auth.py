"""Tokens, roles, soft delete and the audit trail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.helpers import assert_error, put_file, snapshot
from tests.factories import make_installer, make_package


def test_missing_and_wrong_tokens(live, app_state, tmp_path: Path) -> None:
    path = make_package(tmp_path)
    before = snapshot(app_state)
    assert_error(put_file(live.session(None), live.url, path), 401, "unauthenticated")
    bad = live.session(None)
    bad.headers["Authorization"] = "Bearer nsr_not-a-real-token"
    assert_error(put_file(bad, live.url, path), 401, "unauthenticated")
    basic = live.session(None)
    basic.headers["Authorization"] = "Basic YWRtaW46YWRtaW4="
    assert_error(basic.get(f"{live.url}/api/v1/artifacts"), 401, "unauthenticated")
    assert snapshot(app_state) == before


@pytest.mark.parametrize("role", ["viewer", "operator", "agent"])
def test_read_only_roles_cannot_upload(role, live, app_state, tmp_path: Path) -> None:
    path = make_package(tmp_path)
    before = snapshot(app_state)
    error = assert_error(put_file(live.session(role), live.url, path), 403, "forbidden")
    assert "uploader" in error["message"]
    assert snapshot(app_state) == before
    assert live.session(role).get(f"{live.url}/api/v1/artifacts").status_code == 200


def test_only_admin_manages_tokens_and_deletes(live, tmp_path: Path) -> None:
    path = make_installer(tmp_path)
    put_file(live.session("uploader"), live.url, path)
    for role in ("uploader", "operator", "viewer", "agent"):
        http = live.session(role)
        assert_error(http.get(f"{live.url}/api/v1/tokens"), 403, "forbidden")
        assert_error(http.delete(f"{live.url}/api/v1/artifacts/{path.name}"), 403, "forbidden")


def test_token_lifecycle_over_api(live) -> None:
    admin = live.session("admin")
    created = admin.post(f"{live.url}/api/v1/tokens", json={"name": "ci", "role": "uploader"})
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    assert secret.startswith("nsr_")
    listed = admin.get(f"{live.url}/api/v1/tokens").json()
    assert all("token" not in t and "token_hash" not in t for t in listed)
    ci = live.session(None)
    ci.headers["Authorization"] = f"Bearer {secret}"
    assert ci.get(f"{live.url}/api/v1/artifacts").status_code == 200
    revoked = admin.delete(f"{live.url}/api/v1/tokens/{created.json()['id']}")
    assert revoked.json()["active"] is False
    assert_error(ci.get(f"{live.url}/api/v1/artifacts"), 401, "unauthenticated")
    actions = [e["action"] for e in admin.get(f"{live.url}/api/v1/audit").json()]
    assert "token.create" in actions and "token.revoke" in actions
    assert_error(
        admin.post(f"{live.url}/api/v1/tokens", json={"name": "x", "role": "root"}),
        422,
        "validation_failed",
    )


def test_soft_delete_hides_and_reserves_name(live, app_state, tmp_path: Path) -> None:
    path = make_package(tmp_path)
    uploaded = put_file(live.session("uploader"), live.url, path).json()
    admin = live.session("admin")
    deleted = admin.delete(f"{live.url}/api/v1/artifacts/{path.name}")
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    listing = admin.get(f"{live.url}/api/v1/artifacts").json()
    assert listing["total"] == 0
    with_deleted = admin.get(
        f"{live.url}/api/v1/artifacts", params={"include_deleted": "true"}
    ).json()
    assert [i["filename"] for i in with_deleted["items"]] == [path.name]
    # Same name, same bytes or not: the name stays reserved.
    assert_error(put_file(live.session("uploader"), live.url, path), 409, "name_reserved")
    assert_error(admin.get(f"{live.url}/api/v1/blobs/{uploaded['sha256']}"), 404, "not_found")
    events = admin.get(f"{live.url}/api/v1/audit", params={"action": "artifact.delete"}).json()
    assert events[0]["target"] == f"artifact:{path.name}"
    assert events[0]["actor"] == "admin:test-admin"
    # The bytes stay until gc runs past the protection window.
    assert app_state.storage.exists(uploaded["sha256"])


def test_cli_role_list_matches_the_model() -> None:
    from repo_server.auth.models import ROLES
    from repo_server.cli.server_cmds import ROLES as CLI_ROLES

    assert CLI_ROLES == ROLES
