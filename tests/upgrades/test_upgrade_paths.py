"""Multi-hop upgrade paths through releases that chain their --min-source, and refused plans
that still show every package they would involve (issue 7, finding 6)."""

from __future__ import annotations

from pathlib import Path

from tests.api.helpers import assert_error
from tests.upgrades.builders import codes, inventory, plan, release_with

PACKAGES = {"router-nc": "1.0.2"}


def test_the_shortest_chain_of_releases_is_planned(live, enrolled, tmp_path: Path) -> None:
    # From 5.4: 5.6 and 5.7 take it (a tie: the newest wins), 5.8 needs 5.5, 6.0 needs 5.8,
    # 6.2 needs 6.0. 5.9 takes 5.8 too, but 6.0 is the newest hop that reaches 6.2.
    for version, minimum in [
        ("5.6", "5.0"),
        ("5.7", "5.0"),
        ("5.8", "5.5"),
        ("5.9", "5.8"),
        ("6.0", "5.8"),
        ("6.2", "6.0"),
    ]:
        release_with(live, tmp_path, version, PACKAGES, min_source_version=minimum)
    enrolled.heartbeat(inventory("5.4", PACKAGES))
    verdict = plan(live, "edge-1", "6.2")
    assert verdict["path"] == ["5.7", "5.8", "6.0", "6.2"]
    (reason,) = verdict["reasons"]
    assert reason["code"] == "upgrade_path"
    assert "5.7 -> 5.8 -> 6.0 -> 6.2" in reason["remedy"]
    assert "'nso-repo node upgrade edge-1 --to 5.7'" in reason["remedy"]
    refused = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    error = assert_error(refused, 422, "preflight_failed")
    assert error["details"]["path"] == ["5.7", "5.8", "6.0", "6.2"]
    # The first hop is a plain upgrade.
    first = plan(live, "edge-1", "5.7")
    assert first["ok"], first["reasons"]
    assert first["path"] == ["5.7"]


def test_a_missing_link_is_named(live, enrolled, tmp_path: Path) -> None:
    release_with(live, tmp_path, "5.8", PACKAGES, min_source_version="5.6")
    release_with(live, tmp_path, "6.2", PACKAGES, min_source_version="5.7")
    enrolled.heartbeat(inventory("5.4", PACKAGES))
    verdict = plan(live, "edge-1", "6.2")
    assert verdict["path"] == []
    (reason,) = verdict["reasons"]
    assert reason["code"] == "upgrade_path"
    assert "no chain of defined releases leads from 5.4 to 6.2" in reason["message"]
    assert "5.8 needs 5.6 or newer" in reason["message"]
    assert (
        "define a release at or above 5.6 and below 6.2 with --min-source 5.4 or older"
        in reason["remedy"]
    )


def test_a_refused_plan_lists_every_package_it_would_involve(
    live, enrolled, tmp_path: Path
) -> None:
    files = release_with(
        live, tmp_path, "6.2", {"router-nc": "1.0.3", "l3vpn": "2.1", "extra": "1.0"}
    )
    enrolled.heartbeat(inventory("6.1", {"router-nc": "1.0.2", "l3vpn": "2.1"}))
    verdict = plan(live, "edge-1", "6.2")
    assert codes(verdict["reasons"]) == ["package_extra", "package_version"]
    assert sorted(verdict["packages"]) == sorted(files)
    prestage = verdict["steps"][0]
    assert sorted(p["filename"] for p in prestage["params"]["packages"]) == sorted(files)
