"""Fault injection per host: each knob makes the simulated NSO fail the way real NSO can."""

from __future__ import annotations

import contextlib

from tests.support.sim_hosts import run, sim


def _fault(host, *args: str) -> None:
    sim("fault", "set", "--root", str(host.root), *args)


def test_installer_fails(make_host, artifacts):
    host = make_host("6.1", [], start=False)
    _fault(host, "installer-fail", "checksum mismatch", "--once")
    failed = run(
        "sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root
    )
    assert failed.returncode == 1 and "checksum mismatch" in failed.stderr
    assert not host.path("/opt/ncs/ncs-6.2").exists()
    again = run(
        "sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root
    )
    assert again.returncode == 0


def test_start_fails_with_given_exit_code_once(make_host):
    host = make_host("6.1", [], start=False)
    _fault(host, "start-exit", "14", "--once")
    assert run(host.init, "start").returncode == 14
    assert "Daemon died status=14" in host.path("/var/log/ncs/ncs.log").read_text()
    assert run(host.init, "start").returncode == 0


def test_daemon_crashes_during_reload(make_host):
    host = make_host("6.1")
    before = host.cli("show running-config")[0]
    _fault(host, "reload-crash", "--once")
    client = host.ssh()
    with contextlib.suppress(Exception):  # the session dies with the daemon
        host.cli("packages reload", client)
    assert "connection refused" in run(host.ncs, "--status").stderr
    assert run(host.init, "start").returncode == 0
    host.clients.clear()
    assert host.cli("show running-config")[0] == before


def test_disk_full(make_host, artifacts):
    host = make_host("6.1", start=False)
    _fault(host, "disk-full")
    backup = run(host.path("/opt/ncs/current/bin/ncs-backup"))
    assert backup.returncode == 1 and "No space left on device" in backup.stderr
    inst = run(
        "sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root
    )
    assert inst.returncode == 1 and "No space left on device" in inst.stderr
    sim("fault", "clear", "--root", str(host.root))
    assert run(host.path("/opt/ncs/current/bin/ncs-backup")).returncode == 0


def test_corrupt_backup_cannot_be_restored(make_host):
    host = make_host("6.1", start=False)
    _fault(host, "backup-corrupt", "--once")
    assert run(host.path("/opt/ncs/current/bin/ncs-backup")).returncode == 0
    restore = run(host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", "--non-interactive")
    assert restore.returncode == 1 and "corrupt" in restore.stderr
    assert host.path("/var/opt/ncs/cdb/A.cdb").exists()  # nothing was moved away


def test_fault_list_names_every_knob(make_host):
    host = make_host("6.1", [], start=False)
    _fault(host, "start-slow", "30")
    listing = sim("fault", "list", "--root", str(host.root)).stdout
    for name in (
        "installer-fail",
        "start-exit",
        "start-slow",
        "reload-crash",
        "disk-full",
        "backup-corrupt",
        "ha-link-down",
    ):
        assert name in listing
    assert "ARMED" in listing.split("start-slow")[1].splitlines()[0]


def test_skip_lets_the_first_occasions_pass(make_host, artifacts):
    """`--skip 1`: the first install runs, the second fails, the third (`--once`) runs."""
    host = make_host("6.1", [], start=False)
    _fault(host, "installer-fail", "checksum mismatch", "--once", "--skip", "1")
    install = ("sh", artifacts.installer("6.2"), "--system-install", "--non-interactive")
    outcomes = [run(*install, cwd=host.root).returncode for _ in range(3)]
    assert outcomes == [0, 1, 0]


def test_a_fault_that_holds_while_armed_takes_no_skip_or_once(make_host):
    host = make_host("6.1", [], start=False)
    for extra in (("--skip", "1"), ("--once",)):
        refused = sim("fault", "set", "--root", str(host.root), "ha-link-down", *extra, check=False)
        assert refused.returncode == 2 and "clear it instead" in refused.stderr
    assert "ARMED" not in sim("fault", "list", "--root", str(host.root)).stdout
