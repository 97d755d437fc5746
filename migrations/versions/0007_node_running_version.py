"""The NSO release each node last reported running, as a column: the fleet listing filters
and pages on it without reading every inventory.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    # Plain ALTER TABLE on every backend: SQLite adds a column without copying the table
    # (batch mode would, and the tables that reference nodes stop that).
    op.add_column("nodes", sa.Column("running_version", sa.String(length=64), nullable=True))
    op.create_index("ix_nodes_running_version", "nodes", ["running_version"])
    nodes = sa.table(
        "nodes",
        sa.column("id", sa.Integer()),
        sa.column("inventory", sa.JSON()),
        sa.column("running_version", sa.String()),
    )
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        # One statement: the table is locked (ALTER TABLE) until this migration commits.
        connection.execute(
            sa.text(
                "UPDATE nodes SET running_version = NULLIF(LEFT(inventory->>'running_version', "
                "64), '') WHERE json_typeof(inventory->'running_version') = 'string'"
            )
        )
        return
    last = 0
    while True:
        rows = connection.execute(
            sa.select(nodes.c.id, nodes.c.inventory)
            .where(nodes.c.id > last)
            .order_by(nodes.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        for node_id, inventory in rows:
            version = (inventory or {}).get("running_version")
            if isinstance(version, str) and version:
                connection.execute(
                    nodes.update()
                    .where(nodes.c.id == node_id)
                    .values(running_version=version[:64])
                )
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_nodes_running_version", table_name="nodes")
    op.drop_column("nodes", "running_version")  # SQLite 3.35+: ALTER TABLE ... DROP COLUMN
