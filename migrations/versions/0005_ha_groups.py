"""HA groups: the fleet's rule-based HA clusters and their members; step batches (steps
that run at the same time on different nodes of a job).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from repo_server.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ha_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ha_groups"),
        sa.UniqueConstraint("name", name="uq_ha_groups_name"),
    )
    op.create_table(
        "ha_group_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("ha_id", sa.String(length=128), nullable=False),
        sa.Column("nominal_role", sa.String(length=16), nullable=False),
        sa.Column("failover_primary", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ha_group_members"),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["ha_groups.id"],
            name="fk_ha_group_members_group_id_ha_groups",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name="fk_ha_group_members_node_id_nodes",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("node_id", name="uq_ha_group_members_node_id"),
        sa.UniqueConstraint("group_id", "ha_id", name="uq_ha_group_members_ha_id"),
        sa.CheckConstraint(
            "nominal_role IN ('primary', 'secondary')",
            name=op.f("ck_ha_group_members_nominal_role"),
        ),
        sa.CheckConstraint(
            "NOT failover_primary OR nominal_role = 'secondary'",
            name=op.f("ck_ha_group_members_failover_is_secondary"),
        ),
    )


    op.add_column("steps", sa.Column("batch", sa.Integer(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35 has it): batch mode would copy the steps table,
    # and dropping the old one cascades to step_reports.
    op.drop_column("steps", "batch")
    op.drop_table("ha_group_members")
    op.drop_table("ha_groups")
