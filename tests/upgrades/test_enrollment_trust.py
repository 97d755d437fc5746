"""Enrollment: one enrollment token per node at a time, and one agent token per node.

An enrollment token that outlives its node's enrollment would let whoever holds it enroll
again later, revoke the real agent's token and receive the node's steps (a hijack).
"""

from __future__ import annotations

import pytest
import requests

from tests.api.helpers import assert_error
from tests.upgrades.builders import healthy_inventory, nso_repo


def _enroll(live, secret: str) -> requests.Response:
    return requests.post(
        f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": secret, "hostname": "h"}
    )


def _add(live, name: str) -> str:
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": name})
    assert added.status_code == 201, added.text
    return str(added.json()["enrollment_token"])


def _new_token(live, name: str) -> str:
    answer = live.session("operator").post(f"{live.url}/api/v1/nodes/{name}/enrollment-token")
    assert answer.status_code == 201, answer.text
    return str(answer.json()["enrollment_token"])


def _heartbeat(live, token: str) -> requests.Response:
    return requests.post(
        f"{live.url}/api/v1/agent/heartbeat",
        json={"inventory": healthy_inventory("6.1")},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_enrolling_revokes_every_other_enrollment_token_of_the_node(live) -> None:
    first = _add(live, "edge-1")
    second = _new_token(live, "edge-1")
    other_node = _add(live, "edge-2")
    assert _enroll(live, second).status_code == 201
    # The older token is spent with the enrollment: it cannot take the node over later.
    assert_error(_enroll(live, first), 401, "enrollment_refused")
    # Another node's token is its own business.
    assert _enroll(live, other_node).status_code == 201


def test_a_new_enrollment_token_revokes_the_older_ones(live) -> None:
    first = _add(live, "edge-1")
    second = _new_token(live, "edge-1")
    assert_error(_enroll(live, first), 401, "enrollment_refused")
    third = _new_token(live, "edge-1")
    assert_error(_enroll(live, second), 401, "enrollment_refused")
    assert _enroll(live, third).status_code == 201


def test_enrolling_again_revokes_the_previous_agent_token(live) -> None:
    old = _enroll(live, _add(live, "edge-1")).json()["token"]
    assert _heartbeat(live, old).status_code == 200
    new = _enroll(live, _new_token(live, "edge-1")).json()["token"]
    assert_error(_heartbeat(live, old), 401, "unauthenticated")
    assert _heartbeat(live, new).status_code == 200


def test_a_used_token_stays_used_after_a_new_one_is_issued(live) -> None:
    first = _add(live, "edge-1")
    assert _enroll(live, first).status_code == 201
    _new_token(live, "edge-1")
    assert_error(_enroll(live, first), 401, "enrollment_refused")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_enroll_token_command_that_error_messages_name_exists(live) -> None:
    first = _add(live, "edge-1")
    # The command the refusal tells the operator to run.
    refused = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    assert "nso-repo node enroll-token edge-1" in refused.json()["error"]["message"]
    made = nso_repo(live, "operator", "node", "enroll-token", "edge-1")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("nse_") and "\n" not in secret  # only the token, for scripts
    assert_error(_enroll(live, first), 401, "enrollment_refused")
    assert _enroll(live, secret).status_code == 201
    unknown = nso_repo(live, "operator", "node", "enroll-token", "edge-9")
    assert unknown.returncode == 1 and "nso-repo node ls" in unknown.stderr
    viewer = nso_repo(live, "viewer", "node", "enroll-token", "edge-1")
    assert viewer.returncode == 1 and "forbidden" in viewer.stderr


def test_enrollment_and_heartbeat_strings_fit_their_columns(live) -> None:
    """Longer than the node's columns: a 500 on PostgreSQL before, now a 422."""
    secret = _add(live, "edge-1")
    long_host = requests.post(
        f"{live.url}/api/v1/agent/enroll",
        json={"enrollment_token": secret, "hostname": "h" * 256},
    )
    assert_error(long_host, 422, "validation_failed")
    token = _enroll(live, secret).json()["token"]
    long_version = requests.post(
        f"{live.url}/api/v1/agent/heartbeat",
        json={"agent_version": "9" * 65, "inventory": healthy_inventory("6.1")},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert_error(long_version, 422, "validation_failed")
