"""Assertions shared by the API tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from repo_server.catalog.models import Artifact, Blob
from repo_server.context import AppState


def snapshot(state: AppState) -> dict[str, Any]:
    """What a rejected upload must leave untouched: stored files, temp files, catalog rows."""
    storage_dir = state.settings.resolved_storage_dir
    with state.sessions() as session:
        blobs = sorted(session.scalars(select(Blob.sha256)))
        artifacts = sorted(session.scalars(select(Artifact.filename)))
    return {
        "stored": sorted(b.digest for b in state.storage.iter_blobs()),
        "files": sorted(str(p.relative_to(storage_dir)) for p in storage_dir.rglob("*"))
        if storage_dir.exists()
        else [],
        "tmp": sorted(p.name for p in Path(state.settings.tmp_dir).iterdir()),
        "blobs": blobs,
        "artifacts": artifacts,
    }


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert len(body["error"]["message"]) > 20, body  # says what to do, not just a word
    return body["error"]


def put_file(http: requests.Session, url: str, path: Path, **headers: str) -> requests.Response:
    with path.open("rb") as f:
        return http.put(f"{url}/api/v1/artifacts/{path.name}", data=f, headers=headers)
