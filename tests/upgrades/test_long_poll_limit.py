"""One node holds at most NSO_REPO_MAX_POLLS_PER_NODE (2) long-polls: a newer poll makes the
oldest answer 204 at once, so a node token cannot tie up the server's threads (one token
holding 40 long-polls delayed /health by 57 s). tests/api/test_starvation.py measures it
against a real gunicorn."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest
import requests

from tests.upgrades.builders import Agent, enroll_node, healthy_inventory


class Poll(threading.Thread):
    """One `GET /api/v1/agent/next?wait=WAIT` in a thread: its status and how long it took."""

    def __init__(self, agent: Agent, wait: int = 30) -> None:
        super().__init__(daemon=True)
        self.agent, self.wait = agent, wait
        self.status: Optional[int] = None
        self.body: Any = None
        self.seconds = 0.0
        self.start()
        time.sleep(0.3)  # this poll is counted before the next one starts

    def run(self) -> None:
        begin = time.monotonic()
        try:
            answer = self.agent.http.get(
                f"{self.agent.url}/api/v1/agent/next", params={"wait": self.wait}, timeout=90
            )
            self.body = answer.json() if answer.content else None
        except (requests.RequestException, ValueError):
            return  # polls left waiting when the test ends meet the server's shutdown
        self.seconds = time.monotonic() - begin
        self.status = answer.status_code

    def answered_within(self, seconds: float) -> bool:
        self.join(seconds)
        return not self.is_alive()


def test_a_newer_long_poll_answers_the_oldest_at_once(live, enrolled: Agent) -> None:
    first, second = Poll(enrolled), Poll(enrolled)
    assert first.is_alive() and second.is_alive()
    assert enrolled.next(wait=0) is None  # a poll that does not wait takes no place
    assert first.is_alive()
    third = Poll(enrolled)
    assert first.answered_within(5), "the oldest poll kept waiting past the limit"
    assert first.status == 204 and first.seconds < 5
    assert second.is_alive() and third.is_alive()
    fourth = Poll(enrolled)
    assert second.answered_within(5) and second.status == 204
    assert third.is_alive() and fourth.is_alive()
    # Other nodes keep their own places.
    other_poll = Poll(enroll_node(live, "edge-2"))
    assert third.is_alive() and fourth.is_alive() and other_poll.is_alive()


def test_the_polls_that_keep_their_place_still_get_the_work(
    live, enrolled: Agent, releases: dict[str, Any]
) -> None:
    assert enrolled.heartbeat(healthy_inventory("6.1")).status_code == 200
    polls = [Poll(enrolled) for _ in range(4)]
    assert polls[0].answered_within(5) and polls[1].answered_within(5)
    started = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    assert started.status_code == 202, started.text
    for poll in polls[2:]:
        assert poll.answered_within(10), "a waiting poll was not woken by the new job"
    answers = sorted((p.status, (p.body or {}).get("step", {}).get("name")) for p in polls[2:])
    # One poll takes the step; the other finds it dispatched already, or takes it again
    # as a resumed attempt (docs/agent-protocol.md): either way the work is handed out.
    assert answers[0] == (200, "prestage"), answers


PLACES = 3


@pytest.fixture
def narrow(app_overrides: dict[str, Any], request: pytest.FixtureRequest) -> Any:
    """A live server where only PLACES long-polls may wait at once."""
    app_overrides["max_waiting_polls"] = PLACES
    return request.getfixturevalue("live")


def test_past_the_places_to_wait_a_poll_answers_at_once_with_retry_after(
    narrow, releases: dict[str, Any]
) -> None:
    # Each waiting poll holds a thread: a fleet larger than the threads (or many stolen
    # node tokens, 2 polls each) took them all, and /health and the API waited.
    agents = [enroll_node(narrow, f"edge-{i}") for i in range(PLACES + 2)]
    waiting = [Poll(agent) for agent in agents[:PLACES]]
    assert all(poll.is_alive() for poll in waiting)
    extra = Poll(agents[PLACES])
    assert extra.answered_within(5), "a poll past the places kept a thread waiting"
    answer = agents[PLACES].http.get(
        f"{narrow.url}/api/v1/agent/next", params={"wait": 30}, timeout=30
    )
    assert answer.status_code == 204
    assert 1 <= int(answer.headers["Retry-After"]) <= 30
    assert all(poll.is_alive() for poll in waiting)  # nobody lost a place to it
    # A poll without a place still takes work that is there.
    last = agents[PLACES + 1]
    assert last.heartbeat(healthy_inventory("6.1")).status_code == 200
    started = narrow.session("operator").post(
        f"{narrow.url}/api/v1/nodes/edge-{PLACES + 1}/upgrade", json={"to": "6.2"}
    )
    assert started.status_code == 202, started.text
    assert last.next(wait=30)["name"] == "prestage"
    # A place given back is taken by the next poll.
    first = agents[0]
    assert first.heartbeat(healthy_inventory("6.1")).status_code == 200
    started = narrow.session("operator").post(
        f"{narrow.url}/api/v1/nodes/edge-0/upgrade", json={"to": "6.2"}
    )
    assert started.status_code == 202, started.text
    assert waiting[0].answered_within(10) and waiting[0].status == 200
    again = Poll(agents[PLACES])
    assert again.is_alive(), "the place given back was not taken"


def test_the_agent_comes_back_when_told_not_at_once(narrow, tmp_path) -> None:
    # An agent that polled again at once on such a 204 would turn a full server into a
    # busy loop across the fleet.
    from agent.client import Backoff, ServerClient
    from agent.config import Config
    from agent.runner import Runner
    from repo_server.fleet.views import BUSY_RETRY_SECONDS

    agents = [enroll_node(narrow, f"edge-{i}") for i in range(PLACES + 1)]
    waiting = [Poll(agent) for agent in agents[:PLACES]]
    config = Config(server_url=narrow.url, root=str(tmp_path / "root"), poll_wait=30)
    config.state_path.mkdir(parents=True)
    config.token_file.write_text(agents[PLACES].token + "\n")
    client = ServerClient(narrow.url, agents[PLACES].token, backoff=Backoff(tries=1))
    runner = Runner(config, client=client)
    slept: list[float] = []
    runner.sleep = slept.append
    rounds = iter(range(3))
    begin = time.monotonic()
    runner.run_forever(lambda: next(rounds, None) is None)
    assert time.monotonic() - begin < 10, "the agent's polls waited: they had no place"
    assert slept == [float(BUSY_RETRY_SECONDS)] * 3
    assert all(poll.is_alive() for poll in waiting)


def test_waiting_polls_hold_no_database_connection(live) -> None:
    # Each waiting poll re-read its node after its last query, opening a transaction that
    # held a pooled connection for the whole wait: past the pool's 15 connections every
    # other request waited 30 s for one and failed.
    agents = [enroll_node(live, f"edge-{i}") for i in range(20)]
    waiting = [Poll(agent, wait=40) for agent in agents]
    assert all(poll.is_alive() for poll in waiting)
    operator = live.session("operator")
    for _ in range(3):
        answer = operator.get(f"{live.url}/api/v1/nodes", timeout=25)
        assert answer.status_code == 200, answer.text
    assert all(poll.is_alive() for poll in waiting)
