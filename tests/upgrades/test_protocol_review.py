"""Holes a second, hostile read of the agent protocol's server side found (issue 8 review):
a revoked token's waiting long-poll, non-finite numbers in inventories, an agent's text in
an operator's terminal, job contexts stored by an older server, and the audit actions the
docs list. Each test failed before its fix."""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import update

from repo_server.db import utcnow
from repo_server.fleet.models import EnrollmentToken
from repo_server.upgrades import results
from repo_server.upgrades.models import Job
from tests.api.helpers import assert_error
from tests.upgrades.builders import (
    Agent,
    agent_result,
    healthy_inventory,
    nso_repo,
    start_upgrade,
)

ROOT = Path(__file__).resolve().parents[2]


def _job(live, job_id: int) -> dict[str, Any]:
    return dict(live.session("operator").get(f"{live.url}/api/v1/jobs/{job_id}").json())


def _enroll(live, secret: str, **fields: Any) -> requests.Response:
    return requests.post(
        f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": secret, **fields}
    )


def _new_token(live, node: str = "edge-1") -> str:
    answer = live.session("operator").post(f"{live.url}/api/v1/nodes/{node}/enrollment-token")
    assert answer.status_code == 201, answer.text
    return str(answer.json()["enrollment_token"])


def _run_until(agent, name: str) -> dict[str, Any]:
    while (step := agent.next())["name"] != name:
        done = agent.report(step["id"], "succeeded", result=agent_result(step))
        assert done.status_code == 200, done.text
    return step


def _set_context(app_state, job_id: int, context: dict[str, Any]) -> None:
    """What an older server, which merged results unchecked, left in the database."""
    with app_state.sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(context=context))
        session.commit()


def test_a_poll_waiting_when_its_token_is_revoked_hands_out_no_step(
    live, enrolled, releases
) -> None:
    """Before: the old agent token's poll, opened before the node enrolled again, got the
    node's next step (params, context) and marked it dispatched."""
    enrolled.heartbeat(healthy_inventory("6.1"))
    answers: dict[str, requests.Response] = {}

    def poll() -> None:
        answers["old"] = enrolled.http.get(
            f"{live.url}/api/v1/agent/next", params={"wait": 20}, timeout=60
        )

    waiting = threading.Thread(target=poll)
    waiting.start()
    time.sleep(1)  # the poll is waiting
    new = _enroll(live, _new_token(live), hostname="rebuilt").json()["token"]
    started = time.monotonic()
    job = start_upgrade(live, Agent(live.url, new))
    waiting.join(timeout=60)
    refused = assert_error(answers["old"], 401, "unauthenticated")
    assert "revoked" in refused["message"] and "enroll-token" in refused["message"]
    assert time.monotonic() - started < 15  # woken by the job, not by its deadline
    assert _job(live, job["id"])["steps"][0]["state"] == "pending"
    step = Agent(live.url, new).next()
    assert step is not None and step["name"] == "prestage" and step["attempt"] == 1


@pytest.mark.parametrize(
    "where",
    ["top", "package", "ha", "disk_free_bytes"],
)
def test_a_number_too_large_to_be_finite_is_refused_in_an_inventory(live, enrolled, where) -> None:
    """Before: `1e999` parses as infinity; kept in an undeclared field it was served back as
    `Infinity`, which is not JSON (SQLite), or refused by PostgreSQL as a vague 400."""
    inventory = healthy_inventory("6.1")
    marker = '"__INF__"'
    if where == "top":
        inventory["extra"] = "__INF__"
    elif where == "package":
        inventory["packages"][0]["size"] = "__INF__"
    elif where == "ha":
        inventory["ha"]["since"] = "__INF__"
    else:
        inventory["disk_free_bytes"]["/opt/ncs"] = "__INF__"
    body = json.dumps({"inventory": inventory}).replace(marker, "1e999")
    answer = enrolled.http.post(
        f"{live.url}/api/v1/agent/heartbeat",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(answer, 422, "validation_failed")
    assert "inventory" in json.dumps(error["details"])
    listed = live.session("viewer").get(f"{live.url}/api/v1/nodes")
    assert listed.status_code == 200
    json.loads(listed.text, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))


ESC = "\x1b"


def test_an_agents_text_reaches_operators_without_control_characters(live, releases) -> None:
    """Before: an agent's message, log tail, hostname and inventory were stored and shown
    as sent, so a node could write escape sequences into `nso-repo job watch`/`node ls`."""
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    secret = added.json()["enrollment_token"]
    enrolled = _enroll(live, secret, hostname=f"edge{ESC}[2J", agent_version="0.1\u202e1")
    assert enrolled.status_code == 201, enrolled.text
    agent = Agent(live.url, enrolled.json()["token"])
    inventory = healthy_inventory("6.1") | {"cli_error": f"line 1\r\nline 2{ESC}]8;;x\x07"}
    # A line break in a value shown within a line would forge a row of `node ls`.
    inventory["status"] = "running\nnso-prod-2 6.2 running"
    inventory["packages"][0]["version"] = "1.0\tx"
    inventory["errors"] = ["first\nsecond"]
    assert agent.heartbeat(inventory).status_code == 200
    node = live.session("viewer").get(f"{live.url}/api/v1/nodes/edge-1").json()
    assert node["hostname"] == "edge\ufffd[2J"
    assert node["agent_version"] == "0.1\ufffd1"
    assert node["inventory"]["cli_error"] == "line 1\nline 2\ufffd]8;;x\ufffd"
    assert node["inventory"]["errors"] == ["first\nsecond"]  # NSO's words keep their lines
    assert node["inventory"]["status"] == "running\ufffdnso-prod-2 6.2 running"
    assert node["inventory"]["packages"][0]["version"] == "1.0 x"
    listed = nso_repo(live, "viewer", "node", "ls")
    assert listed.returncode == 0 and "edge-1" in listed.stdout, listed
    assert not any(line.startswith("nso-prod-2") for line in listed.stdout.splitlines())

    job = start_upgrade(live, agent)
    step = agent.next()
    sent = agent.report(
        step["id"],
        "failed",
        message=f"sha256 mismatch{ESC}[1A{ESC}[2Ksucceeded\r",
        log_tail=f"downloading\r\n\u2066done\u2069\tok{ESC}[31m\x9b0m",
    )
    assert sent.status_code == 200, sent.text
    seen = _job(live, job["id"])
    shown = seen["steps"][0]
    assert shown["message"] == "sha256 mismatch\ufffd[1A\ufffd[2Ksucceeded\ufffd"
    assert shown["log_tail"] == "downloading\n\ufffddone\ufffd\tok\ufffd[31m\ufffd0m"
    assert ESC not in seen["error"] and "\r" not in seen["error"]
    assert results.printable("a\tb\nc") == "a\tb\nc"


def test_a_context_an_older_server_stored_never_reaches_a_step(
    live, enrolled, releases, app_state
) -> None:
    """Before: a job's context went to every later step as stored; the agent reads it as
    parameters, so an escaping path or an undeclared key from an older server's unchecked
    merge still reached the recovery."""
    job = start_upgrade(live, enrolled)
    jobdir = f"/var/opt/ncs/backups/nso-agent-job-{job['id']}"
    step = _run_until(enrolled, "compact")
    legacy = {
        "backup_file": "/../../etc/evil",
        "extra_dir": f"{jobdir}/package-links",
        "restore_point": "/etc",
        "restore_point_token": "t1",
        "target_version": "9.9",  # a parameter name: the agent would read it as one
        "fingerprint": "sha256:" + "f1" * 32,
    }
    _set_context(app_state, job["id"], legacy)
    assert enrolled.report(step["id"], "succeeded").status_code == 200
    step = enrolled.next()
    assert step["name"] == "switch_current"
    assert step["context"] == {
        "extra_dir": f"{jobdir}/package-links",
        "restore_point_token": "t1",
        "fingerprint": "sha256:" + "f1" * 32,
    }
    assert enrolled.report(step["id"], "failed", message="ln failed").status_code == 200
    recover = enrolled.next()
    assert recover["name"] == "recover"
    params = recover["params"]
    assert params["backup_file"] is None and params["restore_point"] is None
    assert params["extra_dir"] == f"{jobdir}/package-links"
    assert "target_version" not in recover["context"] and "restore_point" not in recover["context"]


def test_a_rollback_refuses_a_recovery_context_an_older_server_stored(
    live, enrolled, releases, app_state
) -> None:
    job = start_upgrade(live, enrolled)
    while (step := enrolled.next()) is not None:
        assert (
            enrolled.report(step["id"], "succeeded", result=agent_result(step)).status_code == 200
        )
    assert _job(live, job["id"])["state"] == "succeeded"
    context = _job(live, job["id"])["context"]
    _set_context(app_state, job["id"], {**context, "restore_point": "/etc/ncs"})
    refused = assert_error(
        live.session("operator").post(
            f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={"discard_writes": True}
        ),
        409,
        "conflict",
    )
    assert refused["details"]["refused"] == ["restore_point"]
    assert "by hand" in refused["message"]
    # As the agent reported it, the rollback goes ahead.
    _set_context(app_state, job["id"], context)
    accepted = live.session("operator").post(
        f"{live.url}/api/v1/jobs/{job['id']}/rollback", json={"discard_writes": True}
    )
    assert accepted.status_code == 202, accepted.text
    recover = enrolled.next()
    assert recover["params"]["restore_point"] == context["restore_point"]
    assert recover["context"]["restore_point"] == context["restore_point"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_expired_enrollment_token_is_refused(live, app_state) -> None:
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    secret = added.json()["enrollment_token"]
    with app_state.sessions() as session:
        session.execute(update(EnrollmentToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    refused = assert_error(_enroll(live, secret), 401, "enrollment_refused")
    assert "nso-repo node enroll-token" in refused["message"]
    assert _enroll(live, _new_token(live)).status_code == 201


def test_result_patterns_take_ascii_digits_and_errors_do_not_echo_long_keys() -> None:
    stop = results.STEP_RESULTS["stop"]["stopped_at"]
    assert stop.accepts("2026-11-30T01:02:03+00:00", 1)
    assert not stop.accepts("\uff12\uff10\uff12\uff16-11-30T01:02:03+00:00", 1)  # fullwidth
    replaced = results.STEP_RESULTS["recover"]["replaced_data"]
    assert not replaced.accepts(["/var/opt/ncs/backups/nso-agent-job-1/replaced-\u0661"], 1)
    with pytest.raises(results.ResultInvalid) as refused:
        results.succeeded_result("compact", 1, {"k" * 100_000: 1})
    assert len(refused.value.message) < 1000


def _audited_actions() -> set[str]:
    """The action of every ``audit(session, actor, "<action>", ...)`` call in the server."""
    found = set()
    for path in (ROOT / "repo_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "audit"
                and len(node.args) > 2
                and isinstance(node.args[2], ast.Constant)
            ):
                found.add(str(node.args[2].value))
    return found


def test_every_audited_action_is_listed_in_the_api_docs() -> None:
    actions = _audited_actions()
    assert {"node.enroll", "job.create", "artifact.upload"} <= actions
    section = (ROOT / "docs" / "api.md").read_text().split("## Tokens and audit", 1)[1]
    listed = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", section.split("## Health", 1)[0]))
    assert actions <= listed, f"audited but not in docs/api.md: {sorted(actions - listed)}"
