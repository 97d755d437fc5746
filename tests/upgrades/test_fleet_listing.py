"""The fleet listing (`GET /api/v1/nodes`, `nso-repo node ls`): pages by name, filters by
running release and by part of a name, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from repo_server import migrate
from tests.api.helpers import assert_error
from tests.upgrades.builders import enroll_node, inventory, nso_repo


def listed(live, **params: Any) -> dict[str, Any]:
    answer = live.session("viewer").get(f"{live.url}/api/v1/nodes", params=params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def names(page: dict[str, Any]) -> list[str]:
    return [node["name"] for node in page["items"]]


def test_pages_and_filters(live) -> None:
    for i, version in enumerate(["6.1", "6.2", "6.2", None, "6.2.3"]):
        agent = enroll_node(live, f"edge_{i}")
        if version is not None:
            assert agent.heartbeat(inventory(version)).status_code == 200
    everything = listed(live)
    assert (everything["total"], everything["page"], everything["per_page"]) == (5, 1, 50)
    assert names(everything) == [f"edge_{i}" for i in range(5)]
    assert everything["items"][1]["running_version"] == "6.2"

    first, second = listed(live, per_page=2), listed(live, per_page=2, page=2)
    assert names(first) + names(second) == ["edge_0", "edge_1", "edge_2", "edge_3"]
    assert listed(live, per_page=2, page=9)["items"] == []

    assert names(listed(live, version="6.2")) == ["edge_1", "edge_2"]  # exactly: not 6.2.3
    assert names(listed(live, version="none")) == ["edge_3"]
    assert listed(live, version="6.2")["total"] == 2
    assert names(listed(live, q="GE_4")) == ["edge_4"]  # any case
    assert names(listed(live, q="_")) == names(everything)  # a literal underscore
    assert listed(live, q="%")["items"] == []  # a literal percent sign, in no name

    for bad in ({"per_page": 0}, {"per_page": 501}, {"page": 0}, {"version": "x" * 65}):
        assert_error(
            live.session("viewer").get(f"{live.url}/api/v1/nodes", params=bad),
            422,
            "validation_failed",
        )

    shown = nso_repo(live, "viewer", "node", "ls", "--version", "6.2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [n["name"] for n in json.loads(shown.stdout)] == ["edge_1", "edge_2"]


def test_the_migration_fills_running_version_from_the_inventories(database_url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from repo_server.db import make_engine

    command.downgrade(migrate.alembic_config(database_url), "0006")  # the copy is at head
    engine = make_engine(database_url)
    with engine.begin() as connection:
        for name, inv in (
            ("n1", {"running_version": "6.2"}),
            ("n2", {}),
            ("n3", {"x": 1}),
            ("n4", {"running_version": 7}),
            ("n5", {"running_version": "x" * 70}),
        ):
            connection.execute(
                text(
                    "INSERT INTO nodes (name, inventory, created_at, created_by) "
                    "VALUES (:n, :i, CURRENT_TIMESTAMP, 't')"
                ),
                {"n": name, "i": json.dumps(inv)},
            )
    migrate.upgrade(database_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, running_version FROM nodes ORDER BY name"))
        assert list(rows) == [
            ("n1", "6.2"),
            ("n2", None),
            ("n3", None),
            ("n4", None),
            ("n5", "x" * 64),
        ]
    engine.dispose()
