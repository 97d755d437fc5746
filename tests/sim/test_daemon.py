"""The ncs command, the init script, start-up exit codes and start-up time."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

from tests.support.sim_hosts import TIME_SCALE, run, sim
from tests.support.waiting import wait_until


def test_version_status_stop_and_init_script_lines(make_host):
    host = make_host("6.1", start=False)
    assert run(host.ncs, "--version").stdout == "6.1\n"
    down = run(host.ncs, "--status")
    assert down.returncode != 0 and "connection refused" in down.stderr
    assert run(host.init, "status").returncode == 3
    started = run(host.init, "start")
    assert (started.returncode, started.stdout) == (0, "Starting ncs: .\n")
    status = run(host.ncs, "--status")
    assert status.returncode == 0 and "status: started" in status.stdout.splitlines()
    assert run(host.init, "status").stdout.strip() == "ncs is running"
    restarted = run(host.init, "restart")
    assert restarted.stdout == "Stopping ncs: .\nStarting ncs: .\n"
    assert run(host.ncs, "--wait-started", "5").returncode == 0
    stopped = run(host.init, "stop")
    assert (stopped.returncode, stopped.stdout) == (0, "Stopping ncs: .\n")
    assert "connection refused" in run(host.ncs, "--status").stderr


def test_removed_ncs_conf_element_stops_start_with_21(make_host):
    host = make_host("6.1", start=False)
    conf = host.path("/etc/ncs/ncs.conf")
    conf.write_text(conf.read_text().replace("</ncs-config>", "  <large-scale/>\n</ncs-config>"))
    result = run(host.init, "start")
    assert result.returncode == 21
    assert "large-scale" in host.path("/var/log/ncs/ncs.log").read_text()


def test_missing_release_gives_22(make_host):
    host = make_host("6.1", start=False)
    current = host.path("/opt/ncs/current")
    current.unlink()
    current.symlink_to("ncs-9.9")
    result = run(host.path("/opt/ncs/ncs-6.1/bin/ncs"), "--cd", host.path("/var/opt/ncs"))
    assert result.returncode == 22


def test_port_in_use_gives_20(make_host):
    host = make_host("6.1", start=False)
    with socket.socket() as blocker:
        blocker.bind((host.address, host.cli_port))
        blocker.listen(1)
        result = run(host.init, "start")
    assert result.returncode == 20
    assert "Cannot bind" in result.stderr


def _nominal_start(host) -> float:
    log = host.path("/var/log/ncs/ncs.log").read_text()
    return float(re.findall(r"Start-up will take ([\d.]+) nominal seconds", log)[-1])


def test_start_time_grows_with_packages_and_data(make_host, artifacts):
    bare = make_host("6.1", [])
    loaded = make_host(
        "6.1",
        [artifacts.ned("6.1"), artifacts.service("6.1")],
        extra=("--devices", "50", "--services", "200"),
    )
    assert _nominal_start(loaded) > _nominal_start(bare) + 4


def test_time_scale_turns_a_95_second_start_into_about_one_second(make_host):
    host = make_host("6.1", [], start=False)
    sim("fault", "set", "--root", str(host.root), "start-slow", "95")
    began = time.monotonic()
    assert run(host.init, "start").returncode == 0
    took = time.monotonic() - began
    # Far below the nominal 95 s, with room for a loaded machine: the knob scales, it is no bench.
    assert 95 * TIME_SCALE <= took < 95 * TIME_SCALE + 20
    assert _nominal_start(host) >= 95


def test_missing_aes256_key_stops_start_with_21(make_host):
    host = make_host("6.1", [], start=False)
    keys = host.path("/etc/ncs/ncs.crypto_keys")
    keys.write_text(
        "".join(ln + "\n" for ln in keys.read_text().splitlines() if "AES256" not in ln)
    )
    assert run(host.init, "start").returncode == 21
    assert "AES256CFB128_KEY missing" in host.path("/var/log/ncs/ncs.log").read_text()


def test_show_log_directory_removed_in_5_5(make_host):
    host = make_host("6.1", [], start=False)
    conf = host.path("/etc/ncs/ncs.conf")
    conf.write_text(
        conf.read_text().replace("</ncs-config>", "  <show-log-directory/>\n</ncs-config>")
    )
    assert run(host.init, "start").returncode == 21


def test_ncs_reload_packages_env_is_honoured_by_start(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2")])
    run(host.init, "stop")
    shutil.copy(artifacts.service("6.2"), host.path("/var/opt/ncs/packages"))
    assert run(host.init, "start").returncode == 0
    assert host.cli("show packages package l3vpn")[0].strip() == "% No entries found."
    run(host.init, "stop")
    host.clients.clear()
    assert run(host.init, "start", env={"NCS_RELOAD_PACKAGES": "true"}).returncode == 0
    assert host.cli("show packages package l3vpn oper-status")[0].strip() == "oper-status up"


def test_status_reports_the_start_phase_and_stop_interrupts_a_start(make_host):
    host = make_host("6.1", [], start=False)
    sim("fault", "set", "--root", str(host.root), "start-slow", "3000")
    starting = subprocess.Popen([str(host.init), "start"], stdout=subprocess.PIPE, text=True)
    try:
        # ncs(1): "starting" is pre-phase0, while CDB is loaded and upgraded: the long part.
        wait_until(
            lambda: "status: starting" in run(host.ncs, "--status").stdout,
            10,
            0.05,
            message="ncs --status never showed starting",
        )
        # ncs --stop does not wait for a (30 s) start-up to finish.
        assert run(host.ncs, "--stop", timeout=10).returncode == 0
    finally:
        assert starting.wait(10) != 0  # the start did not complete
    assert "connection refused" in run(host.ncs, "--status").stderr
    assert "Stopped during start-up" in host.path("/var/log/ncs/ncs.log").read_text()


def test_rotatable_crypto_keys_are_accepted(make_host):
    """``EXTERNAL_KEY_FORMAT=2`` with a generation per key (ncs.conf(5), key-rotation)."""
    host = make_host("6.1", [], start=False)
    host.path("/etc/ncs/ncs.crypto_keys").write_text(
        f"EXTERNAL_KEY_FORMAT=2\nAESCFB128_KEY[0]={'a' * 32}\nAES256CFB128_KEY[0]={'b' * 64}\n"
    )
    assert run(host.init, "start").returncode == 0
    assert run(host.init, "reload").returncode == 0  # ncs --reload: re-read config, reopen logs


def test_corrupt_cdb_stops_start_with_14(make_host):
    host = make_host("6.1", [], start=False)
    with host.path("/var/opt/ncs/cdb/A.cdb").open("a") as fh:
        fh.write("{half a write log entry\n")
    assert run(host.init, "start").returncode == 14
    assert "Daemon died status=14" in host.path("/var/log/ncs/ncs.log").read_text()
