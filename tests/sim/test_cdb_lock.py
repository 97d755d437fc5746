"""A running NSO holds its CDB: compaction, restore and a second daemon are refused until it
has shut down; a killed daemon's lock goes with it. And ``ncs --status`` names the release
of the daemon that runs, not of the command."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import time


def _daemon_pid(host) -> int:
    return int(host.path("/.nso-sim/ncs.pid").read_text())


def test_cdb_compact_refuses_a_running_cdb_then_works_once_stopped(make_host, shell):
    host = make_host("6.1")
    assert host.cli("config\nl3vpn extra customer x\ncommit")[1] == 0  # a write-log entry
    cdb = host.path("/var/opt/ncs/cdb")
    data = (cdb / "A.cdb").read_bytes()
    refused = shell(host.ncs, "--cdb-compact", cdb)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"ncs: cannot compact: {cdb} is in use by NSO (pid {_daemon_pid(host)}); stop NSO first"
    )
    assert (cdb / "A.cdb").read_bytes() == data
    assert host.cli("show running-config l3vpn extra")[0].startswith("l3vpn extra")

    shell(host.init, "stop")  # returns once the daemon is gone, lock and all
    compacted = shell(host.ncs, "--cdb-compact", cdb)
    assert compacted.returncode == 0, compacted.stderr
    assert "1 write log entries folded" in compacted.stdout


def test_a_killed_daemon_leaves_no_lock_behind(make_host, shell):
    host = make_host("6.1", [])
    os.kill(_daemon_pid(host), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while shell(host.ncs, "--status").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shell(host.ncs, "--cdb-compact", host.path("/var/opt/ncs/cdb")).returncode == 0
    assert shell(host.init, "start").returncode == 0


def test_a_second_daemon_on_the_same_cdb_is_refused(make_host, shell):
    host = make_host("6.1", [])
    first = _daemon_pid(host)
    with socket.socket() as probe:  # an IPC port of its own: only the CDB is shared
        probe.bind((host.address, 0))
        free = probe.getsockname()[1]
    conf = host.path("/etc/ncs/ncs.conf")
    other = host.path("/etc/ncs/other.conf")
    other.write_text(
        conf.read_text().replace(f"<port>{host.ipc_port}</port>", f"<port>{free}</port>")
    )
    second = shell(host.ncs, "-c", other, "--cd", host.path("/var/opt/ncs"))
    assert second.returncode == 20
    assert f"is in use by NSO (pid {first})" in second.stderr
    assert _daemon_pid(host) == first  # the pid file is still the running daemon's
    assert "status: started" in shell(host.ncs, "--status").stdout


def test_restore_refuses_while_the_cdb_is_locked(make_host, shell):
    """Restore checks the lock, not only the IPC port: NSO may hold CDB before it answers."""
    host = make_host("6.1", [], start=False)
    backup = shell(host.path("/opt/ncs/current/bin/ncs-backup"))
    assert backup.returncode == 0
    lock = host.path("/var/opt/ncs/cdb/ncs.lock")
    with lock.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        refused = shell(
            host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", "--non-interactive"
        )
    assert refused.returncode == 1 and "in use" in refused.stderr, refused.stderr
    assert not host.path("/var/opt/ncs.old").exists()
    restored = shell(host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", "--non-interactive")
    assert restored.returncode == 0, restored.stderr


def test_status_names_the_release_of_the_running_daemon(make_host, artifacts, shell):
    host = make_host("6.1", [])
    status = shell(host.ncs, "--status")
    assert status.stdout.splitlines()[0] == "vsn: 6.1"
    assert re.search(r"^status: started$", status.stdout, re.M)
    # current moved to 6.2 while 6.1 still runs: the 6.2 command reports the running 6.1.
    shell("sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root)
    current = host.path("/opt/ncs/current")
    current.unlink()
    current.symlink_to("ncs-6.2")
    assert shell(host.ncs, "--version").stdout == "6.2\n"
    assert shell(host.ncs, "--status").stdout.splitlines()[0] == "vsn: 6.1"
