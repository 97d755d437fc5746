"""Patch rollouts: an operator's request to apply or remove an emergency patch bundle on
a set of nodes, and the jobs it started.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20
"""

import sqlalchemy as sa
from alembic import op

from repo_server.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patch_rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("patch_id", sa.String(length=128), nullable=False),
        sa.Column("nso_version", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_patch_rollouts"),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["artifacts.id"],
            name="fk_patch_rollouts_artifact_id_artifacts",
            ondelete="RESTRICT",
        ),
        sa.CheckConstraint("action IN ('apply', 'remove')", name=op.f("ck_patch_rollouts_action")),
    )
    op.create_index("ix_patch_rollouts_filename", "patch_rollouts", ["filename"])
    op.create_table(
        "patch_rollout_jobs",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "job_id", name="pk_patch_rollout_jobs"),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["patch_rollouts.id"],
            name="fk_patch_rollout_jobs_rollout_id_patch_rollouts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name="fk_patch_rollout_jobs_job_id_jobs",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_patch_rollout_jobs_job_id", "patch_rollout_jobs", ["job_id"], unique=True)


def downgrade() -> None:
    op.drop_table("patch_rollout_jobs")
    op.drop_table("patch_rollouts")
