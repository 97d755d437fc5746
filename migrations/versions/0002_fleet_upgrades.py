"""Releases, fleet (nodes, enrollment), jobs and steps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from repo_server.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("nso_version", sa.String(64), nullable=False),
        sa.Column("version_key", sa.String(512), nullable=False),
        sa.Column("installer_id", sa.Integer(), nullable=False),
        sa.Column("requirements", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_releases"),
        sa.UniqueConstraint("nso_version", name="uq_releases_nso_version"),
        sa.ForeignKeyConstraint(
            ["installer_id"],
            ["artifacts.id"],
            name="fk_releases_installer_id_artifacts",
            ondelete="RESTRICT",
        ),
    )
    op.create_table(
        "release_packages",
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("release_id", "artifact_id", name="pk_release_packages"),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name="fk_release_packages_release_id_releases",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["artifacts.id"],
            name="fk_release_packages_artifact_id_artifacts",
            ondelete="RESTRICT",
        ),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("agent_version", sa.String(64), nullable=True),
        sa.Column("inventory", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("enrolled_at", UTCDateTime(), nullable=True),
        sa.Column("last_seen_at", UTCDateTime(), nullable=True),
        sa.Column("inventory_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.UniqueConstraint("name", name="uq_nodes_name"),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_enrollment_tokens_token_hash"),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name="fk_enrollment_tokens_node_id_nodes", ondelete="CASCADE"
        ),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("node_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_api_tokens_node_id_nodes", "nodes", ["node_id"], ["id"], ondelete="CASCADE"
        )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("source_version", sa.String(64), nullable=True),
        sa.Column("target_version", sa.String(64), nullable=True),
        sa.Column("release_id", sa.Integer(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name="fk_jobs_node_id_nodes", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["release_id"], ["releases.id"], name="fk_jobs_release_id_releases", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_jobs_node_state", "jobs", ["node_id", "state"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("nso_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        sa.UniqueConstraint("job_id", "seq", name="uq_steps_job_seq"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_steps_job_id_jobs", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "step_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_step_reports"),
        sa.UniqueConstraint("report_id", name="uq_step_reports_report_id"),
        sa.ForeignKeyConstraint(
            ["step_id"], ["steps.id"], name="fk_step_reports_step_id_steps", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("step_reports")
    op.drop_table("steps")
    op.drop_index("ix_jobs_node_state", table_name="jobs")
    op.drop_table("jobs")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("fk_api_tokens_node_id_nodes", type_="foreignkey")
        batch.drop_column("node_id")
    op.drop_table("enrollment_tokens")
    op.drop_table("nodes")
    op.drop_table("release_packages")
    op.drop_table("releases")
