"""The journal (resume after a crash), the atomic relink, the configuration file."""

from __future__ import annotations

import os

import pytest

from agent import packages
from agent.config import Config, load
from agent.errors import ConfigError
from agent.journal import Journal


def step(step_id: int = 5, attempt: int = 1) -> dict:
    return {"id": step_id, "job_id": 2, "name": "prestage", "attempt": attempt}


def test_journal_resumes_the_same_step_with_its_facts_and_report_ids(tmp_path):
    path = tmp_path / "state" / "journal.json"
    journal = Journal(path)
    entry = journal.begin(step())
    journal.update("installing", current_before="6.1")
    report_id = entry.report_id("final")
    journal.save()

    # A new process (the agent restarted): the server hands the step out again, attempt 2.
    again = Journal(path)
    resumed = again.begin(step(attempt=2))
    assert resumed.attempt == 2 and resumed.phase == "installing"
    assert again.fact("current_before") == "6.1"
    assert resumed.report_id("final") == report_id

    # Another step starts clean.
    other = again.begin(step(step_id=6))
    assert other.facts == {} and other.report_id("final") != report_id
    again.clear()
    assert not path.exists() and Journal(path).entry is None


def test_journal_writes_are_atomic(tmp_path):
    path = tmp_path / "journal.json"
    journal = Journal(path)
    journal.begin(step())
    for i in range(20):
        journal.update(f"phase-{i}", n=i)
    assert [p.name for p in tmp_path.iterdir()] == ["journal.json"]
    assert Journal(path).fact("n") == 19


def test_relink_leaves_exactly_the_target_set_and_is_idempotent(tmp_path):
    store = tmp_path / "opt" / "ncs" / "packages"
    store.mkdir(parents=True)
    names = [
        "ncs-6.1-a-1.0.tar.gz",
        "ncs-6.1-b-1.0.tar.gz",
        "ncs-6.2-a-1.0.tar.gz",
        "ncs-6.2-b-1.0.tar.gz",
    ]
    for name in names:
        (store / name).write_text(name)
    load_dir = tmp_path / "var" / "opt" / "ncs" / "packages"
    assert packages.relink(load_dir, [store / n for n in names[:2]])
    inode = load_dir.stat().st_ino

    target = [store / n for n in names[2:]]
    assert packages.relink(load_dir, target)
    assert packages.current_links(load_dir) == {t.name: str(t) for t in target}
    assert load_dir.stat().st_ino != inode  # a new folder swapped in, not edited in place
    assert not packages.relink(load_dir, target)  # already exact: nothing changes
    leftovers = [p.name for p in load_dir.parent.iterdir() if p.name != "packages"]
    assert leftovers == []


def test_relink_keeps_a_hand_made_package_folder_aside(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "ncs-6.2-a-1.0.tar.gz").write_text("a")
    load_dir = tmp_path / "packages"
    (load_dir / "hand-made").mkdir(parents=True)
    (load_dir / "hand-made" / "package-meta-data.xml").write_text("<x/>")
    packages.relink(load_dir, [store / "ncs-6.2-a-1.0.tar.gz"])
    assert sorted(os.listdir(load_dir)) == ["ncs-6.2-a-1.0.tar.gz"]
    assert (tmp_path / "packages.replaced-1" / "hand-made" / "package-meta-data.xml").exists()


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "in-a").touch()
    if not packages.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (b / "in-a").exists() and not (a / "in-a").exists()


def test_package_names():
    parsed = packages.PackageName.parse("ncs-6.2-router-nc-1.0.2.tar.gz")
    assert parsed == packages.PackageName("6.2", "router-nc", "1.0.2")
    assert packages.PackageName.parse("ncs-6.7.1-tailf-hcc-6.0.8.tar.gz") == packages.PackageName(
        "6.7.1", "tailf-hcc", "6.0.8"
    )


def test_config_round_trip_and_host_paths(tmp_path):
    cfg = Config(server_url="https://repo.example", root=str(tmp_path / "root"), cli_port=12024)
    cfg.cli_password = "admin"
    path = tmp_path / "agent.conf"
    cfg.save(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load(path)
    assert again.server_url == "https://repo.example" and again.cli_port == 12024
    assert again.paths.load_dir == tmp_path / "root" / "var" / "opt" / "ncs" / "packages"
    assert again.state_path == tmp_path / "root" / "var" / "lib" / "nso-agent"
    assert again.paths.host_path(again.paths.backups_dir / "x") == "/var/opt/ncs/backups/x"


def test_config_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="nso-agent enroll"):
        load(tmp_path / "missing.conf")
    bad = tmp_path / "bad.conf"
    bad.write_text("[host]\nservice_manager = upstart\n")
    with pytest.raises(ConfigError, match="use one of auto, initd, systemd"):
        load(bad)
