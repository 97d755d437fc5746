"""API tokens and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from repo_server.db import Base, utcnow

ROLES = ("admin", "uploader", "operator", "viewer", "agent")
# Who did a thing, as the audit log and every created_by column keep it: "<role>:<token
# name>" (Principal.actor), in String(ACTOR_MAX) columns. Names are bounded so that every
# actor fits: PostgreSQL refuses a longer value (and the change it records with it).
ACTOR_MAX = 128
TOKEN_NAME_MAX = ACTOR_MAX - 1 - max(len(role) for role in ROLES)


class ApiToken(Base):
    """A bearer token. Only the sha256 of the secret is stored; the secret is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    last_used_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    revoked_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    # Set on the token an agent got at enrollment: it speaks for that node only.
    node_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), default=None
    )

    __table_args__ = (
        CheckConstraint(
            "role IN ({})".format(", ".join(f"'{r}'" for r in ROLES)), name="role_known"
        ),
    )

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(ACTOR_MAX))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (Index("ix_audit_events_at", "at"),)
