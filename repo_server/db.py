"""SQLAlchemy 2 engine, sessions and the typed declarative base.

Services receive a `Session` and own its transaction (commit or rollback); views never
commit. One engine per app; one session per request, closed at teardown.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Optional, Union

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Float,
    MetaData,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Stable constraint names so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The largest id an INTEGER primary key holds (PostgreSQL's int4): a path or query id past
# it names nothing, and would overflow SQLite's 64-bit integers further on.
MAX_ID = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use repo_server.db.utcnow()")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # float spelled out: SQLAlchemy 2.1 maps it to Double where 2.0 and the migrations have
    # Float (the same double precision on PostgreSQL, FLOAT against DOUBLE on SQLite).
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        list[int]: JSON(),
        list[str]: JSON(),
        float: Float(),
    }


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run while an upload commits; foreign keys are off by default.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if make_url(url).get_driver_name() == "psycopg":
        from psycopg import RawCursor

        # PostgreSQL's own placeholders ($1), sent as they are: psycopg's default cursor
        # rewrites every statement's %(name)s placeholders in Python, and caches the result
        # only for statements under 4 KiB, so each multi-row INSERT (a rollout's jobs, a
        # batch's audit rows) was parsed anew: a fifth of a 1,000-node rollout's time.
        kwargs.setdefault("paramstyle", "numeric_dollar")
        kwargs["connect_args"] = {"cursor_factory": RawCursor, **kwargs.get("connect_args", {})}
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def dialect_of(executor: Union[Session, Connection]) -> str:
    """The database's dialect name ("sqlite", "postgresql") of a session or a connection."""
    return (
        executor.dialect.name
        if isinstance(executor, Connection)
        else executor.get_bind().dialect.name
    )


def among(column: Any, values: Iterable[Any], dialect: str) -> Any:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``, one parameter whatever
    the number of values. An IN list is new SQL text for each length, parsed and planned
    each time; the same text is prepared once (psycopg) and planned once (PostgreSQL), which
    counts when agents' requests are served in batches of any size (upgrades/batched.py)."""
    values = list(values)
    if dialect == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)
