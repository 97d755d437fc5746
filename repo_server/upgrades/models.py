"""Jobs and their steps: the state the agent protocol advances.

A job is one change to one node (an NSO upgrade, a package upgrade, a rollback); its steps
run in `seq` order on that node. Step reports are kept by `report_id` so a retried report
changes nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.db import Base, utcnow
from repo_server.fleet.models import Node

JOB_ACTIVE = ("queued", "running")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
STEP_STATES = ("pending", "dispatched", "running", "succeeded", "failed", "skipped")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # upgrade | package_upgrade | rollback
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # rolled_back | needs_attention | None: what a failed job left the node in.
    outcome: Mapped[Optional[str]] = mapped_column(String(32), default=None)
    source_version: Mapped[Optional[str]] = mapped_column(String(64), default=None)
    target_version: Mapped[Optional[str]] = mapped_column(String(64), default=None)
    release_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("releases.id", ondelete="RESTRICT"), default=None
    )
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Results of finished steps (backup file, fingerprint...), handed to later steps.
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[Optional[str]] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    finished_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    # Bumped by every state change: the UPDATE that bumps it is the row lock (see service).
    revision: Mapped[int] = mapped_column(Integer, default=0)

    node: Mapped[Node] = relationship()
    steps: Mapped[list[Step]] = relationship(
        back_populates="job", order_by="Step.seq", cascade="all, delete-orphan"
    )

    __table_args__ = (Index("ix_jobs_node_state", "node_id", "state"),)

    @property
    def active(self) -> bool:
        return self.state in JOB_ACTIVE

    @property
    def node_name(self) -> str:
        return self.node.name


class Step(Base):
    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[Optional[str]] = mapped_column(Text, default=None)
    log_tail: Mapped[Optional[str]] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    finished_at: Mapped[Optional[datetime]] = mapped_column(default=None)
    # Seconds the agent says it spent waiting on NSO's own commands (for the overhead bench).
    nso_seconds: Mapped[Optional[float]] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="steps")

    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_steps_job_seq"),)


class StepReport(Base):
    __tablename__ = "step_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)
