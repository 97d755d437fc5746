"""The models and the Alembic migrations describe the same schema, on SQLite and on
PostgreSQL: a database migrated to head has exactly the tables, columns, types, defaults,
indexes and constraints the models declare."""

from __future__ import annotations

import pprint

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from repo_server import migrate
from repo_server.db import Base, make_engine
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
