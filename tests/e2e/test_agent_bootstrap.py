"""`nso-repo agent bootstrap` against a real OpenSSH server on a loopback port: the agent is
installed from a wheelhouse into its own virtual environment, configured, enrolled with a
token that never appears on a command line, given its systemd unit, and then serves a
simulated NSO host; a host key nobody vouched for stops it before anything happens."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import REPO, ServerProcess, clean_env
from tests.support.waiting import wait_until

from .conftest import WORKER, branch

BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nso-fleet built from this tree and the agent's dependencies, as wheels (pip fetches
    the dependencies from the package index, as an operator preparing one does)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    made = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(folder), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return folder


@pytest.fixture
def installed_agents() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


def bootstrap(
    server, sshd, folder: Path, node: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`nso-repo agent bootstrap` as an operator runs it, the NSO CLI password in the
    environment."""
    args = (
        "agent", "bootstrap", "127.0.0.1",
        "--node", node, "--server-url", server.url, "--wheelhouse", str(folder / "wheels"),
        "--ssh-port", str(sshd.port), "--ssh-key", str(sshd.client_key),
        "--python", BASE_PYTHON,
        "--prefix", str(folder / "opt/nso-agent"),
        "--config-dir", str(folder / "etc/nso-agent"),
        "--unit-dir", str(folder / "etc/systemd/system"),
        *extra,
        "--url", server.url, "--token", server.admin,
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "repo_server.cli", *args],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(REPO), NSO_CLI_PASSWORD="admin"),
        timeout=600,
    )


def test_bootstrap_installs_enrolls_and_the_agent_serves_its_host(
    shared_server,
    sshd,
    wheelhouse,
    make_host,
    builds,
    installed_agents,
    tmp_path,
) -> None:
    host = make_host("6.1", builds.packages(branch("6.1")))
    node = f"boot-{WORKER}-{os.getpid()}"
    (tmp_path / "wheels").symlink_to(wheelhouse)

    # A host key nobody vouched for: refused before anything is installed.
    refused = bootstrap(
        shared_server, sshd, tmp_path, node, "--known-hosts", str(tmp_path / "empty_known_hosts")
    )
    assert refused.returncode == 1
    assert f"host key of [127.0.0.1]:{sshd.port} is unknown (ssh-ed25519 SHA256:" in refused.stderr
    assert not (tmp_path / "opt").exists()
    assert shared_server.api("GET", f"/nodes/{node}").status_code == 404

    done = bootstrap(
        shared_server,
        sshd,
        tmp_path,
        node,
        "--known-hosts", str(sshd.known_hosts),
        "--host-root", str(host.root),
        "--cli-host", host.address, "--cli-port", str(host.cli_port),
        "--cli-password-env", "NSO_CLI_PASSWORD",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "connected to root@127.0.0.1" in out and f"registered node {node}" in out
    assert f"enrolled as node {node}" in out
    assert "systemd does not run on the host" in out  # this machine has no systemd
    config = tmp_path / "etc/nso-agent/agent.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    token_file = host.path("/var/lib/nso-agent/node-token")  # under the host root
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    unit = (tmp_path / "etc/systemd/system/nso-agent.service").read_text()
    assert f"ExecStart={tmp_path}/opt/nso-agent/bin/nso-agent run" in unit
    assert f"Environment=NSO_AGENT_CONFIG={config}" in unit
    # The enrollment token never was an argument of a command the host ran.
    assert "nse_" not in (sshd.process.log.read_text())
    # The installed agent, started as its unit would, serves the simulated host.
    agent = ServerProcess(
        [str(tmp_path / "opt/nso-agent/bin/nso-agent"), "--config", str(config), "run"],
        tmp_path / "agent.log",
        env=clean_env(),
        name="installed nso-agent",
    )
    installed_agents.append(agent)
    agent.start()

    def inventory() -> dict:
        info = shared_server.api("GET", f"/nodes/{node}").json()
        return info.get("inventory") or {}

    seen = wait_until(lambda: inventory().get("running_version"), 60, 0.5, details=agent.tail)
    assert seen == "6.1"
    # Again (an agent upgrade, a rebuilt host): same folders, a new enrollment.
    again = bootstrap(
        shared_server, sshd, tmp_path, node, "--known-hosts", str(sshd.known_hosts),
        "--host-root", str(host.root), "--no-start",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"registered node {node}" not in again.stdout
