"""Input that used to make the server answer 500 now gets a 4xx that says what was wrong:
numbers past what an id or an offset can be, JSON nested to exhaust the parser, lone UTF-16
surrogates and NUL characters (PostgreSQL cannot store them), NaN, bytes that are not UTF-8.
tests/api/test_schemathesis.py looks for more of them."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.api.helpers import assert_error

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/api/v1/jobs/{HUGE}", 404, "not_found"),
        ("/api/v1/jobs/0", 404, "not_found"),
        (f"/api/v1/jobs/{'9' * 5000}", 404, "not_found"),
        (f"/api/v1/jobs/{HUGE}/rollback", 404, "not_found"),
        (f"/api/v1/audit?before_id={HUGE}", 422, "validation_failed"),
        (f"/api/v1/artifacts?page={HUGE}", 422, "validation_failed"),
        ("/api/v1/nodes/edge%00one", 400, "bad_request"),
        ("/api/v1/artifacts?name=router%00nc", 400, "bad_request"),
        ("/api/v1/nodes/%ff%fe", 404, "not_found"),
    ],
)
def test_paths_and_queries(live, path: str, status: int, code: str) -> None:
    method = "post" if path.endswith("rollback") else "get"
    answer = getattr(live.session("admin"), method)(f"{live.url}{path}")
    error = assert_error(answer, status, code)
    if path.startswith("/api/v1/jobs/"):
        assert "is not an id" in error["message"], error


NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (NESTED, "nested deeper"),
        ("[" * 40 + "]" * 40, "nested deeper"),
        ('"6.1\\ud83d"', "surrogate"),
        ('"\\udc00 6.1"', "surrogate"),
        ('"6.1\\u0000"', "NUL"),
        ('{"key\\u0000": 1}', "NUL"),
        ("NaN", "NaN"),
        ("-Infinity", "Infinity"),
    ],
)
def test_json_the_database_cannot_store(live, value: str, says: str) -> None:
    # Unknown inventory fields are kept as they come: such values reached the database
    # (PostgreSQL refuses NUL and NaN: 500) or the parser's recursion limit (500).
    body = '{"inventory": {"running_version": "6.1", "status": "started", "extra": %s}}'
    answer = _agent(live).post(
        f"{live.url}/api/v1/agent/heartbeat",
        data=body % value,
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(answer, 400, "bad_request")
    assert says in error["message"], error


def test_deep_json_without_a_token(live) -> None:
    answer = live.session(None).post(
        f"{live.url}/api/v1/agent/enroll",
        data=f'{{"enrollment_token": {NESTED}}}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(answer, 400, "bad_request")


def test_a_body_that_is_not_utf8(live) -> None:
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes",
        data=b'{"name": "edge-\xff"}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(answer, 400, "validation_failed")


def _agent(live: Any) -> requests.Session:
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    enrolled = live.session(None).post(
        f"{live.url}/api/v1/agent/enroll",
        json={"enrollment_token": added.json()["enrollment_token"]},
    )
    http = live.session(None)
    http.headers["Authorization"] = f"Bearer {enrolled.json()['token']}"
    return http
