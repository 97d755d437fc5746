"""`nso-repo gc`: unreferenced blobs go after the protection window; live ones stay."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from repo_server.catalog.gc import collect_garbage
from repo_server.catalog.models import Artifact
from repo_server.db import utcnow
from tests.api.helpers import put_file
from tests.factories import make_installer, make_package


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_gc_removes_only_unreferenced_old_blobs(
    storage_backend, live, app_state, tmp_path: Path
) -> None:
    keep = make_package(tmp_path)
    drop = make_installer(tmp_path, "6.2")
    http = live.session("uploader")
    keep_sha = put_file(http, live.url, keep).json()["sha256"]
    drop_sha = put_file(http, live.url, drop).json()["sha256"]
    assert (
        live.session("admin").delete(f"{live.url}/api/v1/artifacts/{drop.name}").status_code == 200
    )

    # An orphan: bytes in storage with no row, as a crash between store and commit leaves.
    orphan = tmp_path / "orphan"
    orphan_bytes = b"orphaned bytes"
    orphan.write_bytes(orphan_bytes)
    orphan_sha = hashlib.sha256(orphan_bytes).hexdigest()
    app_state.storage.put_file(orphan_sha, orphan)

    with app_state.sessions() as session:
        # Inside the window nothing goes.
        early = collect_garbage(session, app_state.storage, protect_seconds=3600, actor="test")
        assert early.removed == [] and early.orphans_removed == []
        assert app_state.storage.exists(drop_sha)

        dry = collect_garbage(
            session,
            app_state.storage,
            protect_seconds=3600,
            actor="test",
            dry_run=True,
            now=utcnow() + timedelta(hours=2),
        )
        assert dry.removed == [drop_sha] and app_state.storage.exists(drop_sha)

        report = collect_garbage(
            session,
            app_state.storage,
            protect_seconds=3600,
            actor="test",
            now=utcnow() + timedelta(hours=2),
        )
        assert report.removed == [drop_sha]
        assert report.orphans_removed == [orphan_sha]
        assert report.bytes_freed == drop.stat().st_size + len(orphan_bytes)
        dropped = session.scalar(select(Artifact).where(Artifact.filename == drop.name))
        assert dropped is not None and dropped.blob_id is None and dropped.deleted

    assert not app_state.storage.exists(drop_sha)
    assert not app_state.storage.exists(orphan_sha)
    assert app_state.storage.exists(keep_sha)
    assert (
        live.session("viewer").get(f"{live.url}/api/v1/blobs/{keep_sha}").content
        == keep.read_bytes()
    )
    # The deleted name is still reserved after its bytes are gone.
    assert put_file(http, live.url, drop).status_code == 409
    events = (
        live.session("admin").get(f"{live.url}/api/v1/audit", params={"action": "blob.gc"}).json()
    )
    assert events and events[0]["details"]["removed"] == [drop_sha]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_gc_steps_refuse_blobs_an_upload_claimed_meanwhile(live, app_state, tmp_path: Path) -> None:
    """gc decides from a listing, then removes each blob under its row lock: an upload that
    reused the bytes in between must win, whichever order the two commit in."""
    from sqlalchemy import exists as sql_exists

    from repo_server.catalog.gc import _remove_blob, _remove_orphan
    from repo_server.catalog.models import Blob

    first = make_installer(tmp_path, "6.2")
    sha = put_file(live.session("uploader"), live.url, first).json()["sha256"]
    live.session("admin").delete(f"{live.url}/api/v1/artifacts/{first.name}")
    with app_state.sessions() as session:
        blob = session.scalar(select(Blob).where(Blob.sha256 == sha))
        assert blob is not None
    # The listing said "unreferenced"; now the same bytes are published under a new name.
    again = tmp_path / "nso-6.2.linux.x86_64.signed.bin"
    again.write_bytes(first.read_bytes())
    assert put_file(live.session("uploader"), live.url, again).status_code == 201
    live_ref = sql_exists().where(Artifact.blob_id == Blob.id, Artifact.deleted_at.is_(None))
    with app_state.sessions() as session:
        far = utcnow() + timedelta(days=3)
        assert _remove_blob(session, app_state.storage, blob, far, live_ref) is False
        # A file whose digest has a row is no orphan, even if a listing said so.
        assert _remove_orphan(session, app_state.storage, sha, blob.size) is False
    assert app_state.storage.exists(sha)
    assert (
        live.session("viewer").get(f"{live.url}/api/v1/blobs/{sha}").content == first.read_bytes()
    )
