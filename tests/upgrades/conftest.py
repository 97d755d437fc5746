"""Fixtures for the fleet and upgrade API: a published release and an enrolled node.

The "agent" here is a plain HTTP client speaking docs/agent-protocol.md, so these tests
exercise the server's side of the protocol; tests/e2e drives real agents.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from tests.api.helpers import put_file
from tests.factories import make_installer, make_package

GiB = 1 << 30


def healthy_inventory(
    version: str = "6.1", packages: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    packages = {"router-nc": "1.0.2", "l3vpn": "2.1"} if packages is None else packages
    return {
        "installed_releases": [version],
        "current": version,
        "running_version": version,
        "status": "started",
        "packages": [
            {"name": n, "version": v, "file": f"ncs-{version}-{n}-{v}.tar.gz", "oper_status": "up"}
            for n, v in packages.items()
        ],
        "ha": {"enabled": False, "mode": "none"},
        "disk_free_bytes": {"/opt/ncs": 20 * GiB, "/var/opt/ncs": 20 * GiB},
        "os": {"id": "rhel", "version_id": "9.2"},
        "java": "17.0.8",
        "glibc": "2.34",
        "ncs_conf_elements": ["ncs-config", "load-path", "dir"],
        "crypto_keys": ["AESCFB128_KEY", "AES256CFB128_KEY"],
        "cdb_bytes": 10 << 20,
    }


@dataclass
class Agent:
    """A plain HTTP client speaking the agent protocol for one node."""

    url: str
    token: str

    @property
    def http(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def heartbeat(self, inventory: dict[str, Any]) -> requests.Response:
        return self.http.post(f"{self.url}/api/v1/agent/heartbeat", json={"inventory": inventory})

    def next(self, wait: int = 0) -> Optional[dict[str, Any]]:
        answer = self.http.get(
            f"{self.url}/api/v1/agent/next", params={"wait": wait}, timeout=wait + 30
        )
        if answer.status_code == 204:
            return None
        assert answer.status_code == 200, answer.text
        return answer.json()["step"]

    def report(
        self, step_id: int, state: str, report_id: Optional[str] = None, **fields: Any
    ) -> requests.Response:
        body = {"report_id": report_id or uuid.uuid4().hex, "state": state, **fields}
        return self.http.post(f"{self.url}/api/v1/agent/steps/{step_id}", json=body)


def publish_release(
    live, tmp_path: Path, version: str, packages: dict[str, str], **requirements: Any
) -> dict[str, Any]:
    uploader = live.session("uploader")
    branch = ".".join(version.split(".")[:2])
    folder = tmp_path / f"release-{version}"
    folder.mkdir(exist_ok=True)
    files = [make_installer(folder, version)]
    for name, pkg_version in packages.items():
        sub = folder / name
        sub.mkdir(exist_ok=True)
        files.append(make_package(sub, name, pkg_version, branch))
    for path in files:
        assert put_file(uploader, live.url, path).status_code in (200, 201)
    answer = live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={
            "nso_version": version,
            "installer": files[0].name,
            "packages": [p.name for p in files[1:]],
            "requirements": requirements,
        },
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


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
