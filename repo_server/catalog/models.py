"""Catalog tables: content-addressed blobs and the artifacts that name them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.db import Base, utcnow

ARTIFACT_KINDS = ("installer", "package", "ned", "patch")


class Blob(Base):
    __tablename__ = "blobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped under the row's lock by every upload that reuses the blob and every delete of
    # an artifact naming it; gc only removes blobs untouched for the protection window.
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # The digest is the storage key: a malformed one must never reach the backend.
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex").ddl_if(
            dialect="postgresql"
        ),
        CheckConstraint(
            "length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'", name="sha256_hex"
        ).ddl_if(dialect="sqlite"),
        CheckConstraint("size >= 0", name="size_positive"),
    )


class Artifact(Base):
    """A published file. Immutable once created; a soft delete keeps the name reserved."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    filename: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(128))
    version_key: Mapped[str] = mapped_column(String(512))
    nso_version: Mapped[str] = mapped_column(String(64))
    nso_version_key: Mapped[str] = mapped_column(String(512))
    nso_branch: Mapped[str] = mapped_column(String(32))
    arch: Mapped[Optional[str]] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    # Kept while the artifact is live; `nso-repo gc` clears it when it removes the blob of a
    # deleted artifact, while the row (and so the reserved name and digest) stays. RESTRICT:
    # a blob row can never vanish from under a live artifact, whatever races gc.
    blob_id: Mapped[Optional[int]] = mapped_column(ForeignKey("blobs.id", ondelete="RESTRICT"))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    uploaded_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    deleted_by: Mapped[Optional[str]] = mapped_column(String(128), default=None)

    blob: Mapped[Optional[Blob]] = relationship()

    __table_args__ = (
        CheckConstraint(
            "kind IN ({})".format(", ".join(f"'{k}'" for k in ARTIFACT_KINDS)), name="kind_known"
        ),
        Index("ix_artifacts_kind_name", "kind", "name"),
        Index("ix_artifacts_kind_branch", "kind", "nso_branch"),
        Index("ix_artifacts_blob_id", "blob_id"),
        Index("ix_artifacts_sha256", "sha256"),
    )

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None
