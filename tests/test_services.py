"""The service fixtures themselves: a real PostgreSQL cluster and a real S3 server."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, text

from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Server


def test_postgres_server_creates_and_drops_databases(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    name = url.rsplit("/", 1)[1]
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/{name}"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version_num")).scalar_one()
            assert int(version) // 10000 == 15
            assert connection.execute(text("SHOW fsync")).scalar_one() == "off"
    finally:
        engine.dispose()
    postgres_server.drop_database(name)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=postgres_server.port, user="postgres", dbname=name)


def test_s3_server_buckets_are_separate(s3_server: S3Server) -> None:
    first, second = s3_server.new_bucket(), s3_server.new_bucket()
    assert first != second
    client = s3_server.client()
    client.put_object(Bucket=first, Key="k", Body=b"v")
    assert client.list_objects_v2(Bucket=second).get("KeyCount", 0) == 0
    overrides = s3_server.settings_overrides(first)
    assert overrides["storage"] == "s3" and overrides["s3_bucket"] == first
    assert overrides["s3_endpoint_url"] == s3_server.endpoint_url
