"""Uploads, releases and node inventories for the compatibility and preflight tests.

Everything goes through the real HTTP API; `inventory` follows the agent's inventory
contract (docs/agent-protocol.md, "Heartbeat and inventory").
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import requests

from tests.api.helpers import put_file
from tests.factories import make_installer, make_package

GiB = 1 << 30
# Leaves a field out of the inventory: what the agent does when it could not learn the fact.
UNKNOWN: Any = object()


def upload(live: Any, path: Path) -> str:
    answer = put_file(live.session("uploader"), live.url, path)
    assert answer.status_code in (200, 201), answer.text
    return path.name


def upload_package(live: Any, folder: Path, name: str, version: str, nso: str, **meta: Any) -> str:
    """Upload `ncs-<nso>-<name>-<version>.tar.gz` (meta: min_version, max_version, requires)."""
    folder.mkdir(parents=True, exist_ok=True)
    return upload(
        live, make_package(Path(tempfile.mkdtemp(dir=folder)), name, version, nso, **meta)
    )


def define_release(
    live: Any, folder: Path, version: str, packages: list[str], **requirements: Any
) -> requests.Response:
    """Upload the installer for `version` and ask for the release; the answer is returned."""
    sub = folder / f"installer-{version}"
    sub.mkdir(parents=True, exist_ok=True)
    installer = upload(live, make_installer(sub, version))
    return live.session("operator").post(
        f"{live.url}/api/v1/releases",
        json={
            "nso_version": version,
            "installer": installer,
            "packages": packages,
            "requirements": requirements,
        },
    )


def release_with(
    live: Any, folder: Path, version: str, packages: dict[str, str], **requirements: Any
) -> list[str]:
    """A release of `version` with builds of `packages` for its branch; their file names."""
    branch = ".".join(version.split(".")[:2])
    files = [upload_package(live, folder, n, v, branch) for n, v in packages.items()]
    answer = define_release(live, folder, version, files, **requirements)
    assert answer.status_code == 201, answer.text
    return files


def inventory(
    version: str = "6.1", packages: Optional[dict[str, str]] = None, **changes: Any
) -> dict[str, Any]:
    """A healthy, started node on `version`; `changes` replace fields (UNKNOWN drops one)."""
    branch = ".".join(version.split(".")[:2])
    loaded = {"router-nc": "1.0.2"} if packages is None else packages
    facts: dict[str, Any] = {
        "installed_releases": [version],
        "current": version,
        "running_version": version,
        "status": "started",
        "packages": [
            {"name": n, "version": v, "file": f"ncs-{branch}-{n}-{v}.tar.gz", "oper_status": "up"}
            for n, v in loaded.items()
        ],
        "ha": {"enabled": False, "mode": "none", "current_id": None, "read_only": False},
        "disk_free_bytes": {"/opt/ncs": 20 * GiB, "/var/opt/ncs": 20 * GiB},
        "java": "17.0.8",
        "glibc": "2.34",
        "ncs_conf_elements": ["ncs-config", "load-path", "dir"],
        "crypto_keys": ["AESCFB128_KEY", "AES256CFB128_KEY"],
        "cdb_bytes": 10 << 20,
    }
    facts.update(changes)
    return {key: value for key, value in facts.items() if value is not UNKNOWN}


def plan(live: Any, node: str, to: str, **options: str) -> dict[str, Any]:
    answer = live.session("operator").get(
        f"{live.url}/api/v1/nodes/{node}/plan", params={"to": to, **options}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def codes(reasons: list[dict[str, Any]]) -> list[str]:
    return sorted(reason["code"] for reason in reasons)


def package_upgrade(live: Any, node: str, packages: list[str]) -> requests.Response:
    return live.session("operator").post(
        f"{live.url}/api/v1/nodes/{node}/package-upgrade", json={"packages": packages}
    )


def healthy_inventory(
    version: str = "6.1", packages: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """A healthy started node on ``version`` running a NED and a service package."""
    packages = {"router-nc": "1.0.2", "l3vpn": "2.1"} if packages is None else packages
    return inventory(version, packages, os={"id": "rhel", "version_id": "9.2"})


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


def enroll_node(live: Any, name: str) -> Agent:
    """Register ``name`` as an operator and enroll it: the node's agent."""
    added = live.session("operator").post(f"{live.url}/api/v1/nodes", json={"name": name})
    assert added.status_code == 201, added.text
    enrolled = requests.post(
        f"{live.url}/api/v1/agent/enroll",
        json={"enrollment_token": added.json()["enrollment_token"], "hostname": f"{name}.lab"},
    )
    assert enrolled.status_code == 201, enrolled.text
    return Agent(live.url, enrolled.json()["token"])


def start_patch_rollout(
    live: Any, folder: Path, nodes: list[str], patch_id: str, modules: tuple[str, ...]
) -> requests.Response:
    """Upload an NSO 6.2 patch bundle of ``modules`` and roll it out to ``nodes``."""
    from tests.factories import make_patch_bundle

    bundle = make_patch_bundle(folder, "6.2", patch_id, modules)
    with bundle.open("rb") as fh:
        put = live.session("uploader").put(f"{live.url}/api/v1/artifacts/{bundle.name}", data=fh)
    assert put.status_code == 201, put.text
    started = live.session("operator").post(
        f"{live.url}/api/v1/patch-rollouts", json={"patch": bundle.name, "nodes": nodes}
    )
    assert started.status_code == 201, started.text
    return started


BACKUP_FILE = "/var/opt/ncs/backups/ncs-6.1@2026-11-30T01:00:00.backup.gz"
FINGERPRINT = "sha256:" + "f1" * 32


def agent_result(step: dict[str, Any]) -> dict[str, Any]:
    """What a real agent reports when ``step`` succeeds: the folders of its own job."""
    job_dir = f"/var/opt/ncs/backups/nso-agent-job-{step['job_id']}"
    return {
        "backup": {"backup_file": BACKUP_FILE, "extra_dir": f"{job_dir}/package-links"},
        "stop": {"fingerprint": FINGERPRINT, "stopped_at": "2026-11-30T01:02:03+00:00"},
        "restore_point": {"restore_point": f"{job_dir}/restore-point", "restore_point_token": "t1"},
    }.get(step["name"], {})


def start_upgrade(live: Any, agent: Agent, node: str = "edge-1", to: str = "6.2") -> dict[str, Any]:
    """A healthy 6.1 inventory from ``agent``, then an operator's upgrade of ``node``: the job."""
    agent.heartbeat(healthy_inventory("6.1"))
    answer = live.session("operator").post(
        f"{live.url}/api/v1/nodes/{node}/upgrade", json={"to": to}
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def nso_repo(live: Any, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``nso-repo ARGS`` against the live server with the token of ``role``."""
    env = {**os.environ, "NSO_REPO_URL": live.url, "NSO_REPO_TOKEN": live.tokens[role]}
    return subprocess.run(
        [sys.executable, "-m", "repo_server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
