"""Simulated NSO hosts for tests (a pytest plugin): artifacts built once per session,
hosts made with ``nso-sim host create`` on loopback addresses and ports of their own, and
clients that talk to them as an operator would (shell commands by path, the NSO CLI over
real SSH). Every daemon a test starts is stopped at teardown.

Fixtures: ``shell``, ``sim``, ``artifacts``, ``make_host``, ``make_cluster``. Needs only the
agent's dependencies (paramiko), so the agent's Python 3.9 run loads it too.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paramiko
import pytest

from tests.support.ports import free_port, worker_number
from tests.support.processes import REPO
from tests.support.waiting import wait_until

TIME_SCALE = 0.01
_host_numbers = itertools.count(1)


def next_address() -> str:
    """A loopback address of its own per host: 127.<20+worker>.<n>.<m>."""
    n = next(_host_numbers)
    return f"127.{20 + worker_number()}.{n // 250}.{n % 250 + 1}"


def sim(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``nso-sim`` (as ``python -m nso_sim`` so no install step is needed)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "nso_sim", *args],
        check=check,
        capture_output=True,
        text=True,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


def run(
    *cmd: str | os.PathLike[str],
    cwd: Optional[Path] = None,
    env: Optional[dict[str, str]] = None,
    input: Optional[str] = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command as an operator types it: by path, with a clean environment."""
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )


@dataclass
class SimHost:
    root: Path
    address: str
    cli_port: int
    ipc_port: int
    ha_port: int
    clients: list[paramiko.SSHClient] = field(default_factory=list)

    def path(self, host_path: str) -> Path:
        """``/var/opt/ncs`` on the simulated host -> the real path under its root."""
        return self.root / host_path.lstrip("/")

    @property
    def ncs(self) -> Path:
        return self.path("/opt/ncs/current/bin/ncs")

    @property
    def init(self) -> Path:
        return self.path("/etc/init.d/ncs")

    def sh(self, *cmd: str | os.PathLike[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return run(*cmd, **kw)  # type: ignore[arg-type]

    def start(self, verb: str = "start") -> subprocess.CompletedProcess[str]:
        if not self.init.exists():  # NSO >= 6.4: systemd replaces the init script
            return run(self.path("/usr/bin/systemctl"), verb, "ncs")
        return run(self.init, verb)

    def ssh(
        self,
        user: str = "admin",
        password: Optional[str] = "admin",
        pkey: Optional[paramiko.PKey] = None,
    ) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            self.address,
            self.cli_port,
            username=user,
            password=password,
            pkey=pkey,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        self.clients.append(client)
        return client

    def cli(self, command: str, client: Optional[paramiko.SSHClient] = None) -> tuple[str, int]:
        """One ``ssh -p PORT host 'command'``: (output, exit status)."""
        client = client or (self.clients[0] if self.clients else self.ssh())
        _, out, _ = client.exec_command(command, timeout=120)
        text = out.read().decode()
        return text, out.channel.recv_exit_status()

    def ncs_cli(self, *lines: str) -> subprocess.CompletedProcess[str]:
        return run(
            self.path("/opt/ncs/current/bin/ncs_cli"),
            "-C",
            "-u",
            "admin",
            input="".join(line + "\n" for line in lines),
        )

    def wait_for(self, command: str, expected: str, timeout: float = 20) -> str:
        """The output of CLI ``command`` once it contains ``expected``."""

        last = ""

        def shows() -> str:
            nonlocal last
            last = self.cli(command)[0]
            return last if expected in last else ""

        return wait_until(
            shows,
            timeout,
            0.05,
            message=f"{self.address}: {command!r} never showed {expected!r}",
            details=lambda: f"last output: {last!r}",
        )

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.ncs.exists():
            run(self.ncs, "--stop", timeout=60)
        pid_file = self.path("/.nso-sim/ncs.pid")
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass


@dataclass
class Artifacts:
    dir: Path

    def installer(self, vsn: str) -> Path:
        path = self.dir / f"nso-{vsn}.linux.x86_64.installer.bin"
        if not path.exists():
            sim("make-installer", vsn, "--out", str(self.dir))
        return path

    def package(self, name: str, version: str, nso: str, *extra: str) -> Path:
        sub = self.dir / ("-".join([nso, name, version, *extra]).replace("/", "_"))
        path = sub / f"ncs-{nso}-{name}-{version}.tar.gz"
        if not path.exists():
            sim("make-package", name, version, "--nso", nso, "--out", str(sub), *extra)
        return path

    def ned(self, nso: str, version: str = "1.0", ned_id: str = "router-nc-1.0") -> Path:
        return self.package("router-nc", version, nso, "--ned-id", ned_id)

    def service(self, nso: str, version: str = "1.0", name: str = "l3vpn") -> Path:
        return self.package(name, version, nso)

    def host_key(self) -> Path:
        """One SSH host key for every host of the session, so ``host create`` need not
        generate one each time (operators provision keys the same way)."""
        path = self.dir / "ssh_host_rsa_key"
        if not path.exists():
            paramiko.RSAKey.generate(2048).write_private_key_file(str(path))
        return path


@pytest.fixture
def shell() -> object:
    """``shell("cmd", ...)``: run a command by path with a clean environment."""
    return run


@pytest.fixture(name="sim")
def sim_fixture() -> object:
    """``sim("fault", "set", ...)``: run ``nso-sim``, as the function ``sim`` does."""
    return sim


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return Artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture
def make_host(tmp_path: Path, artifacts: Artifacts) -> Iterator[object]:
    """Create hosts with ``nso-sim host create``; all are stopped at teardown."""
    hosts: list[SimHost] = []
    names = itertools.count(1)

    def factory(
        version: str = "6.1",
        packages: Optional[list[Path]] = None,
        start: bool = True,
        address: Optional[str] = None,
        ha_port: Optional[int] = None,
        extra: tuple[str, ...] = (),
        shared_host_key: bool = True,
    ) -> SimHost:
        address = address or next_address()
        root = tmp_path / f"host{next(names)}"
        host = SimHost(
            root, address, free_port(address), free_port(address), ha_port or free_port(address)
        )
        args = [
            "host",
            "create",
            "--root",
            str(root),
            "--version",
            version,
            "--address",
            address,
            "--cli-port",
            str(host.cli_port),
            "--ipc-port",
            str(host.ipc_port),
            "--ha-port",
            str(host.ha_port),
            "--time-scale",
            str(TIME_SCALE),
            "--installer",
            str(artifacts.installer(version)),
        ]
        if shared_host_key:
            args += ["--ssh-host-key", str(artifacts.host_key())]
        if packages is None:
            packages = [artifacts.ned(version), artifacts.service(version)]
        for pkg in packages:
            args += ["--package", str(pkg)]
        sim(*args, *extra)
        hosts.append(host)
        if start:
            result = host.start()
            assert result.returncode == 0, result.stdout + result.stderr
        return host

    yield factory
    for host in hosts:
        host.stop()


@pytest.fixture
def make_cluster(make_host: object) -> object:
    """``make_cluster(version, roles)``: HA nodes n1.. sharing keys and an HA port, started
    in order. ``roles`` like ``["primary", "secondary:failover", "secondary"]``."""

    def factory(
        version: str = "6.1",
        roles: tuple[str, ...] = ("primary", "secondary:failover"),
        packages: Optional[list[Path]] = None,
        keys_from: Optional[SimHost] = None,
        versions: Optional[list[str]] = None,
        start: bool = True,
        extra: tuple[str, ...] = (),
    ) -> list[SimHost]:
        addresses = [next_address() for _ in roles]
        ha_port = free_port(*addresses)
        spec = [f"--ha-node=n{i}={a}:{r}" for i, (a, r) in enumerate(zip(addresses, roles), 1)]
        hosts: list[SimHost] = []
        for i, address in enumerate(addresses):
            args = [*spec, "--ha-id", f"n{i + 1}", *extra]
            source = keys_from or (hosts[0] if hosts else None)
            if source is not None:
                args += ["--crypto-keys", str(source.path("/etc/ncs/ncs.crypto_keys"))]
            vsn = versions[i] if versions else version
            hosts.append(
                make_host(
                    vsn, packages, start=False, address=address, ha_port=ha_port, extra=tuple(args)
                )
            )  # type: ignore[operator]
        if start:
            for host in hosts:
                result = host.start()
                assert result.returncode == 0, result.stderr
        return hosts

    return factory
