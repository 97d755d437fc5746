"""Alembic environment: migrations run against the URL that repo_server.migrate passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from repo_server.db import Base, make_engine
from repo_server.models import register_models

register_models()

target_metadata = Base.metadata
LOCK = 0x6E736F7265706F  # "nsorepo": the migrations' advisory lock
config = context.config


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things; batch mode copies the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Several server hosts may start at once on a new database: one migrates,
                # the others wait here, then find it at head (held until this commits).
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
