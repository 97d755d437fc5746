"""An agent's poll with nothing to do is answered before Flask, in one statement; every
other poll, and any doubt, gets the full path's answer (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event, update

from repo_server.auth.models import ApiToken
from repo_server.db import utcnow
from repo_server.fleet.idle_polls import wait_of
from repo_server.fleet.models import Node
from tests.api.helpers import assert_error
from tests.upgrades.builders import Agent, enroll_node, healthy_inventory, start_patch_rollout


class Statements:
    """The SQL statements the app runs, counted."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


@pytest.fixture
def agent(live) -> Agent:
    made = enroll_node(live, "edge-idle")
    assert made.heartbeat(healthy_inventory("6.2")).status_code == 200
    assert made.next() is None  # the token's last use and the node's last-seen are now fresh
    return made


def poll(agent: Agent, query: str = "wait=0", **kw: Any) -> requests.Response:
    return agent.http.get(f"{agent.url}/api/v1/agent/next?{query}", timeout=30, **kw)


def test_an_idle_poll_costs_one_statement_and_says_no_work(live, app_state, agent) -> None:
    counted = Statements(app_state.engine)
    answer = poll(agent)
    assert answer.status_code == 204 and answer.content == b""
    assert "Retry-After" not in answer.headers
    assert counted.count == 1


def test_a_node_with_work_gets_its_step(live, app_state, agent, tmp_path: Path) -> None:
    start_patch_rollout(live, tmp_path, ["edge-idle"], "CSCidle1", ("ncs_idle",))
    answer = poll(agent)
    assert answer.status_code == 200, answer.text
    assert answer.json()["step"]["name"] == "apply_patch"


def test_a_revoked_token_and_a_token_of_another_role_get_the_full_answers(
    live, app_state, agent
) -> None:
    operator = Agent(live.url, live.tokens["operator"])
    assert_error(poll(operator), 403, "forbidden")
    with app_state.sessions() as session:
        revoke = update(ApiToken).where(ApiToken.node_id.is_not(None))
        session.execute(revoke.values(revoked_at=utcnow()))
        session.commit()
    assert_error(poll(agent), 401, "unauthenticated")
    assert_error(poll(Agent(live.url, "nsr_" + "x" * 43)), 401, "unauthenticated")


@pytest.mark.parametrize("query", ["wait=61", "wait=-1", "wait=x", "wait=%C2%B2"])
def test_a_poll_with_a_bad_wait_gets_the_full_paths_refusal(live, agent, query: str) -> None:
    answer = poll(agent, query)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    assert set(answer.json()) == {"error"}


@pytest.mark.parametrize("query", ["wait=0&wait=0", "wait=0&x=1", "a&b&c&wait=0", "wait=0&&&"])
def test_a_query_the_fast_path_does_not_read_goes_the_full_path(
    live, app_state, agent, query: str
) -> None:
    counted = Statements(app_state.engine)
    poll(agent, query)
    assert counted.count > 1  # the token, the node, its hold: Flask's path


def test_a_poll_with_a_body_goes_the_full_path(live, app_state, agent) -> None:
    counted = Statements(app_state.engine)
    poll(agent, data=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert counted.count > 1
    assert_error(poll(agent, "wait=0%00"), 400, "bad_request")  # the guards' own answer


@pytest.mark.parametrize("query", ["wait=0", "wait=1"])
def test_an_idle_poll_writes_stale_times_as_the_full_path_does(
    live, app_state, agent, query: str
) -> None:
    long_ago = utcnow() - timedelta(hours=1)
    with app_state.sessions() as session:
        session.execute(update(Node).values(last_seen_at=long_ago))
        session.execute(update(ApiToken).values(last_used_at=long_ago))
        session.commit()
    counted = Statements(app_state.engine)
    assert poll(agent, query).status_code == 204
    if query == "wait=0":  # answered before Flask: the read and the two writes
        assert counted.count == 3
    with app_state.sessions() as session:
        node = session.query(Node).filter_by(name="edge-idle").one()
        token = session.query(ApiToken).filter_by(node_id=node.id).one()
        assert node.last_seen_at is not None and node.last_seen_at > long_ago
        assert token.last_used_at is not None and token.last_used_at > long_ago


@pytest.mark.parametrize(
    ("query", "wait"),
    [
        ("", 30),
        ("wait=0", 0),
        ("wait=60", 60),
        ("wait=07", 7),
        ("wait=%35", 5),
        ("wait=", None),
        ("x=1", None),
        ("a&b&c", None),
        ("wait=5&&&", None),
        ("wait=%C2%B2", None),
        ("wait=+5", None),
    ],
)
def test_wait_is_read_as_the_full_path_reads_it(query: str, wait: Any) -> None:
    assert wait_of(query) == wait
