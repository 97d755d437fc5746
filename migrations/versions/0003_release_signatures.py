"""Release signatures: a release manager's Ed25519 signature over a release manifest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from repo_server.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_signatures",
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("signed_at", UTCDateTime(), nullable=False),
        sa.Column("signed_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("release_id", "key_id", name="pk_release_signatures"),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name="fk_release_signatures_release_id_releases",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("release_signatures")
