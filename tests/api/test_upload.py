"""Upload by PUT and multipart POST; idempotence, conflicts, kinds, audit."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from repo_server.catalog.gc import collect_garbage
from repo_server.db import utcnow
from tests.api.helpers import assert_error, put_file, snapshot
from tests.factories import make_installer, make_package, make_patch_bundle


def test_put_package_stores_metadata_and_blob(live, app_state, tmp_path: Path) -> None:
    path = make_package(tmp_path, "router-nc", "1.0.2", "6.2", ned_id="router-nc-1.0")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    http = live.session("uploader")
    response = put_file(http, live.url, path, **{"X-Checksum-SHA256": digest})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "package"
    assert (body["name"], body["version"], body["nso_version"]) == ("router-nc", "1.0.2", "6.2")
    assert body["sha256"] == digest
    assert body["size"] == path.stat().st_size
    assert body["meta"]["ned_ids"] == ["router-nc-1.0"]
    assert response.headers["Location"].endswith(f"/api/v1/artifacts/{path.name}")
    assert app_state.storage.exists(digest)
    stored = app_state.storage.local_path(digest)
    assert stored is not None and stored.read_bytes() == path.read_bytes()


def test_same_name_same_bytes_is_200_and_no_second_blob(live, app_state, tmp_path: Path) -> None:
    path = make_installer(tmp_path, "6.2")
    http = live.session("uploader")
    first = put_file(http, live.url, path)
    assert first.status_code == 201
    before = snapshot(app_state)
    again = put_file(http, live.url, path)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert snapshot(app_state) == before


def test_same_name_other_bytes_is_409_and_changes_nothing(live, app_state, tmp_path: Path) -> None:
    path = make_package(tmp_path, payload=b"first build")
    http = live.session("uploader")
    assert put_file(http, live.url, path).status_code == 201
    before = snapshot(app_state)
    other = tmp_path / "other"
    other.mkdir()
    rebuilt = make_package(other, payload=b"second build, other bytes")
    error = assert_error(put_file(http, live.url, rebuilt), 409, "artifact_exists")
    assert error["details"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert snapshot(app_state) == before


def test_same_bytes_under_two_names_share_one_blob(live, app_state, tmp_path: Path) -> None:
    http = live.session("uploader")
    a = make_installer(tmp_path, "6.2")
    b = tmp_path / "nso-6.2.linux.x86_64.signed.bin"
    b.write_bytes(a.read_bytes())
    assert put_file(http, live.url, a).status_code == 201
    assert put_file(http, live.url, b).status_code == 201
    assert len(snapshot(app_state)["blobs"]) == 1


def test_multipart_post_with_checksum(live, tmp_path: Path) -> None:
    path = make_patch_bundle(tmp_path, "6.2", "PSIRT-7", modules=("ncs_fix", "ncs_cdb_fix"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    http = live.session("uploader")
    with path.open("rb") as f:
        response = http.post(
            f"{live.url}/api/v1/artifacts", files={"file": (path.name, f)}, data={"sha256": digest}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "patch"
    assert body["name"] == "PSIRT-7"
    assert sorted(body["meta"]["modules"]) == ["ncs_cdb_fix", "ncs_fix"]
    with path.open("rb") as f:
        again = http.post(f"{live.url}/api/v1/artifacts", files={"file": (path.name, f)})
    assert again.status_code == 200


def test_multipart_checksum_mismatch_leaves_nothing(live, app_state, tmp_path: Path) -> None:
    path = make_installer(tmp_path)
    before = snapshot(app_state)
    with path.open("rb") as f:
        response = live.session("uploader").post(
            f"{live.url}/api/v1/artifacts",
            files={"file": (path.name, f)},
            data={"sha256": "0" * 64},
        )
    assert_error(response, 400, "checksum_mismatch")
    assert snapshot(app_state) == before


def test_installer_kinds_and_arch(live, tmp_path: Path) -> None:
    path = make_installer(tmp_path, "6.1.2.1")
    body = put_file(live.session("admin"), live.url, path).json()
    assert (body["kind"], body["version"], body["arch"], body["nso_branch"]) == (
        "installer",
        "6.1.2.1",
        "x86_64",
        "6.1",
    )


def test_upload_writes_audit_event(live, tmp_path: Path) -> None:
    path = make_package(tmp_path)
    put_file(live.session("uploader"), live.url, path)
    events = live.session("admin").get(f"{live.url}/api/v1/audit").json()
    uploads = [e for e in events if e["action"] == "artifact.upload"]
    assert len(uploads) == 1
    assert uploads[0]["target"] == f"artifact:{path.name}"
    assert uploads[0]["actor"] == "uploader:test-uploader"


def test_concurrent_uploads_of_one_name_store_one_artifact(live, app_state, tmp_path: Path) -> None:
    """Racing uploads under one name: one wins (201); same bytes get 200, other bytes 409."""
    from concurrent.futures import ThreadPoolExecutor

    builds = []
    for i in range(6):
        folder = tmp_path / f"b{i}"
        folder.mkdir()
        # Three identical builds and three with other bytes, all under the same file name.
        builds.append(
            make_package(folder, payload=b"same" if i % 2 == 0 else f"other {i}".encode())
        )

    def upload(path: Path) -> int:
        return put_file(live.session("uploader"), live.url, path).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(upload, builds))
    assert statuses.count(201) == 1, statuses
    winner = builds[statuses.index(201)]
    same_as_winner = [b.read_bytes() == winner.read_bytes() for b in builds]
    for status, same in zip(statuses, same_as_winner):
        assert status in ((200, 201) if same else (409,)), statuses
    state = snapshot(app_state)
    winner_sha = hashlib.sha256(winner.read_bytes()).hexdigest()
    assert state["artifacts"] == [winner.name]
    assert state["blobs"] == [winner_sha]
    # Losers may have stored their bytes before losing; they are never deleted in the request
    # path (another upload may rely on them) but gc removes them after the window.
    assert winner_sha in state["stored"]
    with app_state.sessions() as session:
        collect_garbage(
            session,
            app_state.storage,
            protect_seconds=60,
            actor="test",
            now=utcnow() + timedelta(minutes=5),
        )
    assert snapshot(app_state)["stored"] == [winner_sha]


def test_a_put_labelled_as_a_form_is_stored_whole(live, tmp_path: Path) -> None:
    """`curl -X PUT --data-binary @FILE` says application/x-www-form-urlencoded: the body is
    still the file's bytes, never parsed as a form (the console's form checks stay on the
    console's own routes)."""
    path = make_installer(tmp_path, "6.2")
    answer = put_file(
        live.session("uploader"),
        live.url,
        path,
        **{"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["size"] == path.stat().st_size
