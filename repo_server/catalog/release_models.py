"""Release manifests: an NSO version, its installer and the exact package set for it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.catalog.models import Artifact
from repo_server.db import Base, utcnow

release_packages = Table(
    "release_packages",
    Base.metadata,
    Column("release_id", ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True),
    Column("artifact_id", ForeignKey("artifacts.id", ondelete="RESTRICT"), primary_key=True),
)


class Release(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(primary_key=True)
    nso_version: Mapped[str] = mapped_column(String(64), unique=True)
    version_key: Mapped[str] = mapped_column(String(512))
    installer_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="RESTRICT"))
    # {"java": "17", "glibc": "2.28", "min_source_version": "5.7", "min_free_bytes": ...}
    requirements: Mapped[dict[str, Any]] = mapped_column(default=dict)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    installer: Mapped[Artifact] = relationship(foreign_keys=[installer_id])
    packages: Mapped[list[Artifact]] = relationship(
        secondary=release_packages, order_by=Artifact.name
    )
    signatures: Mapped[list[ReleaseSignature]] = relationship(
        back_populates="release",
        cascade="all, delete-orphan",
        order_by="ReleaseSignature.signed_at",
    )


class ReleaseSignature(Base):
    """A release manager's Ed25519 signature over the release's canonical manifest
    (repo_server/catalog/release_manifest.py), one per signing key. The server checks it
    when it is uploaded but can never make one: the private key stays off the server."""

    __tablename__ = "release_signatures"

    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True
    )
    # sha256 of the raw public key, hex: what an agent looks its own key up by.
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)  # PEM, for `nso-repo release verify` output
    signature: Mapped[str] = mapped_column(String(128))  # base64 of the 64 bytes
    # sha256 of the manifest bytes the signature was checked over when it was uploaded.
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(default=utcnow)
    signed_by: Mapped[str] = mapped_column(String(128))

    release: Mapped[Release] = relationship(back_populates="signatures")
