"""A real OpenSSH server (`/usr/sbin/sshd`, Debian's openssh-server) on a loopback port, for
`nso-repo agent bootstrap`: its own host key, one authorized client key, sftp, no
passwords. Runs as root (sshd needs it for privilege separation), stopped at teardown."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import ServerProcess
from tests.support.waiting import wait_until

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    host_key: Path
    client_key: Path
    known_hosts: Path  # holds the host key, as an operator's file would
    process: ServerProcess


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )


def start_sshd(folder: Path) -> SshServer:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_key, client_key = folder / "ssh_host_ed25519_key", folder / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    public = (folder / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
    process = ServerProcess([SSHD, "-D", "-e", "-f", str(config)], folder / "sshd.log", name="sshd")
    process.start()

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 20, 0.1, message="sshd did not listen", details=process.tail)
    return SshServer(port, host_key, client_key, known_hosts, process)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.process.stop()
