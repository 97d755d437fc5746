"""Issue 7 on a simulated host, step by step (no server): acknowledged writes survive every
path through the upgrade, an unusable backup stops the job before NSO does, verify never
throws data away, a failed command's output is logged once, and the inventory says
"unknown" instead of guessing."""

from __future__ import annotations

import os

import pytest

from agent import inventory
from agent.errors import StepFailed
from agent.nso import Nso
from agent.nso_commands import CommandResult, parse_status
from agent.steps.context import StepContext
from agent.steps.registry import run_step
from tests.support.sim_hosts import sim

from .conftest import agent_config
from .test_upgrade_steps import plan, run_until_start


def commit(host, *lines: str) -> None:
    host.clients.clear()  # NSO may have restarted since the last command
    out, status = host.cli("config\n" + "\n".join(lines) + "\ncommit")
    assert status == 0 and "Commit complete." in out, out


def config(host) -> str:
    host.clients.clear()
    out, status = host.cli("show running-config")
    assert status == 0, out
    return out


def test_a_write_between_backup_and_stop_survives_a_failed_start(
    make_host, artifacts, file_server, driver
):
    """Finding 1: ncs-backup ran, then NSO acknowledged a commit, then the start of the new
    release failed: the recovery must bring that commit back."""
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    p = plan(file_server, artifacts)
    drive.step("prestage", p)
    drive.step("backup")
    commit(host, "devices device late-write address 192.0.2.99")
    drive.step("stop")
    drive.step("restore_point")
    drive.step("compact")
    drive.step("switch_current", {"target_version": "6.2"})
    drive.step("relink_packages", {"packages": p["packages"]})
    sim("fault", "set", "--root", str(host.root), "start-exit", "13", "--once")
    with pytest.raises(StepFailed, match="exit status 13"):
        drive.step("start", {"start_timeout": 60})
    drive.step("recover", {"source_version": "6.1", "target_started": True})
    assert "devices device late-write" in config(host)
    assert Nso(drive.config).daemon() == ("started", "6.1")


def test_writes_after_the_start_do_not_fail_verify(make_host, artifacts, file_server, driver):
    """Data that changed after the new release started is not a failure, and not undone."""
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    p = plan(file_server, artifacts)
    run_until_start(drive, p)
    drive.step("start", {"start_timeout": 120})
    commit(host, "devices device after-start address 192.0.2.7")
    result = drive.step("verify", {"target_version": "6.2", "packages": p["packages"]})
    assert result["data_changed"] is True
    assert "devices device after-start" in config(host)


def test_verify_says_nso_runs_when_the_new_release_runs_badly(
    make_host, artifacts, file_server, driver
):
    """6.2 started without a package reload keeps the 6.1 builds it had loaded: they are
    down. NSO runs and takes writes, so the failure says so (the server will not restore)."""
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)
    run_until_start(drive, p)
    Nso(cfg).start(reload=False, timeout=120)
    with pytest.raises(StepFailed, match="oper-status") as failure:
        drive.step("verify", {"target_version": "6.2", "packages": p["packages"]})
    assert failure.value.result == {"nso_running": True, "version": "6.2"}


def test_verify_of_a_release_that_does_not_run_asks_for_recovery(
    make_host, artifacts, file_server, driver
):
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    run_until_start(drive, plan(file_server, artifacts))
    with pytest.raises(StepFailed, match="does not run") as failure:
        drive.step("verify", {"target_version": "6.2", "packages": []})
    assert failure.value.result == {}


def test_an_unusable_backup_fails_the_job_before_nso_stops(make_host, artifacts, driver):
    """Finding 2: with backup-corrupt, ncs-backup exits 0 with a truncated file."""
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg)
    sim("fault", "set", "--root", str(host.root), "backup-corrupt", "--once")
    with pytest.raises(StepFailed, match="does not read back whole") as failure:
        drive.step("backup")
    assert "NSO was not stopped" in str(failure.value)
    assert Nso(cfg).status() == "started"
    # The bad file is renamed so that `ncs-backup --restore` (the newest) never picks it.
    names = os.listdir(host.path("/var/opt/ncs/backups"))
    assert [n for n in names if n.startswith("ncs-")] == []
    assert len([n for n in names if n.startswith("unusable-ncs-6.1@")]) == 1
    # The fault fired once: the step run again makes a good backup.
    result = drive.step("backup")
    assert result["backup_proof"]["cdb_files"] == ["var/opt/ncs/cdb/A.cdb"]


def test_an_archive_without_cdb_files_is_refused(make_host, driver, tmp_path):
    import tarfile

    host = make_host("6.1", start=False)
    drive = driver(agent_config(host))
    empty = host.path("/var/opt/ncs/backups/ncs-6.1@empty.backup.gz")
    empty.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(host.path("/etc/ncs/ncs.conf"), arcname="etc/ncs/ncs.conf")
    from agent.backup_archive import prove

    with pytest.raises(StepFailed, match="holds no CDB files"):
        prove(empty, "ncs-6.1@empty.backup.gz")
    del drive


def test_the_restore_point_is_taken_only_from_a_stopped_nso(make_host, driver):
    host = make_host("6.1")
    drive = driver(agent_config(host))
    with pytest.raises(StepFailed, match="only while NSO is stopped"):
        drive.step("restore_point")
    assert not host.path("/var/opt/ncs/backups/nso-agent-job-7/restore-point").exists()


def test_a_failed_commands_output_is_logged_once(make_host, artifacts, file_server, driver):
    """Finding 6: NSO's output was logged by the command and again by the step runner."""
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    run_until_start(drive, plan(file_server, artifacts))
    sim("fault", "set", "--root", str(host.root), "start-exit", "13", "--once")
    with pytest.raises(StepFailed):
        drive.step("start", {"start_timeout": 60})
    log = "\n".join(drive.last.lines)
    assert log.count("injected start-up failure") == 1, log


def test_inventory_reports_the_running_daemon_and_leaves_unknowns_out(
    make_host, artifacts, file_server, driver
):
    """Finding 5: the running version comes from the daemon; what the CLI could not tell
    is absent (not invented), with the reason."""
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    inv = inventory.collect(cfg)
    assert (inv["status"], inv["running_version"], inv["current"]) == ("started", "6.1", "6.1")
    assert inv["ha"]["mode"] == "none" and "cli_error" not in inv
    assert all(p["oper_status"] == "up" for p in inv["packages"])
    assert inv["run_dir_bytes"] > inv["cdb_bytes"] > 0

    # Another release installed and `current` switched, NSO not restarted: it runs 6.1.
    drive.step("prestage", plan(file_server, artifacts))
    drive.step("switch_current", {"target_version": "6.2"})
    inv = inventory.collect(cfg)
    assert (inv["running_version"], inv["current"]) == ("6.1", "6.2")
    drive.step("switch_current", {"target_version": "6.1"})

    # The CLI refuses the agent: no HA facts, no package states, and why.
    cfg.cli_password = "wrong"
    inv = inventory.collect(cfg)
    assert "refused the agent" in inv["cli_error"]
    assert "ha" not in inv
    assert inv["packages"] and all("oper_status" not in p for p in inv["packages"])

    # Unreadable key file and ncs.conf: unknown, not "no keys" (root reads any mode, so
    # the key file becomes a folder, which nobody can read as a file).
    keys = host.path("/etc/ncs/ncs.crypto_keys")
    saved = keys.read_bytes()
    keys.unlink()
    keys.mkdir()
    host.path("/etc/ncs/ncs.conf").write_text("<ncs-config")
    try:
        inv = inventory.collect(cfg, with_cli=False)
        assert "crypto_keys" not in inv and "ncs_conf_elements" not in inv
    finally:
        keys.rmdir()
        keys.write_bytes(saved)


def test_run_step_reports_an_unknown_step_clearly(make_host, driver):
    host = make_host("6.1", start=False)
    cfg = agent_config(host)
    from agent.journal import Journal

    step = {"id": 1, "job_id": 1, "name": "teleport", "params": {}}
    journal = Journal(cfg.journal_file)
    journal.begin(step)
    with pytest.raises(StepFailed, match="does not know the step 'teleport'"):
        run_step(StepContext(cfg, step, journal))


@pytest.mark.parametrize(
    "returncode,stdout,stderr,timed_out,state",
    [
        (0, "vsn: 6.2\nstatus: started\n", "", False, "started"),
        (0, "vsn: 6.2\nstatus: phase1\n", "", False, "phase1"),
        (69, "", "connection refused (status)", False, "stopped"),
        (-9, "vsn: 6.2\nstatus: started\n", "", True, "unknown"),  # no answer in time
        (1, "", "Permission denied", False, "unknown"),
        (0, "garbage", "", False, "unknown"),
    ],
    ids=["started", "phase", "refused", "timed-out", "other-error", "no-status-line"],
)
def test_a_status_that_does_not_say_is_never_stopped(returncode, stdout, stderr, timed_out, state):
    """The agent copies, compacts and restores only when NSO positively is down."""
    result = CommandResult(["ncs", "--status"], returncode, stdout, stderr, 0.1, timed_out)
    assert parse_status(result) == state


def test_a_jobs_own_recovery_never_stops_a_running_nso(make_host, artifacts, file_server, driver):
    """6.2 started and took a write; something then failed. The job's recovery must not
    restore over it; the operator's rollback (discard_writes) may, keeping it aside."""
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    run_until_start(drive, plan(file_server, artifacts))
    drive.step("start", {"start_timeout": 120})
    commit(host, "devices device on-6-2 address 192.0.2.62")
    with pytest.raises(StepFailed, match="may have taken writes") as failure:
        drive.step("recover", {"source_version": "6.1", "target_started": True})
    assert failure.value.result == {"nso_running": True, "version": "6.2"}
    assert Nso(cfg).daemon() == ("started", "6.2")
    assert "devices device on-6-2" in config(host)

    result = drive.step(
        "recover", {"source_version": "6.1", "target_started": True, "discard_writes": True}
    )
    assert result["rolled_back"] is True
    assert Nso(cfg).daemon() == ("started", "6.1")
    assert "devices device on-6-2" not in config(host)
    kept = [host.path(p) for p in result["replaced_data"] if p.endswith("/var/opt/ncs")]
    assert b"on-6-2" in (kept[0] / "cdb" / "A.cdb").read_bytes()  # kept on the host


def test_recovery_after_a_stop_that_failed_changes_nothing(make_host, driver):
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg)
    result = drive.step("recover", {"source_version": "6.1", "target_started": False})
    assert result == {"rolled_back": True, "version": "6.1", "replaced_data": []}
    assert Nso(cfg).daemon() == ("started", "6.1")


@pytest.mark.parametrize(
    "name,value",
    [
        ("restore_point", "/etc/ncs"),
        ("restore_point", "/var/opt/ncs/backups/nso-agent-job-7/restore-point/../../../cdb"),
        ("extra_dir", "/opt/ncs/current"),
    ],
)
def test_recover_refuses_folders_it_did_not_write(make_host, driver, name, value):
    host = make_host("6.1", start=False)
    cfg = agent_config(host)
    drive = driver(cfg)
    before = sorted(os.listdir(host.path("/var/opt/ncs")))
    params = {"source_version": "6.1", "target_started": True, name: value}
    with pytest.raises(StepFailed, match="not a place this agent writes"):
        drive.step("recover", params)
    assert sorted(os.listdir(host.path("/var/opt/ncs"))) == before


def test_verify_says_nso_runs_when_its_cli_refuses_the_agent(
    make_host, artifacts, file_server, driver
):
    host = make_host("6.1")
    cfg = agent_config(host)
    drive = driver(cfg, file_server)
    p = plan(file_server, artifacts)
    run_until_start(drive, p)
    drive.step("start", {"start_timeout": 120})
    cfg.cli_password = "wrong"
    with pytest.raises(StepFailed, match="could not be verified") as failure:
        drive.step("verify", {"target_version": "6.2", "packages": p["packages"]})
    assert failure.value.result["nso_running"] is True
