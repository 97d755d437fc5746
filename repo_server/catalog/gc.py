"""`nso-repo gc`: remove blobs that nothing references any more.

A blob is garbage when no live (not deleted) artifact points at it and it is older than the
protection window. The window covers uploads in flight: a blob lands in storage a moment
before its rows commit, and a crash between the two leaves a stored file with no row at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import exists, select, update
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
    dry_run: bool = False


def collect_garbage(
    session: Session,
    storage: Storage,
    *,
    protect_seconds: int,
    actor: str,
    dry_run: bool = False,
    now: Optional[datetime] = None,
) -> GcReport:
    now = now or utcnow()
    cutoff = now - timedelta(seconds=protect_seconds)
    report = GcReport(dry_run=dry_run)
    live = exists().where(Artifact.blob_id == Blob.id, Artifact.deleted_at.is_(None))
    unreferenced = list(session.scalars(select(Blob).where(~live).order_by(Blob.id)))
    for blob in unreferenced:
        if blob.created_at > cutoff:
            report.kept_recent += 1
            continue
        report.removed.append(blob.sha256)
        report.bytes_freed += blob.size
        if dry_run:
            continue
        session.execute(update(Artifact).where(Artifact.blob_id == blob.id).values(blob_id=None))
        session.delete(blob)
        # Rows go first: a crash after the commit leaves an orphan file that the next run
        # removes, never a row pointing at a missing file.
        session.commit()
        storage.delete(blob.sha256)

    known = set(session.scalars(select(Blob.sha256)))
    for info in storage.iter_blobs():
        if info.digest in known or info.digest in report.removed:
            continue
        if info.modified > cutoff:
            report.kept_recent += 1
            continue
        report.orphans_removed.append(info.digest)
        report.bytes_freed += info.size
        if not dry_run:
            storage.delete(info.digest)

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
