"""The fleet: nodes with their last reported inventory, and one-time enrollment tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from repo_server.auth.models import ACTOR_MAX
from repo_server.db import Base, utcnow

# A node's agent token is named AGENT_NAME_FORMAT.format(node name), and what the agent does
# is audited as "agent:<token name>": the longest node name whose actor fits.
AGENT_NAME_FORMAT = "node:{}"
NODE_NAME_MAX = ACTOR_MAX - len("agent:" + AGENT_NAME_FORMAT.format(""))


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    hostname: Mapped[Optional[str]] = mapped_column(String(255), default=None)
    agent_version: Mapped[Optional[str]] = mapped_column(String(64), default=None)
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    enrolled_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    inventory_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    # The inventory's running_version, kept beside it so the fleet listing filters on it.
    running_version: Mapped[Optional[str]] = mapped_column(String(64), default=None, index=True)
    # True once a heartbeat checked against the inventory schema stored the inventory:
    # preflight then need not check it again (None: stored before heartbeats were checked).
    inventory_checked: Mapped[Optional[bool]] = mapped_column(default=None)
    # The release a fleet rollout assigned to the node (rollouts/): what it should run.
    assigned_version: Mapped[Optional[str]] = mapped_column(String(64), default=None)
    # The operator's labels, for selecting nodes in rollouts (None on nodes older than them).
    labels: Mapped[Optional[list[str]]] = mapped_column(default=list)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[Optional[datetime]] = mapped_column(default=None)
