"""A start whose package upgrade fails: NSO first spends the CDB load and upgrade time,
then dies with 13, as on a real host (not at once)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from click.testing import CliRunner

from nso_sim.commands import main as nso_sim


def _switch_to(host, artifacts, shell, vsn: str, packages_for: str) -> None:
    """Install ``vsn``, point current at it and link packages compiled for ``packages_for``."""
    shell("sh", artifacts.installer(vsn), "--system-install", "--non-interactive", cwd=host.root)
    current = host.path("/opt/ncs/current")
    current.unlink()
    current.symlink_to(f"ncs-{vsn}")
    _link_packages(host, artifacts, packages_for)


def _link_packages(host, artifacts, vsn: str) -> None:
    load_dir = host.path("/var/opt/ncs/packages")
    for link in load_dir.iterdir():
        link.unlink()
    for pkg in (artifacts.ned(vsn), artifacts.service(vsn)):
        (load_dir / pkg.name).symlink_to(pkg)


def _nominal_starts(host) -> list[float]:
    log = host.path("/var/log/ncs/ncs.log").read_text()
    return [float(n) for n in re.findall(r"Start-up will take ([\d.]+) nominal seconds", log)]


def _statuses_while(host, shell, proc: subprocess.Popen[str]) -> list[str]:
    """What ``ncs --status`` said while ``proc`` ran."""
    seen = []
    while proc.poll() is None:
        out = shell(host.ncs, "--status").stdout
        seen += re.findall(r"^status: (\S+)", out, re.M)
        time.sleep(0.05)
    return seen


def _slow_start_once(host, nominal_seconds: int) -> None:
    args = ["fault", "set", "--root", str(host.root), "start-slow", str(nominal_seconds), "--once"]
    assert CliRunner().invoke(nso_sim, args).exit_code == 0


def test_failed_upgrade_takes_the_nominal_start_time_before_dying_13(make_host, artifacts, shell):
    host = make_host("6.1", [artifacts.ned("6.1"), artifacts.service("6.1")])
    shell(host.init, "stop")
    # The operator forgot to relink: the 6.1 packages stay in the load path of 6.2.
    _switch_to(host, artifacts, shell, "6.2", packages_for="6.1")
    _slow_start_once(host, 150)
    began = time.monotonic()
    proc = subprocess.Popen(
        [str(host.init), "start-with-package-reload"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    statuses = _statuses_while(host, shell, proc)
    took = time.monotonic() - began
    assert proc.returncode == 13
    failing = _nominal_starts(host)[-1]
    assert failing >= 150 and took >= failing * 0.01
    assert "starting" in statuses and "started" not in statuses
    log = host.path("/var/log/ncs/ncs.log").read_text()
    assert log.index("Start-up will take") < log.index("NCS package upgrade failed with reason")
    assert log.rstrip().endswith("Daemon died status=13")
    assert "Daemon died status=13" in proc.stderr.read()

    # The failing start took what the successful one takes: the same CDB, as many packages.
    _link_packages(host, artifacts, "6.2")
    assert shell(host.init, "start-with-package-reload").returncode == 0
    assert _nominal_starts(host)[-1] == pytest.approx(failing - 150)


def test_with_systemd_the_timeout_comes_first_then_nso_dies_13(make_host, artifacts, shell):
    """Releases >= 6.4: a failure past 90 nominal seconds first looks like systemd's timeout
    while NSO is still starting; NSO then dies with 13 (log, and systemctl status)."""
    host = make_host("6.4", [artifacts.ned("6.4"), artifacts.service("6.4")])
    systemctl = host.path("/usr/bin/systemctl")
    assert shell(systemctl, "stop", "ncs").returncode == 0
    _link_packages(host, artifacts, "6.3")  # compiled for another branch: exit 13
    conf = host.path("/etc/ncs/ncs.systemd.conf")
    conf.write_text(conf.read_text().replace("=false", "=true"))
    # Far past the 90 s (0.9 s here, plus the simulator's 1 s allowance), on a loaded machine too.
    _slow_start_once(host, 600)

    started = shell(systemctl, "start", "ncs")
    assert started.returncode == 1
    assert "Job for ncs.service failed because a timeout was exceeded." in started.stderr
    status = shell(host.ncs, "--status")
    assert status.returncode == 0 and "status: starting" in status.stdout.splitlines()
    assert "Active: activating (start)" in shell(systemctl, "status", "ncs").stdout
    assert "Daemon died" not in host.path("/var/log/ncs/ncs.log").read_text()

    deadline = time.monotonic() + 60
    while shell(host.ncs, "--status").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = host.path("/var/log/ncs/ncs.log").read_text()
    assert "requires NCS version 6.3" in log and log.rstrip().endswith("Daemon died status=13")
    unit = shell(systemctl, "status", "ncs")
    assert unit.returncode == 3
    assert "Active: failed (Result: exit-code)" in unit.stdout
    assert "(code=exited, status=13)" in unit.stdout
    assert shell(systemctl, "is-active", "ncs").stdout.strip() == "failed"
