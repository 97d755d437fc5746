"""Start phases (ncs(1) --start-phase0/1/2): an upgraded primary can be made read-only before
anything can write to it, because the northbound opens only in phase2."""

from __future__ import annotations

import socket

import pytest

from tests.support.sim_hosts import run


def _status(host) -> str:
    return run(host.ncs, "--status").stdout.splitlines()[-1]


def _phase0(host, *flags: str):
    """``ncs`` started by path with the init script's arguments, stopping in phase0."""
    return run(
        host.ncs,
        "--cd",
        host.path("/var/opt/ncs"),
        "-c",
        host.path("/etc/ncs/ncs.conf"),
        *flags,
        "--start-phase0",
    )


def test_read_only_set_in_phase1_holds_when_phase2_opens_the_northbound(make_cluster):
    n1, n2 = make_cluster("6.1", start=False)
    started = _phase0(n1, "--with-package-reload")
    assert started.returncode == 0, started.stderr
    assert _status(n1) == "status: phase0"
    console = n1.ncs_cli("show high-availability status mode")
    assert console.returncode == 1 and "opens in phase1" in console.stderr
    assert run(n1.ncs, "--wait-phase0", "1").returncode == 0

    assert run(n1.ncs, "--start-phase1").returncode == 0
    assert _status(n1) == "status: phase1"
    # The HA start-up role is taken in phase1, and the console works; SSH does not yet.
    mode = n1.ncs_cli("show high-availability status mode")
    assert mode.stdout == "high-availability status mode primary\n", mode.stderr
    assert n1.ncs_cli("high-availability read-only mode true").returncode == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((n1.address, n1.cli_port), timeout=5).close()
    # A secondary joins a primary that is in phase1 (the HA port listens from phase1).
    assert n2.start().returncode == 0
    n2.wait_for("show high-availability status mode", "secondary")

    assert run(n1.ncs, "--start-phase2").returncode == 0
    assert _status(n1) == "status: started"
    assert run(n1.ncs, "--wait-started", "1").returncode == 0
    out, status = n1.cli("config\nl3vpn early customer c\ncommit")
    assert status == 1 and out.startswith("Aborted: node is in read-only mode\n")
    assert "l3vpn early" not in n2.cli("show running-config l3vpn")[0]
    assert "read-only-mode true" in n1.cli("show high-availability status read-only-mode")[0]


def test_phases_out_of_order_are_refused_with_what_to_do(make_host):
    host = make_host("6.1", start=False)
    started = _phase0(host)
    assert started.returncode == 0, started.stderr
    early = run(host.ncs, "--start-phase2")
    assert early.returncode == 1
    assert "not in phase1; run ncs --start-phase1 first" in early.stderr
    assert run(host.ncs, "--start-phase1").returncode == 0
    again = run(host.ncs, "--start-phase1")
    assert again.returncode == 1 and "not in phase0" in again.stderr
    assert run(host.ncs, "--start-phase2").returncode == 0
    # A plain start goes through every phase at once, as before.
    assert run(host.ncs, "--stop").returncode == 0
    assert host.start().returncode == 0
    assert _status(host) == "status: started"
    assert host.cli("show ncs-state version")[0] == "ncs-state version 6.1\n"
