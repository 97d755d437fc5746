"""Small blobs handed out inside the step that names them.

An emergency patch bundle is a few kilobytes. Fetching it costs each agent a second
request, and the server a second authenticated request per node, while the fleet waits for
the patch. So a step's artifact reference of at most INLINE_MAX_BYTES also carries the
blob itself, base64 in ``content_base64``. The agent checks it exactly as it checks a
download: the announced size and sha256 (docs/agent-protocol.md, "Blobs in the step").
The step is its node's only, and only blobs of live artifacts ride in it, so this hands out
nothing the node could not download.

Blobs are content-addressed and never change under their digest, so the encoded ones are
kept in a small cache: a rollout to 1,000 nodes reads the bundle from storage once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections import OrderedDict
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.catalog.models import Artifact, Blob
from repo_server.errors import StorageError
from repo_server.storage.base import Storage
from repo_server.upgrades.step_payloads import artifact_refs, is_artifact_ref

INLINE_MAX_BYTES = 64 << 10
# What one step carries in all: a prestage of many small packages stays far below the
# agent's limit on an answer (16 MiB); the rest is downloaded.
STEP_BUDGET_BYTES = 1 << 20
CACHE_BYTES = 8 << 20  # encoded bytes kept across steps: a hundred-odd bundles

_cache: OrderedDict[str, str] = OrderedDict()
_cached_bytes = 0
_lock = threading.Lock()


def with_inline_blobs(
    payload: dict[str, Any], storage: Storage, session: Session
) -> dict[str, Any]:
    """The step payload with ``content_base64`` in each artifact reference small enough, up
    to STEP_BUDGET_BYTES in all, of a live artifact only: a blob deleted from the catalog
    (a bad patch pulled mid-rollout) is not handed out this way either. Ends the session's
    transaction before storage is read."""
    live = live_blobs(session, [payload])
    if not live:
        return payload
    session.rollback()  # nothing is held while storage is read (S3: a request)
    return inline(payload, live, storage)


def live_blobs(session: Session, payloads: list[dict[str, Any]]) -> set[str]:
    """The sha256 of the small blobs these steps name that belong to live artifacts: one
    query for them all (agents claiming together, upgrades/batched.py), none without any."""
    wanted = {ref["sha256"] for payload in payloads for ref in _small_refs(payload)}
    if not wanted:
        return set()
    return set(
        session.scalars(
            select(Blob.sha256)
            .join(Artifact, Artifact.blob_id == Blob.id)
            .where(Blob.sha256.in_(wanted), Artifact.deleted_at.is_(None))
        )
    )


def _small_refs(payload: dict[str, Any]) -> list[dict[str, Any]]:
    params = payload.get("params")
    return [r for r in artifact_refs(params) if _small_ref(r)] if isinstance(params, dict) else []


def inline(payload: dict[str, Any], live: set[str], storage: Storage) -> dict[str, Any]:
    """The payload with the blobs of ``live`` (`live_blobs`) it names inside; never fails:
    a blob storage cannot give is left out, and downloaded."""
    if not _small_refs(payload):
        return payload
    budget = [STEP_BUDGET_BYTES]

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        if not _small_ref(value):
            return {key: walk(item) for key, item in value.items()}
        if value["sha256"] not in live or value["size"] > budget[0]:
            return value  # downloaded, with the download's own checks and answers
        encoded = _encoded(storage, value["sha256"], value["size"])
        if encoded is None:
            return value
        budget[0] -= value["size"]
        return {**value, "content_base64": encoded}

    return {**payload, "params": walk(payload["params"])}


def _small_ref(value: dict[str, Any]) -> bool:
    size = value.get("size")
    return (
        is_artifact_ref(value)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and 0 <= size <= INLINE_MAX_BYTES
    )


def _encoded(storage: Storage, digest: str, size: int) -> Optional[str]:
    """The blob, base64, when storage holds exactly the announced bytes; None otherwise
    (the agent then downloads it, and gets the download's own error)."""
    global _cached_bytes
    with _lock:
        hit = _cache.get(digest)
        if hit is not None:
            _cache.move_to_end(digest)
            return hit
    try:
        with storage.open(digest) as blob:
            data = blob.read(INLINE_MAX_BYTES + 1)
    except (FileNotFoundError, StorageError, OSError):
        return None
    if len(data) != size or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
        return None
    encoded = base64.b64encode(data).decode("ascii")
    with _lock:
        if digest not in _cache:
            _cache[digest] = encoded
            _cached_bytes += len(encoded)
        while _cached_bytes > CACHE_BYTES and _cache:
            _, dropped = _cache.popitem(last=False)
            _cached_bytes -= len(dropped)
    return encoded
