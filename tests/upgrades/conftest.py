"""Fixtures for the fleet and upgrade API: a published release and an enrolled node.

The "agent" here is a plain HTTP client speaking docs/agent-protocol.md, so these tests
exercise the server's side of the protocol; tests/e2e drives real agents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.upgrades.builders import Agent, publish_release


@pytest.fixture
def enrolled(live) -> Agent:
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": "edge-1"})
    assert added.status_code == 201, added.text
    enrolled = requests.post(
        f"{live.url}/api/v1/agent/enroll",
        json={"enrollment_token": added.json()["enrollment_token"], "hostname": "edge-1.lab"},
    )
    assert enrolled.status_code == 201, enrolled.text
    return Agent(live.url, enrolled.json()["token"])


@pytest.fixture
def releases(live, tmp_path: Path) -> dict[str, Any]:
    pkgs = {"router-nc": "1.0.2", "l3vpn": "2.1"}
    return {
        "6.1": publish_release(live, tmp_path, "6.1", pkgs),
        "6.2": publish_release(
            live, tmp_path, "6.2", pkgs, java="11", glibc="2.28", min_source_version="5.7"
        ),
    }
