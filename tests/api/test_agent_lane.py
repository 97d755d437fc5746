"""Step reports are served before Flask (fleet/agent_lane.py) only when the view would
take them; any other report reaches the view whole and gets the view's own answer."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from repo_server.db import MAX_ID
from tests.api.helpers import assert_error
from tests.upgrades.builders import Agent, enroll_node, healthy_inventory, start_patch_rollout

DONE = {"modules": ["ncs_lane"], "changed": True}


@pytest.fixture
def handed(live, tmp_path: Path) -> tuple[Agent, dict[str, Any]]:
    """A node's agent, and the patch step it was handed."""
    agent = enroll_node(live, "edge-lane")
    assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    start_patch_rollout(live, tmp_path, ["edge-lane"], "CSClane1", ("ncs_lane",))
    step = agent.next()
    assert step is not None
    return agent, step


def post(agent: Agent, step_id: Any, data: bytes, **kw: Any) -> requests.Response:
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return agent.http.post(
        f"{agent.url}/api/v1/agent/steps/{step_id}", data=data, headers=headers, **kw
    )


def body(**fields: Any) -> bytes:
    return json.dumps(
        {"report_id": uuid.uuid4().hex, "state": "succeeded", "result": DONE, **fields}
    ).encode()


def test_a_report_served_before_flask_answers_as_the_view_and_is_remembered(live, handed) -> None:
    agent, step = handed
    sent = body()
    first = post(agent, step["id"], sent)
    assert first.status_code == 200, first.text
    assert first.headers["Content-Type"] == "application/json"
    # Sent again (an agent that crashed before it read the answer): the view answers
    # from what it remembered, the same answer.
    again = post(agent, step["id"], sent)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.content == first.content  # the same bytes, not only the same JSON
    assert first.json()["job"]["state"] == "succeeded"
    assert first.json()["step"]["state"] == "succeeded"


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        # Read here, then handed to the view whole: the view's validation names the field.
        (lambda s: (s, body(surprise=1), {}), 422, "validation_failed"),
        (lambda s: (s, body(progress="10"), {}), 422, "validation_failed"),
        (lambda s: (s, b'{"report_id": NaN}', {}), 400, "bad_request"),
        (lambda s: (s, body(message="a\u0000b"), {}), 400, "bad_request"),
        (lambda s: (s, b'{"report_id": ', {}), 400, "validation_failed"),
        (lambda s: (s, b"[1, 2]", {}), 422, "validation_failed"),
        # UTF-16 (json.loads would read it): the view reads UTF-8 only.
        (lambda s: (s, body().decode().encode("utf-16"), {}), 400, "validation_failed"),
        (lambda s: (s, b"\xef\xbb\xbf" + body(), {}), 400, "validation_failed"),
        (lambda s: (s, body(), {"headers": {"Content-Type": "text/plain"}}), 422, None),
        # Whitespace werkzeug does not strip, str.strip() would: not JSON to the view.
        (lambda s: (s, body(), {"headers": {"Content-Type": "application/json\xa0"}}), 422, None),
        (lambda s: (s, body(), {"headers": {"Content-Type": "application/json\x85"}}), 422, None),
        (lambda s: (s, body(result={"modules": 3}), {}), 422, "result_invalid"),
        # A body labelled compressed is not decoded: refused, not read as its raw bytes.
        (
            lambda s: (s, body(), {"headers": {"Content-Encoding": "gzip"}}),
            415,
            "unsupported_media_type",
        ),
        (lambda s: (MAX_ID + 1, body(), {}), 404, "not_found"),
        (lambda s: (s + 10_000, body(), {}), 404, "not_found"),
        (lambda s: (f"{s}?x=1", body(), {}), None, None),
    ],
)
def test_a_report_the_view_would_refuse_gets_the_views_answer(
    live, handed, make: Any, status: Any, code: Any
) -> None:
    agent, step = handed
    step_id, data, kw = make(step["id"])
    answer = post(agent, step_id, data, **kw)
    if status is None:  # a query the lane does not read: the view takes it as it would
        assert answer.status_code == 200, answer.text
        return
    assert answer.status_code == status, answer.text
    if code is not None:
        assert_error(answer, status, code)
    assert agent.next() is not None or status == 200  # the step is still handed out


def test_a_report_with_a_token_that_is_not_the_nodes_agents_gets_the_views_answer(
    live, handed
) -> None:
    agent, step = handed
    stranger = Agent(live.url, "nsr_" + "y" * 43)
    assert_error(post(stranger, step["id"], body()), 401, "unauthenticated")
    operator = Agent(live.url, live.tokens["operator"])
    assert_error(post(operator, step["id"], body()), 403, "forbidden")
    other = enroll_node(live, "edge-other")
    assert_error(post(other, step["id"], body()), 404, "not_found")
    assert post(agent, step["id"], body()).status_code == 200
