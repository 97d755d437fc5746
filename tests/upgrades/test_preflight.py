"""Preflight refuses with every reason and what to do; the plan lists the ordered steps."""

from __future__ import annotations

from pathlib import Path

from tests.api.helpers import assert_error
from tests.upgrades.builders import GiB, healthy_inventory, publish_release

EXPECTED_STEPS = [
    "prestage",
    "backup",
    "stop",
    "restore_point",
    "compact",
    "switch_current",
    "relink_packages",
    "start",
    "verify",
]


def _plan(live, to: str, **options) -> dict:
    answer = live.session("operator").get(
        f"{live.url}/api/v1/nodes/edge-1/plan", params={"to": to, **options}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_healthy_node_gets_a_major_plan(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1"))
    plan = _plan(live, "6.2")
    assert plan["ok"] is True, plan["reasons"]
    assert plan["kind"] == "major"
    assert [s["name"] for s in plan["steps"]] == EXPECTED_STEPS
    prestage = plan["steps"][0]["params"]
    assert sorted(p["filename"] for p in prestage["packages"]) == [
        "ncs-6.2-l3vpn-2.1.tar.gz",
        "ncs-6.2-router-nc-1.0.2.tar.gz",
    ]
    assert prestage["installer"]["filename"] == "nso-6.2.linux.x86_64.installer.bin"


def test_maintenance_upgrade_is_computed(live, enrolled, tmp_path: Path) -> None:
    publish_release(live, tmp_path, "6.1.2", {"router-nc": "1.0.2"})
    enrolled.heartbeat(healthy_inventory("6.1.1", {"router-nc": "1.0.2"}))
    plan = _plan(live, "6.1.2")
    assert plan["ok"] and plan["kind"] == "maintenance"


def test_every_reason_is_listed_with_a_remedy(live, enrolled, tmp_path: Path) -> None:
    publish_release(live, tmp_path, "5.8", {"router-nc": "1.0.2"}, min_source_version="5.4")
    publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2"}, min_source_version="5.7")
    inventory = healthy_inventory("5.4", {"router-nc": "1.0.2", "l3vpn": "2.1"})
    inventory["crypto_keys"] = ["AESCFB128_KEY"]
    inventory["ncs_conf_elements"] += ["show-log-directory", "large-scale"]
    inventory["disk_free_bytes"]["/var/opt/ncs"] = 1 << 20
    enrolled.heartbeat(inventory)
    plan = _plan(live, "6.2")
    assert plan["ok"] is False
    codes = sorted(r["code"] for r in plan["reasons"])
    assert codes == sorted(
        [
            "package_missing",  # l3vpn has no 6.2 build
            "upgrade_path",  # 5.4 is too old for 6.2
            "aes256_key_missing",
            "ncs_conf_removed_element",  # show-log-directory
            "ncs_conf_removed_element",  # large-scale
            "disk_space",
        ]
    )
    assert all(len(r["remedy"]) > 10 for r in plan["reasons"])
    hop = next(r for r in plan["reasons"] if r["code"] == "upgrade_path")
    assert "5.8" in hop["remedy"]
    assert plan["path"] == ["5.8", "6.2"]
    refused = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    error = assert_error(refused, 422, "preflight_failed")
    assert len(error["details"]["reasons"]) == 6
    # Stripping the removed elements turns those refusals into a plan step.
    stripped = _plan(live, "6.2", strip_removed_ncs_conf="true")
    assert "ncs_conf_removed_element" not in [r["code"] for r in stripped["reasons"]]
    assert "ncs_conf" in [s["name"] for s in stripped["steps"]]


def test_platform_and_health_rules(live, enrolled, releases) -> None:
    inventory = healthy_inventory("6.1")
    inventory["java"] = "1.8.0_382"
    inventory["packages"][0]["oper_status"] = "file-load-error"
    inventory["ha"] = {"enabled": True, "mode": "primary"}
    inventory["disk_free_bytes"] = {"/opt/ncs": 20 * GiB}
    enrolled.heartbeat(inventory)
    codes = {r["code"] for r in _plan(live, "6.2")["reasons"]}
    assert codes == {"java_too_old", "packages_down", "ha_member", "disk_unknown"}
    stopped = healthy_inventory("6.1")
    stopped["status"] = "stopped"
    stopped["running_version"] = None
    enrolled.heartbeat(stopped)
    assert "not_running" in {r["code"] for r in _plan(live, "6.2")["reasons"]}


def test_extra_and_mismatched_packages(live, enrolled, releases) -> None:
    enrolled.heartbeat(healthy_inventory("6.1", {"router-nc": "1.0.1"}))
    codes = {r["code"] for r in _plan(live, "6.2")["reasons"]}
    assert codes == {"package_version", "package_extra"}
    enrolled.heartbeat(healthy_inventory("6.1", {"router-nc": "1.0.2"}))
    assert {r["code"] for r in _plan(live, "6.2")["reasons"]} == {"package_extra"}
    allowed = _plan(live, "6.2", allow_extra_packages="true")
    assert allowed["ok"] and len(allowed["packages"]) == 2


def test_free_space_counts_the_backup_the_restore_point_and_the_compaction(
    live, enrolled, releases
) -> None:
    """The restore point copies the run dir while NSO is stopped: it must fit beside the
    ncs-backup archive and the compacted CDB, or the node would stop for nothing."""
    inventory = healthy_inventory("6.1", {"router-nc": "1.0.2", "l3vpn": "2.1"})
    inventory["run_dir_bytes"] = 2 * GiB
    inventory["cdb_bytes"] = 1 * GiB
    inventory["disk_free_bytes"]["/var/opt/ncs"] = 7 * GiB  # 2 + 2 + 2 + 1 GiB, no margin
    enrolled.heartbeat(inventory)
    short = next(r for r in _plan(live, "6.2")["reasons"] if r["code"] == "disk_space")
    assert "/var/opt/ncs has 7168 MiB free" in short["message"]
    assert "7232 MiB" in short["message"]  # 3 x 2 + 1 GiB + the 64 MiB margin
    inventory["disk_free_bytes"]["/var/opt/ncs"] = 8 * GiB
    enrolled.heartbeat(inventory)
    assert "disk_space" not in {r["code"] for r in _plan(live, "6.2")["reasons"]}
    # Sizes the agent could not read are unknown, not zero.
    del inventory["cdb_bytes"], inventory["run_dir_bytes"]
    enrolled.heartbeat(inventory)
    unknown = [r for r in _plan(live, "6.2")["reasons"] if r["code"] == "disk_unknown"]
    assert len(unknown) == 1 and "cdb_bytes" in unknown[0]["message"]
