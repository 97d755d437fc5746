"""Fleet rollouts, their targets, and the maintenance windows that gate them.

A rollout assigns one release to a selection of the fleet. Each standalone node, and each
HA group as a whole, is one target; targets are put in waves (a canary first, then
cumulative percentages) and the driver (rollouts/driver.py) starts their jobs wave by wave
inside the targets' maintenance windows. All of it lives in the database: a restarted
server, or another server process, carries on where the last one stopped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.db import Base, utcnow
from repo_server.upgrades.job_states import state_check

ROLLOUT_STATES = ("running", "paused", "cancelled", "succeeded", "incomplete")
ROLLOUT_ACTIVE = ("running", "paused")
# refused: preflight refused the target (its reasons say why); it is not attempted and not
# counted in its wave's thresholds until a retry plans it again.
TARGET_STATES = ("pending", "running", "succeeded", "failed", "refused", "cancelled")
TARGET_OPEN = ("pending", "running")
TARGET_KINDS = ("node", "group")


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="RESTRICT"))
    target_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="running")
    # What the operator asked for, as given: the selection and the options below.
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    canary: Mapped[int] = mapped_column(Integer, default=0)
    # Cumulative percentages of the targets after the canary, the last one 100.
    waves: Mapped[list[int]] = mapped_column(default=list)
    success_threshold: Mapped[int] = mapped_column(Integer, default=100)
    error_threshold: Mapped[int] = mapped_column(Integer, default=0)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    # How long a target's job may take: none starts in a window closing sooner.
    job_minutes: Mapped[int] = mapped_column(Integer, default=60)
    write_policy: Mapped[str] = mapped_column(String(16), default="safe")
    # Nodes and groups that must run the release before any target starts.
    gates: Mapped[list[str]] = mapped_column(default=list)
    # The highest wave whose targets may start.
    wave: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[Optional[str]] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    finished_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    # Bumped by every change: the UPDATE that bumps it is the rollout's row lock.
    revision: Mapped[int] = mapped_column(Integer, default=0)

    targets: Mapped[list[RolloutTarget]] = relationship(
        back_populates="rollout", order_by="RolloutTarget.position", cascade="all, delete-orphan"
    )

    __table_args__ = (
        CheckConstraint(state_check(ROLLOUT_STATES), name="state"),
        Index("ix_rollouts_state", "state"),
    )


class RolloutTarget(Base):
    __tablename__ = "rollout_targets"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    wave: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    node_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), default=None
    )
    group_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("ha_groups.id", ondelete="CASCADE"), default=None
    )
    name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    job_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Why the target is not on the release yet, in words (a window, preflight, a failure).
    reason: Mapped[Optional[str]] = mapped_column(Text, default=None)
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    rollout: Mapped[Rollout] = relationship(back_populates="targets")

    __table_args__ = (
        UniqueConstraint("rollout_id", "position", name="uq_rollout_targets_position"),
        CheckConstraint(state_check(TARGET_STATES), name="state"),
        CheckConstraint("kind IN ('node', 'group')", name="kind"),
        CheckConstraint("(node_id IS NULL) <> (group_id IS NULL)", name="one_subject"),
        Index("ix_rollout_targets_node_id", "node_id"),
        Index("ix_rollout_targets_group_id", "group_id"),
        Index("ix_rollout_targets_job_id", "job_id"),
        Index("ix_rollout_targets_state", "state"),
    )


class MaintenanceWindow(Base):
    """A weekly window in which work may start on a node or on an HA group."""

    __tablename__ = "maintenance_windows"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), default=None
    )
    group_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("ha_groups.id", ondelete="CASCADE"), default=None
    )
    days: Mapped[str] = mapped_column(String(32))  # "mon,tue,...": the days it opens
    start: Mapped[str] = mapped_column(String(5))  # "HH:MM", local time
    minutes: Mapped[int] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    __table_args__ = (
        CheckConstraint("(node_id IS NULL) <> (group_id IS NULL)", name="one_subject"),
        CheckConstraint("minutes > 0 AND minutes <= 10080", name="minutes"),
        Index("ix_maintenance_windows_node_id", "node_id"),
        Index("ix_maintenance_windows_group_id", "group_id"),
    )
