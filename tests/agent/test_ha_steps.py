"""The HA steps (agent/steps/ha.py) against real simulated HA clusters, driven directly.

Each test plays the server's part: it hands the steps to the members' agents in the order an
HA plan does, and stands in for the steps that are not HA steps only where noted.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from agent import inventory
from agent.config import Config
from agent.errors import StepFailed
from agent.nso_cli_output import ha_status


def agent_cfg(host) -> Config:
    """The member's agent configuration: its root, its CLI over SSH (user admin)."""
    return Config(
        root=str(host.root), cli_host=host.address, cli_port=host.cli_port, cli_password="admin"
    )


def package_refs(paths: list[Path]) -> list[dict]:
    """Artifact references as the server sends them (the files are staged already)."""
    return [
        {
            "filename": p.name,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "size": p.stat().st_size,
            "url": f"/files/{p.name}",
        }
        for p in paths
    ]


def refused_write(host) -> str:
    out, _ = host.cli("config\nl3vpn ro-probe customer x\ncommit")
    return out


def test_ha_status_reads_nso_6_1_output_with_its_secondaries_table():
    text = (
        "high-availability enabled\n"
        "high-availability status mode primary\n"
        "high-availability status current-id n1\n"
        "high-availability status assigned-role primary\n"
        'high-availability status be-secondary-result "error (25) - could not connect to primary"\n'
        "high-availability status read-only-mode false\n"
        "ID  ADDRESS\n"
        "-------------------\n"
        "n2  10.0.0.2\n"
        "n3  10.0.0.3\n"
    )
    st = ha_status(text)
    assert st["mode"] == "primary" and st["assigned_role"] == "primary"
    assert st["connected_secondaries"] == ["n2", "n3"]
    assert st["be_secondary_result"] == "error (25) - could not connect to primary"
    assert ha_status("high-availability disabled\n")["connected_secondaries"] == []


def test_check_read_only_wait_and_verify_on_a_converged_pair(make_cluster, artifacts, driver):
    primary, secondary = make_cluster("6.1")
    d1, d2 = driver(agent_cfg(primary)), driver(agent_cfg(secondary))

    assert d1.step("ha_wait_secondaries", {"secondaries": ["n2"], "timeout": 30}) == {
        "connected_secondaries": ["n2"]
    }
    check = {"mode": "primary", "ha_id": "n1", "secondaries": ["n2"]}
    first = d1.step("ha_check", check)
    assert first == {"ha_mode": "primary", "connected_secondaries": ["n2"], "read_only": False}
    assert d1.step("ha_check", check) == first
    assert d2.step("ha_check", {"mode": "secondary", "ha_id": "n2"})["ha_mode"] == "secondary"
    with pytest.raises(StepFailed, match="mode is secondary, expected primary") as failed:
        d2.step("ha_check", {"mode": "primary", "ha_id": "n2", "secondaries": ["n1"]})
    assert "Nothing was changed" in str(failed.value)

    # Read-only on, twice: the second run finds it on; writes are refused meanwhile.
    assert d1.step("ha_read_only", {"mode": True}) == {"read_only": True}
    assert d1.step("ha_read_only", {"mode": True}) == {"read_only": True}
    assert "read-only mode" in refused_write(primary)
    with pytest.raises(StepFailed, match="read-only mode is on"):
        d1.step("ha_check", check)
    with pytest.raises(StepFailed, match="mode 'yes' from the server is refused"):
        d1.step("ha_read_only", {"mode": "yes"})
    assert d1.step("ha_read_only", {"mode": False}) == {"read_only": False}
    out, status = primary.cli("config\nl3vpn after customer kept\ncommit")
    assert status == 0, out
    secondary.wait_for("show running-config l3vpn after", "kept")

    # Verify both members: role, release, packages, and the same data on each.
    verify = {
        "target_version": "6.1",
        "packages": package_refs([artifacts.ned("6.1"), artifacts.service("6.1")]),
    }
    on_primary = d1.step("ha_verify", {**check, **verify})
    assert on_primary["version"] == "6.1" and on_primary["connected_secondaries"] == ["n2"]
    assert d1.step("ha_verify", {**check, **verify}) == on_primary
    on_secondary = d2.step("ha_verify", {"mode": "secondary", "ha_id": "n2", **verify})
    assert on_secondary["ha_mode"] == "secondary"
    assert on_secondary["fingerprint"] == on_primary["fingerprint"]
    with pytest.raises(StepFailed, match=r"expected 6\.2") as failed:
        d2.step(
            "ha_verify", {"mode": "secondary", "ha_id": "n2", **verify, "target_version": "6.2"}
        )
    assert failed.value.result == {"nso_running": True, "version": "6.1"}

    # The heartbeat's HA facts.
    inv = inventory.collect(agent_cfg(primary))
    assert inv["ha"]["assigned_role"] == "primary"
    assert inv["ha"]["connected_secondaries"] == ["n2"]
    keys = primary.path("/etc/ncs/ncs.crypto_keys").read_bytes()
    assert inv["crypto_keys_fingerprint"] == "sha256:" + hashlib.sha256(keys).hexdigest()
    assert inv["load_paths"] == ["${NCS_RUN_DIR}/packages", "${NCS_DIR}/etc/ncs"]
    other = inventory.collect(agent_cfg(secondary))
    assert other["crypto_keys_fingerprint"] == inv["crypto_keys_fingerprint"]
    assert (
        other["ha"]["assigned_role"] == "secondary" and other["ha"]["connected_secondaries"] == []
    )


def test_be_primary_on_the_secondary_then_enable_puts_the_roles_back(make_cluster, driver):
    # Without failover the secondary stays without a role when its primary stops, so
    # be-primary is what makes it primary (failover would race the step).
    primary, secondary = make_cluster("6.1", extra=("--no-enable-failover",))
    secondary.wait_for("show high-availability status mode", "secondary")
    d1, d2 = driver(agent_cfg(primary)), driver(agent_cfg(secondary))

    d1.step("stop")
    secondary.wait_for("show high-availability status mode", "none")
    asked = {"read_only": True, "timeout": 20}
    assert d2.step("ha_be_primary", asked) == {"ha_mode": "primary", "read_only": True}
    assert d2.step("ha_be_primary", asked) == {"ha_mode": "primary", "read_only": True}
    assert "already" in d2.last.log_tail()
    assert "read-only mode" in refused_write(secondary)
    assert d2.step("ha_enable", {"mode": "primary", "timeout": 5})["ha_mode"] == "primary"
    with pytest.raises(StepFailed, match="this node is HA primary, the step asks for secondary"):
        d2.step("ha_enable", {"mode": "secondary", "timeout": 5})

    # Back to the nominal roles: the acting primary leaves HA (its read-only goes with it),
    # the designated primary starts, then takes its role by enable.
    assert secondary.cli("high-availability disable")[1] == 0
    d1.step("start")
    assert primary.cli("high-availability disable")[1] == 0
    assert d1.step("ha_enable", {"mode": "primary", "timeout": 20}) == {
        "ha_mode": "primary",
        "read_only": False,
    }
    assert d2.step("ha_enable", {"mode": "secondary", "timeout": 20})["ha_mode"] == "secondary"
    assert d2.step("ha_enable", {"mode": "secondary", "timeout": 20})["ha_mode"] == "secondary"
    assert "already" in d2.last.log_tail()
    assert d1.step("ha_wait_secondaries", {"secondaries": ["n2"], "timeout": 20}) == {
        "connected_secondaries": ["n2"]
    }


def test_enable_of_a_secondary_that_cannot_join_says_why(make_cluster, driver):
    # The secondary runs another release than the primary: NSO refuses it.
    primary, secondary = make_cluster(versions=["6.2", "6.1"])
    primary.wait_for("show high-availability status mode", "primary")
    d2 = driver(agent_cfg(secondary))
    with pytest.raises(StepFailed) as failed:
        d2.step("ha_enable", {"mode": "secondary", "timeout": 2})
    message = str(failed.value)
    assert "not HA secondary 2 s after 'high-availability enable'" in message
    assert "incompatible NSO version" in message
    assert "same NSO version" in message
    d1 = driver(agent_cfg(primary))
    with pytest.raises(StepFailed, match="secondaries n2 did not connect within 1 s"):
        d1.step("ha_wait_secondaries", {"secondaries": ["n2"], "timeout": 1})


def _writer(host, stop: threading.Event, acknowledged: list[float], refused: list[float]) -> None:
    """Commit to ``host`` every ~50 ms whenever its CLI answers; note when NSO acknowledged
    a commit and when it refused one for read-only mode."""
    client = None
    n = 0
    while not stop.is_set():
        try:
            client = client or host.ssh()
            n += 1
            out, status = host.cli(f"config\nl3vpn w{n} customer c\ncommit", client)
            if status == 0 and "Commit complete." in out:
                acknowledged.append(time.monotonic())
            elif "read-only mode" in out:
                refused.append(time.monotonic())
        except Exception:  # NSO down or restarting: the CLI refuses, try again
            client = None
        time.sleep(0.05)


def test_start_read_only_accepts_no_write_until_the_secondary_is_back(make_cluster, driver, sim):
    primary, secondary = make_cluster("6.1")
    primary.wait_for("show high-availability status connected-secondary", "n2")
    d1, d2 = driver(agent_cfg(primary)), driver(agent_cfg(secondary))
    d2.step("stop")
    d1.step("stop")
    # A start that dies is reported with NSO's exit status, not as a hang.
    sim("fault", "set", "--root", str(primary.root), "start-exit", "13", "--once")
    with pytest.raises(StepFailed, match=r"did not reach phase0.*exit status 13"):
        d1.step("start", {"read_only": True})

    stop, acknowledged, refused = threading.Event(), [], []
    writer = threading.Thread(
        target=_writer, args=(primary, stop, acknowledged, refused), daemon=True
    )
    writer.start()
    try:
        assert d1.step("start", {"read_only": True}) == {"nso_status": "started", "read_only": True}
        assert "--start-phase2" in d1.last.log_tail()
        assert d1.step("start", {"read_only": True}) == {"nso_status": "started", "read_only": True}
        assert d1.step("ha_enable", {"mode": "primary", "timeout": 20}) == {
            "ha_mode": "primary",
            "read_only": True,
        }
        d2.step("start")
        assert d2.step("ha_enable", {"mode": "secondary", "timeout": 20})["ha_mode"] == "secondary"
        d1.step("ha_wait_secondaries", {"secondaries": ["n2"], "timeout": 20})
        time.sleep(0.3)  # the writer keeps trying against the read-only primary
        assert acknowledged == [], "a write was accepted before read-only mode was lifted"
        assert refused, "the writer never reached the started primary"
        opened = time.monotonic()
        assert d1.step("ha_read_only", {"mode": False}) == {"read_only": False}
        deadline = time.monotonic() + 10
        while not acknowledged and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join(10)
    assert acknowledged and acknowledged[0] >= opened


def test_start_read_only_on_a_systemd_host_and_its_stop(make_host, driver):
    # NSO >= 6.4 runs under ncs.service, which knows no start phases: the phases run ncs
    # with the unit's arguments and environment, and the stop still brings it down.
    host = make_host("6.4")
    drive = driver(agent_cfg(host))
    drive.step("stop")
    assert drive.step("start", {"read_only": True}) == {"nso_status": "started", "read_only": True}
    assert "read-only mode" in refused_write(host)
    began = time.monotonic()
    drive.step("stop")
    assert time.monotonic() - began < 20  # the stop timeout is 300 s
    assert "connection refused" in host.sh(host.ncs, "--status").stderr
