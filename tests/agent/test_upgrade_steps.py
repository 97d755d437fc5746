"""The single-node upgrade steps against simulated hosts, driven directly (no server).

Each test plays the server's part: it hands the steps out in the plan's order with the params
the server gives and carries each result into the job's context.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import packages as pkgs
from agent import restore_point as rp
from agent.errors import StepFailed
from agent.journal import Journal
from agent.nso import Nso
from agent.steps.context import StepContext
from agent.steps.registry import run_step
from agent.steps.shared import switch_current_to
from tests.support.sim_hosts import sim

from .conftest import agent_config


def refs(file_server, paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        a = file_server.add(path)
        out.append({"filename": a.filename, "sha256": a.sha256, "size": a.size, "url": a.url})
    return out


def plan(file_server, artifacts, target: str = "6.2") -> dict:
    packages = refs(file_server, [artifacts.ned(target), artifacts.service(target)])
    return {
        "installer": refs(file_server, [artifacts.installer(target)])[0],
        "packages": packages,
        "target_version": target,
    }


def add_data(host) -> None:
    out, status = host.cli(
        "config\n"
        "devices device edge-1 address 192.0.2.1 port 830 device-type netconf ned-id router-nc-1.0\n"
        "devices device edge-1 config hostname edge-1\n"
        "l3vpn acme customer acme-corp device edge-1\n"
        "commit"
    )
    assert status == 0 and "Commit complete." in out, out


def loaded_links(host) -> dict[str, str]:
    return pkgs.current_links(host.path("/var/opt/ncs/packages"))


def run_until_start(drive, p) -> None:
    drive.step("prestage", p)
    drive.step("backup")
    drive.step("stop")
    drive.step("restore_point")
    drive.step("compact")
    drive.step("switch_current", {"target_version": p["target_version"]})
    drive.step("relink_packages", {"packages": p["packages"]})


def test_major_upgrade_6_1_to_6_2_keeps_data_and_links(make_host, artifacts, file_server, driver):
    host = make_host("6.1")
    add_data(host)
    before, _ = host.cli("show running-config")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)

    result = drive.step("prestage", p)
    assert result["installed_release"] == "6.2"
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.1"  # still the running release
    store = host.path("/opt/ncs/packages")
    assert {"ncs-6.2-router-nc-1.0.tar.gz", "ncs-6.2-l3vpn-1.0.tar.gz"} <= set(os.listdir(store))

    result = drive.step("backup")
    assert result["backup_file"].startswith("/var/opt/ncs/backups/ncs-6.1@")
    assert "var/opt/ncs/cdb/A.cdb" in result["backup_proof"]["cdb_files"]
    extra = host.path(result["extra_dir"])
    assert sorted(os.listdir(extra / "packages")) == sorted(loaded_links(host))

    result = drive.step("stop")
    assert result["fingerprint"].startswith("sha256:")
    assert Nso(cfg).status() == "stopped"
    result = drive.step("restore_point")
    copy = host.path(result["restore_point"])
    cdb = host.path("/var/opt/ncs/cdb/A.cdb")
    assert (copy / "var/opt/ncs/cdb/A.cdb").read_bytes() == cdb.read_bytes()
    assert (copy / "etc/ncs/ncs.conf").read_bytes() == host.path("/etc/ncs/ncs.conf").read_bytes()
    assert not (copy / "var/opt/ncs/backups").exists()
    drive.step("compact")
    drive.step("switch_current", {"target_version": "6.2"})
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.2"
    drive.step("relink_packages", {"packages": p["packages"]})
    assert loaded_links(host) == {r["filename"]: str(store / r["filename"]) for r in p["packages"]}
    drive.step("start", {"start_timeout": 120})
    result = drive.step("verify", {"target_version": "6.2", "packages": p["packages"]})
    assert result["version"] == "6.2"
    assert sorted(result["packages"]) == ["l3vpn-1.0", "router-nc-1.0"]
    assert result["data_changed"] is False

    host.clients.clear()
    after, _ = host.cli("show ncs-state version")
    assert after.strip() == "ncs-state version 6.2"
    assert host.cli("show running-config")[0] == before
    # The old release stays installed for recovery; the systemd reload flag was never touched.
    assert host.path("/opt/ncs/ncs-6.1/bin/ncs").exists()


def test_every_step_run_twice_ends_in_the_same_state(make_host, artifacts, file_server, driver):
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)
    sequence = [
        ("prestage", p),
        ("backup", {}),
        ("stop", {}),
        ("restore_point", {}),
        ("compact", {}),
        ("switch_current", {"target_version": "6.2"}),
        ("ncs_conf", {"remove_elements": ["show-log-directory"]}),
        ("relink_packages", {"packages": p["packages"]}),
        ("start", {"start_timeout": 120}),
        ("verify", {"target_version": "6.2", "packages": p["packages"]}),
    ]
    installs = 0
    for name, params in sequence:
        first = drive.step(name, params)
        requests_before = len(file_server.requests)
        second = drive.step(name, params)
        if name == "prestage":
            # The second run downloads nothing and does not run the installer again.
            assert len(file_server.requests) == requests_before
            installs = sum("--system-install" in line for line in drive.last.lines)
        # A second backup step run as a new step makes a new backup; a second stop finds
        # NSO stopped already, so it has no fingerprint and no stop time of its own.
        if name == "restore_point":  # a new step (id) has a token of its own
            first.pop("restore_point_token"), second.pop("restore_point_token")
        if name not in ("backup", "stop"):
            assert first == second, name
    assert installs == 0
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.2"
    assert Nso(cfg).status() == "started"


def test_prestage_puts_current_back_when_the_installer_moves_it(
    make_host, artifacts, file_server, driver
):
    host = make_host("6.1", extra=("--installer-moves-current",))
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    drive.step("prestage", plan(file_server, artifacts))
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.1"
    assert Nso(cfg).status() == "started" and Nso(cfg).version() == "6.1"
    assert any("pointing it back at ncs-6.1" in line for line in drive.last.lines)


def test_prestage_refuses_a_package_whose_sha256_differs(make_host, artifacts, file_server, driver):
    host = make_host("6.1", start=False)
    drive = driver(agent_config(host), file_server)
    p = plan(file_server, artifacts)
    p["packages"][0]["sha256"] = "f" * 64
    with pytest.raises(StepFailed, match="sha256 does not match the announced ffff"):
        drive.step("prestage", p)
    assert not (host.path("/opt/ncs/packages") / p["packages"][0]["filename"]).exists()
    assert not host.path("/opt/ncs/ncs-6.2").exists()


def test_failed_start_exit_13_then_recover_brings_back_6_1_with_data(
    make_host, artifacts, file_server, driver
):
    host = make_host("6.1")
    add_data(host)
    before, _ = host.cli("show running-config")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)
    run_until_start(drive, p)
    sim("fault", "set", "--root", str(host.root), "start-exit", "13", "--once")
    with pytest.raises(StepFailed, match=r"exit status 13: package upgrade failed"):
        drive.step("start", {"start_timeout": 60})
    assert "Daemon died status=13" in "\n".join(drive.last.lines)

    # The server appends recover with what backup, stop and restore_point reported.
    result = drive.step("recover", {"source_version": "6.1", "target_started": True})
    assert result["rolled_back"] is True and result["version"] == "6.1"
    # What the failed start left is kept, not deleted.
    kept = [host.path(p) for p in result["replaced_data"] if p.endswith("/var/opt/ncs")]
    assert (kept[0] / "cdb/A.cdb").is_file()
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.1"
    links = loaded_links(host)
    assert sorted(links) == ["ncs-6.1-l3vpn-1.0.tar.gz", "ncs-6.1-router-nc-1.0.tar.gz"]
    host.clients.clear()
    assert host.cli("show ncs-state version")[0].strip() == "ncs-state version 6.1"
    assert host.cli("show running-config")[0] == before


def test_recover_after_packages_not_rebuilt(make_host, artifacts, file_server, driver):
    """A real failure: 6.1 packages left in the load path make the 6.2 start exit 13."""
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)
    for name, params in [
        ("prestage", p),
        ("backup", {}),
        ("stop", {}),
        ("restore_point", {}),
        ("compact", {}),
        ("switch_current", {"target_version": "6.2"}),
    ]:
        drive.step(name, params)
    with pytest.raises(StepFailed, match=r"requires NCS version 6\.1"):
        drive.step("start", {"start_timeout": 60})
    drive.step("recover", {"source_version": "6.1", "target_started": True})
    assert Nso(cfg).version() == "6.1" and Nso(cfg).status() == "started"


def test_recover_resumes_after_a_crash_between_restore_and_start(
    make_host, artifacts, file_server, driver
):
    host = make_host("6.1")
    add_data(host)
    before, _ = host.cli("show running-config")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)
    run_until_start(drive, p)
    drive.step("start", {"start_timeout": 120})
    params = {"source_version": "6.1", "target_started": True, **drive.context}
    # A recover that died after restoring the data, before starting NSO.
    step = {"id": 500, "job_id": 7, "name": "recover", "attempt": 1, "params": params}
    journal = Journal(cfg.journal_file)
    journal.begin(step)
    ctx = StepContext(cfg, step, journal)
    ctx.nso.stop()
    switch_current_to(ctx, "6.1")
    progress: dict[str, str] = {}

    def save(p: dict[str, str]) -> None:
        journal.update(restore_progress=dict(p))

    dest = host.path(params["restore_point"])
    rp.stage(cfg.paths, dest, params["restore_point_token"], progress, save, ctx.log)
    aside = rp.aside_folder(cfg.paths, host.path("/var/opt/ncs/backups/nso-agent-job-7"), "r")
    replaced = rp.swap(cfg.paths, dest, aside, progress, save, lambda: None, ctx.log)
    journal.update("data", recover_done=["current", "data"], replaced=replaced)
    # ... the agent dies here. Restarted, the server hands the step out again (attempt 2).
    journal = Journal(cfg.journal_file)
    journal.begin({**step, "attempt": 2})
    ctx = StepContext(cfg, {**step, "attempt": 2}, journal)
    result = run_step(ctx)
    assert result["rolled_back"] is True
    assert "/var/opt/ncs/backups/nso-agent-job-7/r/var/opt/ncs" in result["replaced_data"]
    assert any("restored already" in line for line in ctx.lines)
    host.clients.clear()
    assert host.cli("show running-config")[0] == before


def test_slow_start_past_the_systemd_timeout_still_succeeds(
    make_host, artifacts, file_server, driver
):
    """NSO 6.4 runs under systemd: a start taking longer than 90 (scaled) seconds makes
    systemctl fail while NSO keeps starting; the agent waits and judges by ncs --status."""
    host = make_host("6.4", [artifacts.ned("6.4"), artifacts.service("6.4")])
    cfg = agent_config(host)
    assert cfg.uses_systemd()
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts, target="6.5")
    run_until_start(drive, p)
    # 400 nominal seconds: well past the simulated 90 s systemd timeout (plus its 1 real
    # second of allowance at this time scale), even on a loaded machine.
    sim("fault", "set", "--root", str(host.root), "start-slow", "400", "--once")
    drive.step("start", {"start_timeout": 120})
    log = "\n".join(drive.last.lines)
    assert "because a timeout was exceeded" in log
    assert "a service timeout is not a start failure" in log
    # The reload flag is set back once the start is over, or every restart would reload.
    settings = [
        line
        for line in host.path("/etc/ncs/ncs.systemd.conf").read_text().splitlines()
        if line.startswith("NCS_RELOAD_PACKAGES")
    ]
    assert settings == ["NCS_RELOAD_PACKAGES=false"]
    drive.step("verify", {"target_version": "6.5", "packages": p["packages"]})


def test_ncs_conf_step_removes_elements_removed_in_the_target(make_host, driver):
    host = make_host("6.1", start=False)
    conf = host.path("/etc/ncs/ncs.conf")
    text = conf.read_text()
    marker = "</ncs-config>"
    conf.write_text(
        text.replace(marker, "  <show-log-directory>./logs</show-log-directory>\n" + marker)
    )
    drive = driver(agent_config(host))
    assert drive.step("ncs_conf", {"remove_elements": ["show-log-directory", "large-scale"]}) == {
        "removed_elements": ["show-log-directory"],
        "saved_ncs_conf": "/etc/ncs/ncs.conf.nso-agent-job-7",
    }
    assert conf.read_text() == text
    assert drive.step("ncs_conf", {"remove_elements": ["show-log-directory"]}) == {
        "removed_elements": []
    }
