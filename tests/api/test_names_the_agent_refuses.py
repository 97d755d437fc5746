"""Names the agent refuses (agent/trust.py) are refused by the server when they are asked
for, not by the agent after the job's backups: a removal, a new ned-id, a package file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.helpers import assert_error, put_file
from tests.upgrades.builders import enroll_node, healthy_inventory


@pytest.mark.parametrize("name", ["x\n| save /tmp/p", "old..ned", "-router", "a b"])
def test_a_removal_the_agent_would_refuse_is_refused_and_nothing_starts(live, name) -> None:
    agent = enroll_node(live, "edge-1")
    assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/package-upgrade", json={"remove": [name]}
    )
    error = assert_error(answer, 422, "validation_failed")
    assert "never '..'" in str(error)
    assert agent.next() is None
    assert live.session("operator").get(f"{live.url}/api/v1/jobs").json() == []


def test_a_ned_id_with_dot_dot_is_refused(live) -> None:
    agent = enroll_node(live, "edge-1")
    assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/ned-migrations",
        json={"new_ned_id": "router..nc-2.0", "devices": ["r1"], "dry_run": True},
    )
    assert_error(answer, 422, "validation_failed")


def test_a_package_file_name_with_dot_dot_is_refused_at_upload(live, tmp_path: Path) -> None:
    path = tmp_path / "ncs-6.2-a..b-1.0.tar.gz"
    path.write_bytes(b"not read: the name is refused first")
    answer = put_file(live.session("uploader"), live.url, path)
    assert 400 <= answer.status_code < 500, answer.text
    assert "contains '..'" in answer.text


@pytest.mark.parametrize("ha_id", ["-n1", ".n1", "n..1"])
def test_an_ha_id_the_agent_would_refuse_is_refused(live, ha_id: str) -> None:
    for name in ("nso-a", "nso-b"):
        enroll_node(live, name)
    members = [
        {"node": "nso-a", "ha_id": ha_id, "role": "primary"},
        {"node": "nso-b", "ha_id": "n2", "role": "secondary"},
    ]
    answer = live.session("operator").post(
        f"{live.url}/api/v1/groups", json={"name": "pair", "members": members}
    )
    assert "HA id" in assert_error(answer, 422, "validation_failed")["message"]
