"""Jobs over a set of nodes, held exclusively; steps bound to a node; constrained states.

`job_nodes` lists each job's nodes, `node_holds` (primary key: the node) holds them while
the job is active, `steps.node_id` binds each step to one of them; `jobs.node_id` goes.
Existing jobs become one-node jobs, their steps bound to that node, and an active job holds
its node. The job and step states are constrained to those in `job_states`.

On SQLite the tables are copied (batch mode); foreign keys are switched off first, or
dropping the old `jobs` table would cascade to its steps.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# As they are at this revision (a migration never imports the states it constrains).
JOB_STATES = "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"
STEP_STATES = "state IN ('pending', 'dispatched', 'running', 'succeeded', 'failed', 'skipped')"


def _foreign_keys_off() -> None:
    """SQLite only: let batch mode drop and copy tables without cascading deletes. The
    pragma is ignored inside a transaction, which starts only with the first write."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    still_on = bind.exec_driver_sql("PRAGMA foreign_keys").scalar()
    # A new database migrates from the start in one transaction: it has no jobs to lose.
    if still_on and bind.exec_driver_sql("SELECT COUNT(*) FROM jobs").scalar():
        raise RuntimeError(
            "migration 0004 needs SQLite's foreign keys off to copy the jobs table without "
            "losing its steps; they are on inside a transaction: migrate from 0003 on its own"
        )


def _check_foreign_keys() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"migration 0004 left broken references: {broken[:5]}")


def upgrade() -> None:
    _foreign_keys_off()
    op.create_table(
        "job_nodes",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "node_id", name="pk_job_nodes"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_nodes_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name="fk_job_nodes_node_id_nodes", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_job_nodes_node_id", "job_nodes", ["node_id"])
    op.create_table(
        "node_holds",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name="pk_node_holds"),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name="fk_node_holds_node_id_nodes", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_node_holds_job_id_jobs", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_node_holds_job_id", "node_holds", ["job_id"])
    op.execute("INSERT INTO job_nodes (job_id, node_id) SELECT id, node_id FROM jobs")
    # One active job per node was what the code kept. Should there be more, the oldest holds
    # the node and the others end failed, saying why: an active job without its hold would
    # never be handed out, nor ever end.
    op.execute(
        "UPDATE jobs SET state = 'failed', outcome = 'needs_attention', error = "
        "'migration 0004: another active job held this node; this one never ran past here. "
        "Check the node (nso-repo node ls) and start the change again' "
        "WHERE state IN ('queued', 'running') AND id NOT IN "
        "(SELECT MIN(id) FROM jobs WHERE state IN ('queued', 'running') GROUP BY node_id)"
    )
    op.execute(
        "INSERT INTO node_holds (node_id, job_id) SELECT node_id, MIN(id) FROM jobs "
        "WHERE state IN ('queued', 'running') GROUP BY node_id"
    )

    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("node_id", sa.Integer(), nullable=True))
    op.execute("UPDATE steps SET node_id = (SELECT node_id FROM jobs WHERE jobs.id = steps.job_id)")
    with op.batch_alter_table("steps") as batch:
        batch.alter_column("node_id", existing_type=sa.Integer(), nullable=False)
        # RESTRICT: deleting a node must not silently drop its steps from a job that spans
        # other nodes too.
        batch.create_foreign_key(
            "fk_steps_node_id_nodes", "nodes", ["node_id"], ["id"], ondelete="RESTRICT"
        )
        batch.create_index("ix_steps_node_state", ["node_id", "state"])
        batch.create_check_constraint("state", STEP_STATES)

    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_node_state")
        batch.drop_constraint("fk_jobs_node_id_nodes", type_="foreignkey")
        batch.drop_column("node_id")
        batch.create_check_constraint("state", JOB_STATES)
    _check_foreign_keys()


def downgrade() -> None:
    _foreign_keys_off()
    bind = op.get_bind()
    spanning = bind.exec_driver_sql(
        "SELECT job_id FROM job_nodes GROUP BY job_id HAVING COUNT(*) > 1"
    ).fetchall()
    if spanning:
        raise RuntimeError(
            "cannot go below 0004: jobs "
            + ", ".join(str(row[0]) for row in spanning[:10])
            + " span several nodes, which revision 0003 cannot record; delete them first"
        )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("state", type_="check")
        batch.add_column(sa.Column("node_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE jobs SET node_id = (SELECT node_id FROM job_nodes WHERE job_nodes.job_id = jobs.id)"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("node_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            "fk_jobs_node_id_nodes", "nodes", ["node_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_jobs_node_state", ["node_id", "state"])

    with op.batch_alter_table("steps") as batch:
        batch.drop_constraint("state", type_="check")
        batch.drop_index("ix_steps_node_state")
        batch.drop_constraint("fk_steps_node_id_nodes", type_="foreignkey")
        batch.drop_column("node_id")

    op.drop_index("ix_node_holds_job_id", table_name="node_holds")
    op.drop_table("node_holds")
    op.drop_index("ix_job_nodes_node_id", table_name="job_nodes")
    op.drop_table("job_nodes")
    _check_foreign_keys()
