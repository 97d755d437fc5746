"""One node holds at most NSO_REPO_MAX_POLLS_PER_NODE (2) long-polls: a newer poll makes the
oldest answer 204 at once, so a node token cannot tie up the server's threads (one token
holding 40 long-polls delayed /health by 57 s). tests/api/test_starvation.py measures it
against a real gunicorn."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

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
