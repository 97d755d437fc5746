"""Patch rollouts: one operator's request to apply (or remove) a patch bundle on a set of
nodes, and the jobs it started (one per standalone node, one per HA group)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, String, Table
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.db import Base, utcnow
from repo_server.upgrades.models import Job

ACTIONS = ("apply", "remove")

# The jobs of a rollout; a job belongs to one rollout at most.
patch_rollout_jobs = Table(
    "patch_rollout_jobs",
    Base.metadata,
    Column("rollout_id", ForeignKey("patch_rollouts.id", ondelete="CASCADE"), primary_key=True),
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_patch_rollout_jobs_job_id", "job_id", unique=True),
)


class PatchRollout(Base):
    __tablename__ = "patch_rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    # RESTRICT: the bundle a rollout used stays catalogued (a delete keeps the row anyway).
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="RESTRICT"))
    filename: Mapped[str] = mapped_column(String(255))
    patch_id: Mapped[str] = mapped_column(String(128))
    nso_version: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    # What the operator asked for: {"nodes": [...], "groups": [...], "all_affected": bool}.
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    jobs: Mapped[list[Job]] = relationship(secondary=patch_rollout_jobs, order_by=Job.id)

    __table_args__ = (
        CheckConstraint(
            "action IN ({})".format(", ".join(f"'{a}'" for a in ACTIONS)), name="action"
        ),
        Index("ix_patch_rollouts_filename", "filename"),
    )
