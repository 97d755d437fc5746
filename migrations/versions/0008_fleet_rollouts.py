"""Fleet rollouts: rollouts, their targets, maintenance windows; the release a rollout
assigned to each node, the operator's labels of nodes, and whether a checked heartbeat
stored a node's inventory; an index on steps.finished_at (the metrics).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

import repo_server.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("days", sa.String(length=32), nullable=False),
        sa.Column("start", sa.String(length=5), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("created_at", repo_server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.CheckConstraint(
            "(node_id IS NULL) <> (group_id IS NULL)",
            name=op.f("ck_maintenance_windows_one_subject"),
        ),
        sa.CheckConstraint(
            "minutes > 0 AND minutes <= 10080", name=op.f("ck_maintenance_windows_minutes")
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["ha_groups.id"],
            name=op.f("fk_maintenance_windows_group_id_ha_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_maintenance_windows_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_windows")),
    )
    with op.batch_alter_table("maintenance_windows", schema=None) as batch_op:
        batch_op.create_index("ix_maintenance_windows_group_id", ["group_id"], unique=False)
        batch_op.create_index("ix_maintenance_windows_node_id", ["node_id"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("target_version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("canary", sa.Integer(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("success_threshold", sa.Integer(), nullable=False),
        sa.Column("error_threshold", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("job_minutes", sa.Integer(), nullable=False),
        sa.Column("write_policy", sa.String(length=16), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", repo_server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("finished_at", repo_server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "state IN ('running', 'paused', 'cancelled', 'succeeded', 'incomplete')",
            name=op.f("ck_rollouts_state"),
        ),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_rollouts_release_id_releases"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index("ix_rollouts_state", ["state"], unique=False)

    op.create_table(
        "rollout_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("updated_at", repo_server.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('node', 'group')", name=op.f("ck_rollout_targets_kind")),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'succeeded', 'failed', 'refused', 'cancelled')",
            name=op.f("ck_rollout_targets_state"),
        ),
        sa.CheckConstraint(
            "(node_id IS NULL) <> (group_id IS NULL)", name=op.f("ck_rollout_targets_one_subject")
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["ha_groups.id"],
            name=op.f("fk_rollout_targets_group_id_ha_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_rollout_targets_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_rollout_targets_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_targets_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_targets")),
        sa.UniqueConstraint("rollout_id", "position", name="uq_rollout_targets_position"),
    )
    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_targets_group_id", ["group_id"], unique=False)
        batch_op.create_index("ix_rollout_targets_job_id", ["job_id"], unique=False)
        batch_op.create_index("ix_rollout_targets_node_id", ["node_id"], unique=False)
        batch_op.create_index("ix_rollout_targets_state", ["state"], unique=False)

    op.create_index("ix_steps_finished_at", "steps", ["finished_at"])
    # Plain ALTER TABLE (as 0007): batch mode would copy nodes, which other tables reference.
    op.add_column("nodes", sa.Column("assigned_version", sa.String(length=64), nullable=True))
    op.add_column("nodes", sa.Column("labels", sa.JSON(), nullable=True))
    # NULL on every existing row: preflight checks those inventories again, as before.
    op.add_column("nodes", sa.Column("inventory_checked", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_index("ix_steps_finished_at", table_name="steps")
    op.drop_column("nodes", "inventory_checked")
    op.drop_column("nodes", "labels")
    op.drop_column("nodes", "assigned_version")

    with op.batch_alter_table("rollout_targets", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_targets_state")
        batch_op.drop_index("ix_rollout_targets_node_id")
        batch_op.drop_index("ix_rollout_targets_job_id")
        batch_op.drop_index("ix_rollout_targets_group_id")

    op.drop_table("rollout_targets")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index("ix_rollouts_state")

    op.drop_table("rollouts")
    with op.batch_alter_table("maintenance_windows", schema=None) as batch_op:
        batch_op.drop_index("ix_maintenance_windows_node_id")
        batch_op.drop_index("ix_maintenance_windows_group_id")

    op.drop_table("maintenance_windows")
