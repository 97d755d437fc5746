"""Unknown is not ok: preflight refuses on missing facts with one reason and what to do
(issue 7, finding 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import assert_error
from tests.upgrades.builders import (
    UNKNOWN,
    codes,
    inventory,
    package_upgrade,
    plan,
    release_with,
    upload_package,
)


@pytest.fixture
def release_62(live, tmp_path: Path) -> list[str]:
    return release_with(live, tmp_path, "6.2", {"router-nc": "1.0.2"})


def test_a_node_that_never_reported_gets_one_reason(live, enrolled, release_62) -> None:
    verdict = plan(live, "edge-1", "6.2")
    assert verdict["ok"] is False
    (reason,) = verdict["reasons"]
    assert reason["code"] == "never_reported"
    assert "edge-1 has never reported" in reason["message"]
    assert "nso-agent status" in reason["remedy"]
    assert verdict["source_version"] is None and verdict["kind"] is None
    error = assert_error(package_upgrade(live, "edge-1", release_62), 422, "preflight_failed")
    assert codes(error["details"]["reasons"]) == ["never_reported"]


def test_cli_unreachable_is_one_reason_quoting_the_agent(live, enrolled, release_62) -> None:
    # NSO is started but the agent could not log in to its CLI: no HA status, no oper-status.
    facts = inventory("6.1", cli_error="ssh 127.0.0.1:2024: Connection refused", ha=UNKNOWN)
    for package in facts["packages"]:
        del package["oper_status"]
    enrolled.heartbeat(facts)
    verdict = plan(live, "edge-1", "6.2")
    assert verdict["ok"] is False
    (reason,) = verdict["reasons"]
    assert reason["code"] == "cli_unreachable"
    assert "ssh 127.0.0.1:2024: Connection refused" in reason["message"]
    assert "HA status" in reason["message"] and "router-nc" in reason["message"]
    assert "[cli]" in reason["remedy"] and "nso-agent status" in reason["remedy"]


@pytest.mark.parametrize(
    ("change", "unknown"),
    [("ha", "HA status"), ("oper_status", "oper-status of router-nc")],
)
def test_each_missing_cli_fact_is_unknown(
    live, enrolled, release_62, change: str, unknown: str
) -> None:
    facts = inventory("6.1")
    if change == "ha":
        del facts["ha"]
    else:
        del facts["packages"][0]["oper_status"]
    enrolled.heartbeat(facts)
    (reason,) = plan(live, "edge-1", "6.2")["reasons"]
    assert reason["code"] == "cli_unreachable"
    assert unknown in reason["message"]


def test_running_release_differs_from_current(live, enrolled, release_62) -> None:
    enrolled.heartbeat(inventory("6.1", current="6.0.3"))
    (reason,) = plan(live, "edge-1", "6.2")["reasons"]
    assert reason["code"] == "version_mismatch"
    assert "runs 6.1" in reason["message"] and "6.0.3" in reason["message"]
    enrolled.heartbeat(inventory("6.1", current=UNKNOWN))
    assert codes(plan(live, "edge-1", "6.2")["reasons"]) == ["version_mismatch"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"crypto_keys": UNKNOWN}, ["crypto_keys_unknown"]),
        ({"crypto_keys": []}, ["aes256_key_missing"]),
        ({"ncs_conf_elements": UNKNOWN}, ["ncs_conf_unknown"]),
        ({"disk_free_bytes": UNKNOWN}, ["disk_unknown", "disk_unknown"]),
        ({"packages": None}, ["packages_unknown"]),
    ],
    ids=["keys-unreadable", "no-keys", "ncs-conf-unreadable", "disk", "packages"],
)
def test_unread_files_are_unknown_not_fine(
    live, enrolled, release_62, changes: dict[str, Any], expected: list[str]
) -> None:
    facts = inventory("6.1", **changes)
    if "packages" in changes:
        del facts["packages"]  # `inventory` takes `packages` as the loaded set
    enrolled.heartbeat(facts)
    verdict = plan(live, "edge-1", "6.2")
    assert codes(verdict["reasons"]) == expected
    assert all(len(r["remedy"]) > 20 for r in verdict["reasons"])


def test_unknowns_not_needed_for_the_verdict_do_not_refuse(live, enrolled, tmp_path: Path) -> None:
    # 5.2 needs no AES256 key and removed no ncs.conf element: those facts do not matter.
    release_with(live, tmp_path, "5.2", {"router-nc": "1.0.2"})
    enrolled.heartbeat(inventory("5.1", crypto_keys=UNKNOWN, ncs_conf_elements=UNKNOWN))
    verdict = plan(live, "edge-1", "5.2")
    assert verdict["ok"], verdict["reasons"]


def test_package_upgrades_share_the_node_rules(live, enrolled, tmp_path: Path) -> None:
    build = upload_package(live, tmp_path, "router-nc", "1.0.3", "6.2")
    facts = inventory("6.2", {"router-nc": "1.0.2"}, cli_error="authentication failed")
    del facts["ha"]
    enrolled.heartbeat(facts)
    error = assert_error(package_upgrade(live, "edge-1", [build]), 422, "preflight_failed")
    assert codes(error["details"]["reasons"]) == ["cli_unreachable"]
    assert "authentication failed" in error["message"]
    enrolled.heartbeat(inventory("6.2", {"router-nc": "1.0.2"}, current="6.1"))
    error = assert_error(package_upgrade(live, "edge-1", [build]), 422, "preflight_failed")
    assert codes(error["details"]["reasons"]) == ["version_mismatch"]
