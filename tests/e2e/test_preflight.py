"""Preflight against a real agent's inventory of a simulated host: every reason, with a remedy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.nso_repo import RepoServer
from tests.support.waiting import wait_until

from .conftest import Builds, published_server


@pytest.fixture
def bare_server(tmp_path: Path, builds: Builds) -> Iterator[RepoServer]:
    folder = tmp_path / "server"
    folder.mkdir()
    server = published_server(folder, builds, {})
    yield server
    server.stop()


def _release(
    server: RepoServer, builds: Builds, version: str, packages: list[Path], **needs: Any
) -> None:
    server.publish(version, builds.installer(version), packages, **needs)


def test_preflight_refuses_with_every_reason(
    bare_server, builds, make_node, tmp_path: Path
) -> None:
    # An old NSO 5.2 host: no AES256CFB128 key (5.2 does not need one) and <show-log-directory>
    # in ncs.conf (valid until 5.5); it runs a NED and a service package.
    keys = tmp_path / "ncs.crypto_keys"
    keys.write_text("AESCFB128_KEY=0123456789abcdef0123456789abcdef\n")
    node = make_node(bare_server, "5.2", extra=("--crypto-keys", str(keys)))
    conf = node.host.root / "etc/ncs/ncs.conf"
    text = conf.read_text()
    conf.write_text(
        text.replace(
            "</ncs-config>",
            "  <show-log-directory>/var/log/ncs</show-log-directory>\n</ncs-config>",
        )
    )
    _release(bare_server, builds, "5.8", builds.packages("5.8"), min_source_version="5.0")
    # 6.2: only the NED is rebuilt, it needs 5.7 or newer, and more disk than any host has.
    ned_only = [p for p in builds.packages("6.2") if "router-nc" in p.name]
    _release(bare_server, builds, "6.2", ned_only, min_source_version="5.7", min_free_bytes=1 << 50)

    def edited_inventory() -> Any:
        inventory = node.info()["inventory"]
        return "show-log-directory" in inventory.get("ncs_conf_elements", []) and inventory

    inventory = wait_until(
        edited_inventory,
        60,
        0.5,
        message="the agent never reported the edited ncs.conf",
        details=lambda: f"inventory: {node.info()['inventory']}",
    )
    assert "AES256CFB128_KEY" not in inventory["crypto_keys"]

    plan = bare_server.api("GET", f"/nodes/{node.name}/plan", params={"to": "6.2"}).json()
    assert plan["ok"] is False
    codes = sorted(r["code"] for r in plan["reasons"])
    assert codes == [
        "aes256_key_missing",
        "disk_space",
        "ncs_conf_removed_element",
        "package_missing",
        "upgrade_path",
    ], plan["reasons"]
    assert all(r["remedy"] for r in plan["reasons"])
    assert plan["path"] == ["5.8", "6.2"]  # the intermediate hop is offered
    missing = next(r for r in plan["reasons"] if r["code"] == "package_missing")
    assert "l3vpn" in missing["message"] and "ncs-6.2-l3vpn" in missing["remedy"]
    refused = bare_server.api("POST", f"/nodes/{node.name}/upgrade", json={"to": "6.2"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "preflight_failed"
    # The hop itself passes: 5.8 has every package and 5.2 may upgrade to it directly,
    # except for the key that 5.8 needs.
    hop = bare_server.api("GET", f"/nodes/{node.name}/plan", params={"to": "5.8"}).json()
    assert sorted(r["code"] for r in hop["reasons"]) == [
        "aes256_key_missing",
        "ncs_conf_removed_element",
    ]
