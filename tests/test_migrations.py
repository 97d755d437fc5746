"""The models and the Alembic migrations describe the same schema, on SQLite and on
PostgreSQL: a database migrated to head has exactly the tables, columns, types, defaults,
indexes and constraints the models declare. A migration that reshapes data keeps the data
working, both ways."""

from __future__ import annotations

import pprint
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.orm import Session

from repo_server import migrate
from repo_server.db import Base, make_engine, utcnow
from repo_server.models import register_models


def test_models_and_migrations_agree(database_url: str) -> None:
    register_models()  # every model module, so that Base.metadata holds every table
    head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            assert context.get_current_revision() == head
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], pprint.pformat(differences)


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def _jobs_as_of_0003(url: str) -> dict[str, int]:
    """A node with a running upgrade half done and an older finished job, written as
    revision 0003 stored them (a job names its one node)."""
    engine = make_engine(url)
    meta = MetaData()
    now = utcnow()
    try:
        with engine.begin() as connection:
            meta.reflect(connection, only=["nodes", "jobs", "steps"])
            nodes, jobs, steps = (meta.tables[t] for t in ("nodes", "jobs", "steps"))
            node = connection.execute(
                nodes.insert().values(
                    name="edge-1", inventory={}, created_at=now, created_by="test"
                )
            ).inserted_primary_key[0]
            job = {
                "node_id": node,
                "kind": "upgrade",
                "options": {},
                "context": {},
                "plan": {},
                "created_at": now,
                "created_by": "test",
                "revision": 0,
            }
            old = connection.execute(
                jobs.insert().values(**job, state="succeeded")
            ).inserted_primary_key[0]
            running = connection.execute(
                jobs.insert().values(**job, state="running")
            ).inserted_primary_key[0]
            step = {"params": {}, "attempt": 1, "progress": 0, "result": {}}
            connection.execute(
                steps.insert(),
                [
                    {**step, "job_id": old, "seq": 1, "name": "compact", "state": "succeeded"},
                    {**step, "job_id": running, "seq": 1, "name": "prestage", "state": "succeeded"},
                    {**step, "job_id": running, "seq": 2, "name": "compact", "state": "pending"},
                ],
            )
    finally:
        engine.dispose()
    return {"node": node, "old": old, "running": running}


def test_0004_makes_existing_jobs_one_node_jobs_and_back(database_url: str) -> None:
    """Migration 0004 on a database with jobs: each becomes a one-node job, its steps bound
    to that node, the running one holding it; the job then runs on; and down again."""
    from repo_server.fleet.models import Node
    from repo_server.fleet.notify import Notifier
    from repo_server.upgrades.jobs import JobService

    register_models()
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0003")
    ids = _jobs_as_of_0003(database_url)
    command.upgrade(config, "head")

    node, old, running = ids["node"], ids["old"], ids["running"]
    assert sorted(_rows(database_url, "SELECT job_id, node_id FROM job_nodes")) == [
        (old, node),
        (running, node),
    ]
    assert _rows(database_url, "SELECT node_id, job_id FROM node_holds") == [(node, running)]
    assert set(_rows(database_url, "SELECT node_id FROM steps")) == {(node,)}

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            jobs = JobService(session, Notifier())
            edge = session.get(Node, node)
            assert edge is not None
            step = jobs.claim_next(edge)
            assert step is not None and (step.job_id, step.seq) == (running, 2)
            answer = jobs.report(
                edge, step.id, {"report_id": "migrated-0004", "state": "succeeded", "result": {}}
            )
            assert answer["job"]["state"] == "succeeded"
            assert [j.node_names for j in jobs.list("edge-1")] == [["edge-1"], ["edge-1"]]
            assert jobs.get(running).holds == []
    finally:
        engine.dispose()

    command.downgrade(config, "0003")
    assert sorted(_rows(database_url, "SELECT id, node_id, state FROM jobs")) == [
        (old, node, "succeeded"),
        (running, node, "succeeded"),
    ]
    command.upgrade(config, "head")
    assert _rows(database_url, "SELECT node_id FROM node_holds") == []


def test_a_database_two_revisions_behind_with_jobs_upgrades_in_one_go(database_url: str) -> None:
    """An operator upgrading from 0002 (issue 7's release) runs 0003 and 0004 in one
    `alembic upgrade head`: on SQLite one transaction, where 0004's own switch of foreign
    keys comes too late (SQLite ignores it inside a transaction)."""
    register_models()
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0002")
    ids = _jobs_as_of_0003(database_url)  # 0003 changed no job table: the same rows
    command.upgrade(config, "head")
    assert sorted(_rows(database_url, "SELECT id, state FROM jobs")) == [
        (ids["old"], "succeeded"),
        (ids["running"], "running"),
    ]
    assert len(_rows(database_url, "SELECT id FROM steps")) == 3
    assert _rows(database_url, "SELECT node_id, job_id FROM node_holds") == [
        (ids["node"], ids["running"])
    ]


def test_two_active_jobs_on_one_node_leave_none_without_its_hold(database_url: str) -> None:
    """The code never let two jobs be active on one node, but should a database hold them,
    the newer would be active without its hold: never handed out, never ending."""
    register_models()
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0003")
    ids = _jobs_as_of_0003(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE jobs SET state = 'queued' WHERE id = {ids['old']}"))
    finally:
        engine.dispose()
    command.upgrade(config, "head")
    first, second = sorted((ids["old"], ids["running"]))
    assert _rows(database_url, "SELECT node_id, job_id FROM node_holds") == [(ids["node"], first)]
    ((state, outcome, error),) = _rows(
        database_url, f"SELECT state, outcome, error FROM jobs WHERE id = {second}"
    )
    assert (state, outcome) == ("failed", "needs_attention")
    assert "another active job held this node" in error


def test_a_role_that_may_not_create_tables_is_told_what_to_grant(
    postgres_server: Any, tmp_path: Any
) -> None:
    """PostgreSQL 15 lets only a database's owner create tables in schema public: a server
    role that is not the owner gets the grant to ask for, not a hint about the data folder."""
    import subprocess
    import sys
    import uuid

    import psycopg

    from tests.support.processes import clean_env

    name, role = f"t_{uuid.uuid4().hex[:12]}", f"r_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    postgres_server._admin(f'CREATE ROLE "{role}" LOGIN')
    url = postgres_server.url(name).replace("postgres@", f"{role}@", 1)
    env = clean_env(NSO_REPO_DATABASE_URL=url, NSO_REPO_DATA_DIR=str(tmp_path / "data"))

    def upgrade() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "repo_server.cli", "db", "upgrade"]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    refused = upgrade()
    assert refused.returncode == 1, refused.stdout
    assert f"the role {role} in NSO_REPO_DATABASE_URL may not create tables" in refused.stderr
    assert f'GRANT CREATE ON SCHEMA public TO "{role}";' in refused.stderr
    assert "data folder" not in refused.stderr and "Traceback" not in refused.stderr
    with psycopg.connect(postgres_server.url(name).replace("+psycopg", ""), autocommit=True) as c:
        c.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    done = upgrade()
    assert done.returncode == 0, done.stderr
    assert "database at revision" in done.stdout


def test_hosts_starting_at_once_on_a_new_database_migrate_once(
    postgres_server: Any, tmp_path: Any
) -> None:
    """Server hosts behind a balancer start together on a new database: they migrate one
    after the other (the migrations' advisory lock), and none fails on another's tables.
    The test holds the lock first, so all of them are surely waiting at the same time."""
    import subprocess
    import sys
    import time

    import psycopg

    from tests.support.processes import clean_env

    url = postgres_server.create_database()
    command = [sys.executable, "-m", "repo_server.cli", "db", "upgrade"]
    env = clean_env(NSO_REPO_DATABASE_URL=url, NSO_REPO_DATA_DIR=str(tmp_path / "data"))
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (0x6E736F7265706F,))
        started = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)
        ]

        def waiting() -> int:
            row = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            return int(row[0]) if row else 0

        deadline = time.monotonic() + 60
        while waiting() < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting() == 3  # each of them waits for the lock, none has migrated
        assert [p.poll() for p in started] == [None, None, None]
        assert migrate.current_revision(url) is None
        holder.execute("SELECT pg_advisory_unlock(%s)", (0x6E736F7265706F,))
        results = [
            (p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "") for p in started
        ]
    assert [code for code, _ in results] == [0, 0, 0], results
    assert migrate.current_revision(url) is not None


def test_a_database_a_newer_release_migrated_is_refused_with_the_way_back(
    database_url: str, tmp_path: Any
) -> None:
    """A server gone back to an older release on a database a newer one migrated: not
    Alembic's traceback, but what happened and what to do; `serve` never says it listens."""
    import subprocess
    import sys

    from tests.support.processes import clean_env

    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    env = clean_env(NSO_REPO_DATABASE_URL=database_url, NSO_REPO_DATA_DIR=str(tmp_path / "d"))
    head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
    for words in (["db", "upgrade"], ["serve", "--port", "1"]):
        ran = subprocess.run(
            [sys.executable, "-m", "repo_server.cli", *words],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert ran.returncode == 1, ran.stdout
        said = ran.stdout + ran.stderr
        assert (
            f"schema revision 0999, which this nso-repo does not know (it knows up to {head})"
            in said
        )
        assert "restore the database from the backup" in said
        assert "Traceback" not in said and "listening" not in said
    assert migrate.current_revision(database_url) == "0999"  # left as it was


def test_a_role_that_does_not_own_the_tables_is_told_what_to_reassign(
    postgres_server: Any, tmp_path: Any
) -> None:
    """The tables were made by another role (a superuser's first start): a server role
    that may not even read the schema's revision gets the REASSIGN to ask for, not a bare
    'permission denied'."""
    import subprocess
    import sys
    import uuid

    from tests.support.processes import clean_env

    name, role = f"t_{uuid.uuid4().hex[:12]}", f"r_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    migrate.upgrade(postgres_server.url(name))  # as the superuser: its tables
    postgres_server._admin(f'CREATE ROLE "{role}" LOGIN')
    url = postgres_server.url(name).replace("postgres@", f"{role}@", 1)
    env = clean_env(NSO_REPO_DATABASE_URL=url, NSO_REPO_DATA_DIR=str(tmp_path / "data"))
    ran = subprocess.run(
        [sys.executable, "-m", "repo_server.cli", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ran.returncode == 1, ran.stdout
    assert f"the role {role} in NSO_REPO_DATABASE_URL does not own them" in ran.stderr
    assert f'REASSIGN OWNED BY <that role> TO "{role}";' in ran.stderr
    assert "Traceback" not in ran.stderr
