"""Catalog, tokens and audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from repo_server.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _sha256_check() -> sa.CheckConstraint:
    # The digest is a storage key: each backend gets the check it can express.
    if op.get_context().dialect.name == "postgresql":
        return sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex")
    return sa.CheckConstraint(
        "length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'", name="sha256_hex"
    )


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_blobs"),
        sa.UniqueConstraint("sha256", name="uq_blobs_sha256"),
        _sha256_check(),
        sa.CheckConstraint("size >= 0", name="size_positive"),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("version_key", sa.String(512), nullable=False),
        sa.Column("nso_version", sa.String(64), nullable=False),
        sa.Column("nso_version_key", sa.String(512), nullable=False),
        sa.Column("nso_branch", sa.String(32), nullable=False),
        sa.Column("arch", sa.String(16), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.Integer(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("uploaded_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.Column("deleted_by", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.UniqueConstraint("filename", name="uq_artifacts_filename"),
        sa.ForeignKeyConstraint(
            ["blob_id"], ["blobs.id"], name="fk_artifacts_blob_id_blobs", ondelete="RESTRICT"
        ),
        sa.CheckConstraint(
            "kind IN ('installer', 'package', 'ned', 'patch')", name="kind_known"
        ),
    )
    op.create_index("ix_artifacts_kind_name", "artifacts", ["kind", "name"])
    op.create_index("ix_artifacts_kind_branch", "artifacts", ["kind", "nso_branch"])
    op.create_index("ix_artifacts_blob_id", "artifacts", ["blob_id"])
    op.create_index("ix_artifacts_sha256", "artifacts", ["sha256"])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        sa.CheckConstraint(
            "role IN ('admin', 'uploader', 'operator', 'viewer', 'agent')", name="role_known"
        ),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("api_tokens")
    op.drop_table("artifacts")
    op.drop_table("blobs")
