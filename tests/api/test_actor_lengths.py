"""The longest node and token names the server accepts make actors ("<role>:<token name>")
that every actor column keeps, on SQLite and on PostgreSQL, which refuses a longer value
and with it the change it records; one character more is refused with a clear 422."""

from __future__ import annotations

from pathlib import Path

import requests

from repo_server.auth.models import ACTOR_MAX, TOKEN_NAME_MAX
from repo_server.fleet.models import NODE_NAME_MAX
from tests.api.helpers import assert_error, put_file
from tests.factories import make_package
from tests.upgrades.builders import enroll_node, healthy_inventory, start_patch_rollout


def audited(live, action: str) -> list[dict]:
    answer = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": action, "limit": 100}
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_an_agent_of_the_longest_node_name_is_audited_whole(live, tmp_path: Path) -> None:
    name = "n" * NODE_NAME_MAX
    too_long = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": name + "x"})
    error = assert_error(too_long, 422, "validation_failed")
    assert str(NODE_NAME_MAX) in error["message"] or str(NODE_NAME_MAX) in str(error)

    agent = enroll_node(live, name)
    assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    start_patch_rollout(live, tmp_path, [name], "CSClong1", ("ncs_long",))
    step = agent.next()
    assert step is not None, "the agent of the longest name got no step"
    done = agent.report(step["id"], "succeeded", result={"modules": ["ncs_long"], "changed": True})
    assert done.status_code == 200, done.text
    actors = {e["actor"] for e in audited(live, "step.succeeded")}
    assert actors == {f"agent:node:{name}"} and len(actors.pop()) == ACTOR_MAX


def test_a_token_of_the_longest_name_signs_its_changes_whole(live, tmp_path: Path) -> None:
    admin = live.session("admin")
    name = "u" * TOKEN_NAME_MAX
    refused = admin.post(f"{live.url}/api/v1/tokens", json={"name": name + "u", "role": "viewer"})
    assert_error(refused, 422, "validation_failed")
    made = admin.post(f"{live.url}/api/v1/tokens", json={"name": name, "role": "uploader"})
    assert made.status_code == 201, made.text

    uploader = requests.Session()
    uploader.headers["Authorization"] = f"Bearer {made.json()['token']}"
    package = make_package(tmp_path, "router-nc", "1.0.2", "6.2")
    uploaded = put_file(uploader, live.url, package)
    assert uploaded.status_code == 201, uploaded.text
    [event] = audited(live, "artifact.upload")
    assert event["actor"] == f"uploader:{name}" and len(event["actor"]) == ACTOR_MAX
