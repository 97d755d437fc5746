"""Jobs and their steps: the state the agent protocol advances.

A job is one change (an NSO upgrade, a package upgrade, a rollback) to a set of nodes
(`job_nodes`), which it holds exclusively while it is active: `node_holds` has one row per
held node, keyed by the node, so the database itself refuses a second active job on a node.
Each step is bound to one node of its job; the steps run in `seq` order across the whole job
(the steps of one `batch` at the same time on their nodes).
Step reports are kept by `report_id` so a retried report changes nothing twice. The states
and their moves are in `job_states`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.db import Base, utcnow
from repo_server.fleet.models import Node
from repo_server.upgrades.job_states import JOB_ACTIVE, JOB_STATES, STEP_STATES, state_check

# Which nodes a job changes, whether or not it is still active.
job_nodes = Table(
    "job_nodes",
    Base.metadata,
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("node_id", ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_job_nodes_node_id", "node_id"),
)


class NodeHold(Base):
    """A node held by an active job: the primary key on the node is the exclusivity."""

    __tablename__ = "node_holds"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
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

    nodes: Mapped[list[Node]] = relationship(secondary=job_nodes, order_by=Node.id)
    # Present exactly while the job is active (job_states.transition lets them go).
    holds: Mapped[list[NodeHold]] = relationship(cascade="all, delete-orphan")
    steps: Mapped[list[Step]] = relationship(
        back_populates="job", order_by="Step.seq", cascade="all, delete-orphan"
    )

    __table_args__ = (CheckConstraint(state_check(JOB_STATES), name="state"),)

    @property
    def active(self) -> bool:
        return self.state in JOB_ACTIVE

    @property
    def node_name(self) -> str:
        """The job's node; the nodes, comma-separated, of a job that spans several."""
        return ",".join(node.name for node in self.nodes)

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]


class Step(Base):
    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # The node whose agent runs the step: one of the job's nodes.
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="RESTRICT"))
    seq: Mapped[int] = mapped_column(Integer)
    # Steps of one batch (consecutive in seq) run at the same time on different nodes, each
    # node's in seq order; a step without a batch runs alone. HA upgrades batch the members'
    # pre-staging and backups, and the secondary's moves while the primary upgrades.
    batch: Mapped[Optional[int]] = mapped_column(Integer, default=None)
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
    node: Mapped[Node] = relationship()

    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_steps_job_seq"),
        CheckConstraint(state_check(STEP_STATES), name="state"),
        Index("ix_steps_node_state", "node_id", "state"),
        # The metrics' steps of the last day (observability.py).
        Index("ix_steps_finished_at", "finished_at"),
    )


class StepReport(Base):
    __tablename__ = "step_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)
