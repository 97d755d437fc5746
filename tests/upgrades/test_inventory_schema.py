"""The heartbeat's inventory has a declared schema (docs/agent-protocol.md, "Heartbeat and
inventory"): wrong types are refused naming the field, sizes are capped, unknown fields are
kept within bounds, and a plan never answers 500 on an inventory stored before the schema."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from repo_server.db import utcnow
from repo_server.fleet.models import Node
from tests.api.helpers import assert_error
from tests.upgrades.builders import codes, healthy_inventory

BAD = {
    "packages-string": ({"packages": "router-nc"}, "packages"),
    "packages-item": ({"packages": ["router-nc"]}, "packages"),
    "package-name": ({"packages": [{"name": ["router-nc"], "version": "1.0"}]}, "packages"),
    "package-version": ({"packages": [{"name": "router-nc", "version": 1.0}]}, "packages"),
    "disk-list": ({"disk_free_bytes": [1, 2]}, "disk_free_bytes"),
    "disk-text": ({"disk_free_bytes": {"/opt/ncs": "lots"}}, "disk_free_bytes"),
    "disk-negative": ({"disk_free_bytes": {"/opt/ncs": -1}}, "disk_free_bytes"),
    "disk-huge": ({"disk_free_bytes": {"/opt/ncs": 1 << 80}}, "disk_free_bytes"),
    "cdb-bool": ({"cdb_bytes": True}, "cdb_bytes"),
    "ha-list": ({"ha": ["none"]}, "ha"),
    "ha-enabled": ({"ha": {"enabled": "no", "mode": "none"}}, "ha"),
    "conf-dicts": ({"ncs_conf_elements": [{"a": 1}]}, "ncs_conf_elements"),
    "keys-string": ({"crypto_keys": "AES256CFB128_KEY"}, "crypto_keys"),
    "status-number": ({"status": 1}, "status"),
    "running-list": ({"running_version": ["6.1"]}, "running_version"),
    "os-nested": ({"os": {"id": {"x": 1}}}, "os"),
    "java-long": ({"java": "1" * 65}, "java"),
    "releases-many": ({"installed_releases": ["6.1"] * 1000}, "installed_releases"),
    "errors-long": ({"errors": ["e" * 5000]}, "errors"),
    "patch-item": ({"patches": [{"module": 1}]}, "patches"),
}


@pytest.mark.parametrize("change,field", list(BAD.values()), ids=list(BAD))
def test_a_wrong_typed_inventory_is_refused_naming_the_field(
    live, enrolled, change: dict[str, Any], field: str
) -> None:
    error = assert_error(
        enrolled.heartbeat({**healthy_inventory(), **change}), 422, "validation_failed"
    )
    assert field in error["details"]["fields"]["json"]["inventory"], error


def test_status_and_running_version_are_required(live, enrolled) -> None:
    inventory = healthy_inventory()
    del inventory["status"]
    error = assert_error(enrolled.heartbeat(inventory), 422, "validation_failed")
    assert "status" in error["details"]["fields"]["json"]["inventory"]
    # null is what a stopped NSO reports for its running version
    stopped = {**healthy_inventory(), "status": "stopped", "running_version": None}
    assert enrolled.heartbeat(stopped).status_code == 200


def test_unknown_fields_are_kept_within_bounds(live, enrolled) -> None:
    kept = {**healthy_inventory(), "selinux": "enforcing", "future": {"a": [1, 2]}}
    answer = enrolled.heartbeat(kept)
    assert answer.status_code == 200, answer.text
    assert answer.json()["inventory"]["selinux"] == "enforcing"
    assert answer.json()["inventory"]["future"] == {"a": [1, 2]}
    too_big = {**healthy_inventory(), "blob": "x" * 20_000}
    error = assert_error(enrolled.heartbeat(too_big), 422, "validation_failed")
    assert "blob" in error["details"]["fields"]["json"]["inventory"]
    too_many = {**healthy_inventory(), **{f"extra_{i}": i for i in range(100)}}
    assert_error(enrolled.heartbeat(too_many), 422, "validation_failed")


def test_the_agents_own_inventory_passes(live, enrolled) -> None:
    """Every documented field, as the agent sends them (agent/inventory.py)."""
    full = {
        **healthy_inventory(),
        "installed_releases": ["6.1", "6.2"],
        "patches": [{"module": "ncs_fix", "file": "ncs_fix.beam"}],
        "disk_free_bytes": {"/opt/ncs": 5 << 30, "/var/opt/ncs": None},
        "os": {"id": "rhel", "version_id": "9.2"},
        "java": None,
        "glibc": "2.34",
        "run_dir_bytes": 52428800,
        "cli_error": "NSO CLI at 127.0.0.1:2024 refused the agent: auth failed",
        "errors": ["ncs --status timed out"],
        "current": None,
    }
    full["packages"][0]["target"] = "/opt/ncs/packages/ncs-6.1-router-nc-1.0.2.tar.gz"
    answer = enrolled.heartbeat(full)
    assert answer.status_code == 200, answer.text
    assert answer.json()["inventory"] == full


def _store(app_state, inventory: dict[str, Any]) -> None:
    """An inventory stored before heartbeats were checked: written straight to the row."""
    with app_state.sessions() as session:
        node = session.scalars(select(Node).where(Node.name == "edge-1")).one()
        node.inventory = inventory
        node.inventory_at = utcnow()
        session.commit()


@pytest.mark.parametrize("change,field", list(BAD.values()), ids=list(BAD))
def test_a_plan_on_an_inventory_stored_before_is_refused_not_a_500(
    live, enrolled, releases, app_state, change: dict[str, Any], field: str
) -> None:
    _store(app_state, {**healthy_inventory(), **change})
    answer = live.session("operator").get(
        f"{live.url}/api/v1/nodes/edge-1/plan", params={"to": "6.2"}
    )
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert codes(plan["reasons"]) == ["inventory_invalid"]
    assert field in plan["reasons"][0]["message"]
    assert "heartbeat" in plan["reasons"][0]["remedy"]
    started = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    assert_error(started, 422, "preflight_failed")
    packages = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/package-upgrade",
        json={"packages": ["ncs-6.2-router-nc-1.0.2.tar.gz"]},
    )
    error = assert_error(packages, 422, "preflight_failed")
    assert "inventory_invalid" in codes(error["details"]["reasons"])
