"""`nso-repo gc`: remove blobs that nothing references any more.

A blob is garbage when no live (not deleted) artifact points at it and it is older than the
protection window. The window covers uploads in flight: a blob lands in storage a moment
before its rows commit, and a crash between the two leaves a stored file with no row at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repo_server.auth.service import audit
from repo_server.catalog.models import Artifact, Blob
from repo_server.db import utcnow
from repo_server.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_recent: int = 0
    temp_files_removed: int = 0
    dry_run: bool = False


def collect_garbage(
    session: Session,
    storage: Storage,
    *,
    protect_seconds: int,
    actor: str,
    tmp_dir: Optional[Path] = None,
    dry_run: bool = False,
    now: Optional[datetime] = None,
) -> GcReport:
    now = now or utcnow()
    cutoff = now - timedelta(seconds=protect_seconds)
    report = GcReport(dry_run=dry_run)
    live = exists().where(Artifact.blob_id == Blob.id, Artifact.deleted_at.is_(None))
    unreferenced = list(session.scalars(select(Blob).where(~live).order_by(Blob.id)))
    session.rollback()
    for blob in unreferenced:
        if blob.last_used_at > cutoff:
            report.kept_recent += 1
            continue
        if dry_run:
            report.removed.append(blob.sha256)
            report.bytes_freed += blob.size
            continue
        if _remove_blob(session, storage, blob, cutoff, live):
            report.removed.append(blob.sha256)
            report.bytes_freed += blob.size

    known = set(session.scalars(select(Blob.sha256)))
    session.rollback()
    for info in storage.iter_blobs():
        if info.digest in known or info.digest in report.removed:
            continue
        if info.modified > cutoff:
            report.kept_recent += 1
            continue
        if dry_run or _remove_orphan(session, storage, info.digest, info.size):
            report.orphans_removed.append(info.digest)
            report.bytes_freed += info.size

    if tmp_dir is not None:
        report.temp_files_removed = _sweep_temp(tmp_dir, cutoff, dry_run)

    if not dry_run and (report.removed or report.orphans_removed):
        audit(
            session,
            actor,
            "blob.gc",
            "blobs",
            removed=report.removed,
            orphans_removed=report.orphans_removed,
            bytes_freed=report.bytes_freed,
        )
        session.commit()
    log.info(
        "gc: %d blobs, %d orphans, %d bytes%s",
        len(report.removed),
        len(report.orphans_removed),
        report.bytes_freed,
        " (dry run)" if dry_run else "",
    )
    return report


def _remove_blob(
    session: Session, storage: Storage, blob: Blob, cutoff: datetime, live: Any
) -> bool:
    """Delete the row, then the file, then commit: the row's lock is held throughout.

    An upload reusing these bytes bumps `last_used_at` under the same lock, so the guarded
    DELETE below finds nothing to delete and the file stays. A live artifact committed in
    between makes the DELETE fail on the RESTRICT foreign key.
    """
    try:
        session.execute(
            update(Artifact)
            .where(Artifact.blob_id == blob.id, Artifact.deleted_at.is_not(None))
            .values(blob_id=None)
        )
        gone = session.execute(
            delete(Blob).where(Blob.id == blob.id, Blob.last_used_at <= cutoff, ~live)
        )
        if gone.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            return False
        storage.delete(blob.sha256)
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False


def _remove_orphan(session: Session, storage: Storage, digest: str, size: int) -> bool:
    """Claim the digest with a row of our own before deleting a file no row names.

    An upload that stores the same bytes inserts that row too; the unique index makes one of
    the two wait for the other, so the file is never deleted under a committing upload.
    """
    try:
        claim = Blob(sha256=digest, size=size)
        session.add(claim)
        session.flush()
        storage.delete(digest)
        session.delete(claim)
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False


def _sweep_temp(tmp_dir: Path, cutoff: datetime, dry_run: bool) -> int:
    """Upload temp files left by a killed worker, once older than the window."""
    removed = 0
    if not tmp_dir.is_dir():
        return 0
    for path in tmp_dir.iterdir():
        if not path.name.startswith("upload-") or not path.is_file():
            continue
        if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) > cutoff:
            continue
        removed += 1
        if not dry_run:
            path.unlink(missing_ok=True)
    return removed
