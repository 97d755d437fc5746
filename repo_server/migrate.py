"""Run the Alembic migrations in `migrations/` against a database URL."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

from repo_server.errors import AppError

# The scripts sit beside the package in the source tree; the Dockerfile installs it editable
# for that reason.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially; URLs may carry %-escapes.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class MigrationRefused(AppError):
    code = "migration_refused"


# PostgreSQL's SQLSTATE for "permission denied" (insufficient_privilege).
INSUFFICIENT_PRIVILEGE = "42501"


def upgrade(url: str, revision: str = "head") -> None:
    config = alembic_config(url)
    try:
        _check_known(url, config)
        command.upgrade(config, revision)
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise MigrationRefused(_no_privilege(url, exc)) from None


def _check_known(url: str, config: Config) -> None:
    """Refuse a database a newer nso-repo migrated (this one went back to an older release
    without the database): Alembic would stop on a revision it cannot locate."""
    current = current_revision(url)
    if current is None:
        return
    script = ScriptDirectory.from_config(config)
    if current in {r.revision for r in script.walk_revisions()}:
        return
    raise MigrationRefused(
        f"the database is at schema revision {current}, which this nso-repo does not know "
        f"(it knows up to {script.get_current_head()}): a newer nso-repo migrated it. Run "
        "that release again, or restore the database from the backup taken before the "
        'upgrade (docs/production.md, "Upgrading the server")'
    )


def _no_privilege(url: str, exc: ProgrammingError) -> str:
    """What a role that may not migrate should be told. PostgreSQL 15 took CREATE on schema
    public away from every role but the database's owner; tables another role created
    (a superuser's first start) are that role's to change."""
    role, database = _who(url)
    said = str(exc.orig).strip().splitlines()[0]
    quoted_role, quoted_db = _quoted(role), _quoted(database)
    if "schema" in said:
        return (
            f"PostgreSQL refused to create the server's tables ({said}): the role {role} in "
            f"NSO_REPO_DATABASE_URL may not create tables in schema public of {database}, "
            "which PostgreSQL 15 allows only the database's owner by default. As a superuser "
            f"or the owner, run 'ALTER DATABASE {quoted_db} OWNER TO {quoted_role};' (or "
            f"'GRANT CREATE ON SCHEMA public TO {quoted_role};' in {database}), then start "
            "again"
        )
    return (
        f"PostgreSQL refused to migrate the server's tables ({said}): the role {role} in "
        f"NSO_REPO_DATABASE_URL does not own them (another role, a superuser perhaps, created "
        f"them). As a superuser, in {database}, run 'REASSIGN OWNED BY <that role> TO "
        f"{quoted_role};' (or ALTER TABLE ... OWNER TO {quoted_role} for each table), then "
        "start again"
    )


def _who(url: str) -> tuple[str, str]:
    """The role and database the server connects as: asked of PostgreSQL (a URL may name no
    user: a socket login as the OS user), else read from the URL."""
    from repo_server.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT current_user, current_database()")).one()
            return str(row[0]), str(row[1])
    except SQLAlchemyError:
        parsed = make_url(url)
        return parsed.username or "(the OS user)", parsed.database or "(the default database)"
    finally:
        engine.dispose()


def _quoted(name: str) -> str:
    """``name`` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def current_revision(url: str) -> Optional[str]:
    from alembic.runtime.migration import MigrationContext

    from repo_server.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
