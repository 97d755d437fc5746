"""HA groups: the rule-based HA clusters of the fleet, as the operator describes them.

A group lists its members (nodes), each with the HA node id NSO knows it by, its nominal
role, and whether it is the failover-primary. A node belongs to at most one group (the
unique member node). What the members' heartbeats say of their HA state is checked against
this description when a group is registered and before every group upgrade
(fleet/groups.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repo_server.db import Base, utcnow
from repo_server.fleet.models import Node

NOMINAL_ROLES = ("primary", "secondary")


class HaGroup(Base):
    __tablename__ = "ha_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    members: Mapped[list[HaGroupMember]] = relationship(
        back_populates="group", order_by="HaGroupMember.position", cascade="all, delete-orphan"
    )

    @property
    def primary(self) -> HaGroupMember:
        return next(m for m in self.members if m.nominal_role == "primary")

    @property
    def failover(self) -> HaGroupMember:
        """The secondary that takes over (and is upgraded second)."""
        return next(m for m in self.members if m.failover_primary)

    @property
    def others(self) -> list[HaGroupMember]:
        """The non-failover secondaries (the guide's "third node"), in the order given."""
        return [m for m in self.members if m.nominal_role == "secondary" and not m.failover_primary]


class HaGroupMember(Base):
    __tablename__ = "ha_group_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("ha_groups.id", ondelete="CASCADE"))
    # RESTRICT: a node leaves its group first (nso-repo group rm), never silently.
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="RESTRICT"), unique=True)
    ha_id: Mapped[str] = mapped_column(String(128))
    nominal_role: Mapped[str] = mapped_column(String(16))
    failover_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    position: Mapped[int] = mapped_column(Integer)

    group: Mapped[HaGroup] = relationship(back_populates="members")
    node: Mapped[Node] = relationship()

    __table_args__ = (
        UniqueConstraint("group_id", "ha_id", name="uq_ha_group_members_ha_id"),
        CheckConstraint("nominal_role IN ('primary', 'secondary')", name="nominal_role"),
        CheckConstraint(
            "NOT failover_primary OR nominal_role = 'secondary'", name="failover_is_secondary"
        ),
    )
