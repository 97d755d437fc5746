"""Run the Alembic migrations in `migrations/` against a database URL."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

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
    try:
        command.upgrade(alembic_config(url), revision)
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise MigrationRefused(_no_privilege(url, exc)) from None


def _no_privilege(url: str, exc: ProgrammingError) -> str:
    """What a role that may not create the tables should be told: PostgreSQL 15 took CREATE
    on schema public away from every role but the database's owner."""
    parsed = make_url(url)
    role, database = parsed.username or "the role", parsed.database or "the database"
    said = str(exc.orig).strip().splitlines()[0]
    return (
        f"PostgreSQL refused to create the server's tables ({said}): the role {role} in "
        f"NSO_REPO_DATABASE_URL may not create tables in schema public of {database}, which "
        "PostgreSQL 15 allows only the database's owner by default. As a superuser or the "
        f'owner, run \'ALTER DATABASE "{database}" OWNER TO "{role}";\' (or \'GRANT '
        f'CREATE ON SCHEMA public TO "{role}";\' in {database}), then start again'
    )


def current_revision(url: str) -> Optional[str]:
    from alembic.runtime.migration import MigrationContext

    from repo_server.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
