"""The ``ned_migrate`` step against a simulated NSO, driven directly: a dry-run that changes
nothing, the migration, a second run that finds nothing to do, data a new model lacks, and
hostile names from the server (or from NSO) refused before any command runs."""

from __future__ import annotations

import re
import shutil

import pytest

from agent.errors import StepFailed
from agent.journal import Journal

from .conftest import agent_config

NEW = "router-nc-2.0"


@pytest.fixture
def nso(make_host, artifacts):
    """NSO 6.2 with the old NED's devices, l3vpn service instances on them, a device group,
    and the new ned-id's NED loaded beside the old one (its model: hostname only)."""
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    new = artifacts.package("router-nc2", "2.0", "6.2", "--ned-id", NEW, "--ned-leaf", "hostname")
    shutil.copy(new, host.path("/var/opt/ncs/packages"))
    for command in (
        "packages reload",
        "config; devices device-group edge device-name [ router-nc-2 ]; commit",
    ):
        out, status = host.cli(command)
        assert status == 0, out
    return host


def running_config(host) -> str:
    out, status = host.cli("show running-config")
    assert status == 0, out
    return out


def test_dry_run_changes_nothing_then_the_migration(nso, driver):
    drive = driver(agent_config(nso))
    before = running_config(nso)
    params = {"new_ned_id": NEW, "devices": ["router-nc-1"], "device_groups": ["edge"]}
    dry = drive.step("ned_migrate", {**params, "dry_run": True})["ned_migration"]
    assert running_config(nso) == before
    assert (dry["dry_run"], dry["devices_total"], dry["lost_data_total"]) == (True, 2, 2)
    first, second = dry["devices"]
    assert (first["device"], first["groups"], first["state"]) == ("router-nc-1", [], "dry_run")
    assert (second["device"], second["groups"]) == ("router-nc-2", ["edge"])
    assert (first["old_ned_id"], first["new_ned_id"]) == ("router-nc-1.0", NEW)
    assert first["modified_paths"][0] == {
        "path": "/ncs:devices/device{router-nc-1}/device-type/netconf/ned-id",
        "info": f"ned-id changed from router-nc-1.0 to {NEW}",
    }
    assert second["lost_data"] == [
        {"path": "/ncs:devices/device{router-nc-2}/config/router-nc:mtu", "value": "1500"}
    ]

    done = drive.step("ned_migrate", {**params, "dry_run": False})["ned_migration"]
    assert [d["state"] for d in done["devices"]] == ["migrated", "migrated"]
    after = running_config(nso)
    for device in ("router-nc-1", "router-nc-2"):
        shown = nso.cli(f"show running-config devices device {device}")[0]
        assert f"ned-id {NEW}" in shown and f"hostname {device}" in shown and "mtu" not in shown
    # Service data is untouched: the same instances with the same values.
    assert after[after.index("l3vpn l3vpn-1") :] == before[before.index("l3vpn l3vpn-1") :]

    # Run again (a restarted agent): nothing to do, nothing changes.
    again = drive.step("ned_migrate", {**params, "dry_run": False})["ned_migration"]
    assert [d["state"] for d in again["devices"]] == ["already", "already"]
    assert all(d["modified_paths"] == [] for d in again["devices"])
    assert running_config(nso) == after
    # The same ned-id with its module prefix: devices show it bare, and it is the same one.
    prefixed = {**params, "new_ned_id": f"{NEW}:{NEW}", "dry_run": False}
    again = drive.step("ned_migrate", prefixed)["ned_migration"]
    assert [d["state"] for d in again["devices"]] == ["already", "already"]
    assert running_config(nso) == after


@pytest.mark.parametrize(
    "params,said",
    [
        ({"devices": ["router-nc-1; devices device router-nc-2 migrate"]}, "devices[0]"),
        ({"devices": ["router-nc-1 migrate new-ned-id router-nc-2.0"]}, "devices[0]"),
        ({"devices": ["../router-nc-1"]}, "devices[0]"),
        ({"devices": ["router-nc-1 | nomore"]}, "devices[0]"),
        ({"devices": "router-nc-1"}, "expected a list"),
        ({"devices": [], "device_groups": ['edge" dry-run']}, "device_groups[0]"),
        ({"new_ned_id": f"{NEW};config"}, "new_ned_id"),
        ({"new_ned_id": None}, "new_ned_id"),
        ({"dry_run": "false"}, "expected true or false"),
        ({"devices": []}, "names no device and no device group"),
    ],
)
def test_hostile_names_are_refused_before_any_command(nso, driver, params, said):
    drive = driver(agent_config(nso))
    before = running_config(nso)
    step = {"new_ned_id": NEW, "devices": ["router-nc-1"], "dry_run": False, **params}
    with pytest.raises(StepFailed) as refused:
        drive.step("ned_migrate", step)
    assert said in str(refused.value)
    assert drive.last is not None
    assert not any("migrate" in line for line in drive.last.lines), list(drive.last.lines)
    assert running_config(nso) == before


def test_names_nso_gives_are_checked_too_and_nso_refusals_come_verbatim(nso, driver):
    drive = driver(agent_config(nso))
    assert nso.cli('config; devices device-group odd device-name [ "a b" ]; commit')[1] == 0
    before = running_config(nso)
    with pytest.raises(StepFailed) as refused:
        drive.step("ned_migrate", {"new_ned_id": NEW, "device_groups": ["odd"], "dry_run": False})
    assert "'a b' from NSO's device group odd is refused" in str(refused.value)
    for params, said in [
        ({"devices": ["router-nc-9"]}, "NSO has no device router-nc-9"),
        ({"device_groups": ["nope"]}, "NSO has no device group nope"),
        ({"new_ned_id": "other-9.9"}, "Error: ned-id other-9.9 is not loaded"),
    ]:
        step = {"new_ned_id": NEW, "devices": ["router-nc-1"], "dry_run": False, **params}
        with pytest.raises(StepFailed) as failed:
            drive.step("ned_migrate", step)
        message = str(failed.value)
        assert said in message, message
        assert "no device was migrated" in message or "nothing was migrated" in message
    assert running_config(nso) == before


def test_a_confirmed_migration_moves_only_the_devices_its_dry_run_showed(nso, driver):
    """The group gained a device since the dry-run the operator confirmed: nothing moves."""
    drive = driver(agent_config(nso))
    params = {"new_ned_id": NEW, "devices": [], "device_groups": ["edge"], "dry_run": False}
    with pytest.raises(StepFailed) as failed:
        drive.step("ned_migrate", {**params, "expected_devices": ["router-nc-2", "router-nc-9"]})
    assert "no longer router-nc-9" in str(failed.value)
    assert "nothing was migrated" in str(failed.value)
    out, status = nso.cli("config; devices device-group edge device-name [ router-nc-1 ]; commit")
    assert status == 0, out
    with pytest.raises(StepFailed) as failed:
        drive.step("ned_migrate", {**params, "expected_devices": ["router-nc-2"]})
    assert "now also router-nc-1" in str(failed.value)
    for device in ("router-nc-1", "router-nc-2"):  # nothing moved
        shown = nso.cli(f"show running-config devices device {device}")[0]
        assert f"ned-id {NEW}" not in shown, shown
    both = drive.step("ned_migrate", {**params, "expected_devices": ["router-nc-1", "router-nc-2"]})
    assert [d["state"] for d in both["ned_migration"]["devices"]] == ["migrated", "migrated"]


def test_after_a_crash_mid_migration_the_rerun_still_says_what_it_migrated(nso, driver):
    """The first attempt moved router-nc-1 and the agent died; the rerun (same step, the
    journal kept) moves router-nc-2 and reports both as migrated, so the job says the node
    changed."""
    config = agent_config(nso)
    drive = driver(config)
    params = {"new_ned_id": NEW, "devices": ["router-nc-1", "router-nc-2"], "dry_run": False}
    first = {"id": 555, "job_id": 7, "name": "ned_migrate", "attempt": 1}
    journal = Journal(config.journal_file)
    journal.begin(first)
    journal.update(
        "ned_ids_read",
        ned_ids_before={"router-nc-1": "router-nc-1.0", "router-nc-2": "router-nc-1.0"},
    )
    out, status = nso.cli(f"devices device router-nc-1 migrate new-ned-id {NEW}")
    assert status == 0, out
    done = drive.step("ned_migrate", params, step_id=555)["ned_migration"]
    assert [(d["device"], d["state"], d["old_ned_id"]) for d in done["devices"]] == [
        ("router-nc-1", "migrated", "router-nc-1.0"),
        ("router-nc-2", "migrated", "router-nc-1.0"),
    ]


def test_a_group_answer_the_agent_cannot_tie_to_devices_fails_the_dry_run(nso, driver, sim):
    """NSO's answer to a group's migrate is not documented. When it comes in a form the
    agent cannot tie to devices (here nested in one block), a dry-run that loses data must
    not report that it loses none: it fails, and nothing changes."""
    drive = driver(agent_config(nso))
    before = running_config(nso)
    sim("fault", "set", "--root", str(nso.root), "migrate-answer-wrapped")
    params = {"new_ned_id": NEW, "device_groups": ["edge"], "dry_run": True}
    with pytest.raises(StepFailed, match="could tie only 0 of them to a device") as failed:
        drive.step("ned_migrate", params)
    assert "lost" in str(failed.value) or "modified-path" in str(failed.value)
    assert failed.value.result == {"changed": False}
    assert running_config(nso) == before


def test_a_group_nesting_groups_migrates_and_shows_every_device_it_moves(nso, driver):
    """NSO's migrate on a group moves the devices of the groups it nests too: the dry-run
    shows them (and their lost data), a confirmed migration expects them, and a cycle of
    groups is read once."""
    drive = driver(agent_config(nso))
    for command in (
        "config; devices device-group core device-name [ router-nc-1 ]; commit",
        "config; devices device-group edge device-group [ core ]; commit",
        "config; devices device-group core device-group [ edge ]; commit",
    ):
        out, status = nso.cli(command)
        assert status == 0, out
    before = running_config(nso)
    params = {"new_ned_id": NEW, "device_groups": ["edge"]}
    dry = drive.step("ned_migrate", {**params, "dry_run": True})["ned_migration"]
    assert running_config(nso) == before
    assert [(d["device"], d["groups"]) for d in dry["devices"]] == [
        ("router-nc-2", ["edge"]),
        ("router-nc-1", ["edge"]),
    ]
    assert dry["lost_data_total"] == 2
    done = drive.step(
        "ned_migrate",
        {**params, "dry_run": False, "expected_devices": ["router-nc-1", "router-nc-2"]},
    )["ned_migration"]
    assert sorted((d["device"], d["state"]) for d in done["devices"]) == [
        ("router-nc-1", "migrated"),
        ("router-nc-2", "migrated"),
    ]


def test_an_answer_naming_a_device_outside_the_group_fails_the_step() -> None:
    """Whatever membership the agent did not read: the device NSO names besides was shown to
    no one. A dry-run changed nothing; a migration may have moved it."""
    from agent import ned
    from agent.steps.ned_migration import _only_members

    answer = {"r1": ned.Migration("r1"), "r9": ned.Migration("r9")}
    _only_members({"r1": answer["r1"]}, ["r1", "r2"], "edge", True)  # fewer is fine
    for dry_run in (True, False):
        with pytest.raises(StepFailed) as failed:
            _only_members(answer, ["r1", "r2"], "edge", dry_run)
        assert "names r9, not found among the group's members (r1, r2)" in str(failed.value)
        assert failed.value.result == {"changed": not dry_run}


@pytest.mark.parametrize(
    "shown, members",
    [
        (
            "devices device-group edge\n device-name [ a b ]\n device-group [ core x ]\n!",
            (["a", "b"], ["core", "x"]),
        ),
        ("devices device-group edge\n device-group core\n!", ([], ["core"])),
        ("devices device-group edge device-name [ a ]\n", (["a"], [])),
        ("devices device-group device-group\n!", ([], [])),  # a group named so nests none
        ("% No entries found.", None),
    ],
)
def test_a_groups_two_leaf_lists_are_read_apart(shown, members) -> None:
    from agent import ned

    assert ned.group_members(shown) == members


def _ned_id_of(host, device: str) -> str:
    shown = host.cli(f"show running-config devices device {device} device-type")[0]
    return NEW if f"ned-id {NEW}" in shown else "old"


def lose_reply_once(sim, host, command_text: str) -> None:
    """The CLI's connection drops once, after NSO ran a command holding ``command_text``."""
    sim("fault", "set", "--once", "--root", str(host.root), "cli-exec-reply-lost", command_text)


def test_a_cli_lost_while_nso_migrates_says_the_node_may_have_changed(nso, driver, sim):
    """The connection drops once NSO has run the migrate: NSO may have moved the device
    and may still be at it, so the step never says nothing was migrated."""
    drive = driver(agent_config(nso))
    lose_reply_once(sim, nso, "migrate new-ned-id")
    params = {"new_ned_id": NEW, "devices": ["router-nc-1"], "dry_run": False}
    with pytest.raises(StepFailed, match="may still be at it") as failed:
        drive.step("ned_migrate", params)
    assert failed.value.result == {"changed": True}
    assert _ned_id_of(nso, "router-nc-1") == NEW  # it had: the report must not say otherwise


def test_a_read_back_that_fails_after_the_migration_says_the_node_changed(nso, driver, sim):
    """Every migrate went through, then reading the devices back fails: the devices moved,
    and the failure says the node changed (else the job would end `unchanged`)."""
    drive = driver(agent_config(nso))

    def lose_the_read_back(_percent: int, message: str) -> None:
        if message == "router-nc-2 done":
            lose_reply_once(sim, nso, "device-type")

    drive.on_progress = lose_the_read_back
    params = {"new_ned_id": NEW, "devices": ["router-nc-1", "router-nc-2"], "dry_run": False}
    with pytest.raises(StepFailed, match="reading the devices' ned-ids back failed") as failed:
        drive.step("ned_migrate", params)
    assert failed.value.result == {"changed": True}
    assert {_ned_id_of(nso, d) for d in ("router-nc-1", "router-nc-2")} == {NEW}


def test_a_rerun_refused_before_migrating_says_what_the_first_attempt_moved(nso, driver):
    """The first attempt moved router-nc-1 and the agent died; meanwhile the group gained a
    device, so the rerun refuses before any migrate. It must not say nothing was migrated:
    router-nc-1 was, by this step."""
    config = agent_config(nso)
    drive = driver(config)
    journal = Journal(config.journal_file)
    journal.begin({"id": 556, "job_id": 7, "name": "ned_migrate", "attempt": 1})
    journal.update(
        "ned_ids_read",
        ned_ids_before={"router-nc-1": "router-nc-1.0", "router-nc-2": "router-nc-1.0"},
    )
    journal.update("migrating", migrate_sent=True)
    for command in (
        f"devices device router-nc-1 migrate new-ned-id {NEW}",
        "config; devices device-group edge device-name [ router-nc-1 ]; commit",
    ):
        out, status = nso.cli(command)
        assert status == 0, out
    params = {
        "new_ned_id": NEW,
        "device_groups": ["edge"],
        "dry_run": False,
        "expected_devices": ["router-nc-2"],
    }
    with pytest.raises(StepFailed, match="now also router-nc-1") as failed:
        drive.step("ned_migrate", params, step_id=556)
    assert "nothing was migrated" not in str(failed.value)
    assert "earlier attempt of this step had migrated router-nc-1" in str(failed.value)
    assert failed.value.result == {"changed": True}
    assert _ned_id_of(nso, "router-nc-2") == "old"


def test_a_device_moved_since_the_dry_run_is_not_migrated_unseen(nso, driver):
    """The dry-run showed router-nc-1 already on the new ned-id (nothing to change, no
    data lost); since then it went back to the old one. Confirming that dry-run must not
    migrate it: its changes and lost data were never shown."""
    drive = driver(agent_config(nso))
    out, status = nso.cli(f"devices device router-nc-1 migrate new-ned-id {NEW}")
    assert status == 0, out
    dry = drive.step(
        "ned_migrate", {"new_ned_id": NEW, "devices": ["router-nc-1"], "dry_run": True}
    )
    (entry,) = dry["ned_migration"]["devices"]
    assert (entry["state"], entry["old_ned_id"]) == ("already", NEW)
    out, status = nso.cli("devices device router-nc-1 migrate new-ned-id router-nc-1.0")
    assert status == 0, out
    confirmed = {
        "new_ned_id": NEW,
        "devices": ["router-nc-1"],
        "dry_run": False,
        "expected_devices": ["router-nc-1"],
        "expected_ned_ids": {"router-nc-1": entry["old_ned_id"]},
    }
    with pytest.raises(
        StepFailed, match=re.escape("router-nc-1 moved from router-nc-2.0 to router-nc-1.0")
    ):
        drive.step("ned_migrate", confirmed)
    assert _ned_id_of(nso, "router-nc-1") == "old"


def test_what_nso_prints_reaches_the_result_without_a_nul() -> None:
    """NSO's text goes into the result the server keeps, which holds no NUL character; a
    ned-id NSO shows that is not one is refused, not passed on."""
    from agent import ned
    from agent.errors import NsoError
    from agent.steps.ned_migration import _fields

    assert _fields({"path": "/a", "value": "a\x00b"}) == {"path": "/a", "value": "ab"}
    shown = "devices device r1\n device-type netconf ned-id {}\n!"
    assert ned.device_ned_id(shown.format("router-nc-1.0")) == "router-nc-1.0"
    for odd in ("x" * 200, "a\x00b", "r..1"):
        with pytest.raises(NsoError, match="cannot read as a ned-id"):
            ned.device_ned_id(shown.format(odd))


def test_a_first_attempt_refused_credits_no_earlier_attempt(nso, driver):
    """The dry-run showed router-nc-1 on the old ned-id; someone moved it through NSO
    since. The confirmed migration refuses, and says nothing of an earlier attempt of the
    step: there was none."""
    drive = driver(agent_config(nso))
    out, status = nso.cli(f"devices device router-nc-1 migrate new-ned-id {NEW}")
    assert status == 0, out
    confirmed = {
        "new_ned_id": NEW,
        "devices": ["router-nc-1"],
        "dry_run": False,
        "expected_devices": ["router-nc-1"],
        "expected_ned_ids": {"router-nc-1": "router-nc-1.0"},
    }
    with pytest.raises(
        StepFailed, match=re.escape("moved from router-nc-1.0 to router-nc-2.0")
    ) as failed:
        drive.step("ned_migrate", confirmed)
    assert "earlier attempt" not in str(failed.value)
    assert failed.value.result == {}


def test_data_written_while_the_migration_runs_fails_the_step_after_it(nso, driver):
    """The dry-run right before the migrate loses only what the operator confirmed; then,
    before the migrate itself, a commit gives the device a value the new NED drops. The
    migrate loses it: the step fails after it, says the devices moved and what was lost."""
    drive = driver(agent_config(nso))
    dry = drive.step(
        "ned_migrate", {"new_ned_id": NEW, "devices": ["router-nc-1"], "dry_run": True}
    )
    (entry,) = dry["ned_migration"]["devices"]
    assert entry["lost_data"], "the old NED's mtu is lost: the check has something to match"
    written: list[str] = []

    def commit_between_the_dry_run_and_the_migrate(_percent: int, message: str) -> None:
        # The check's dry-run reports "router-nc-1 done" first; the migrate comes next.
        if message == "router-nc-1 done" and not written:
            out, status = nso.cli("config; devices device router-nc-1 config mtu 9000; commit")
            assert status == 0, out
            written.append(out)

    drive.on_progress = commit_between_the_dry_run_and_the_migrate
    confirmed = {
        "new_ned_id": NEW,
        "devices": ["router-nc-1"],
        "dry_run": False,
        "expected_devices": ["router-nc-1"],
        "expected_ned_ids": {"router-nc-1": entry["old_ned_id"]},
        "expected_lost_data": {
            "router-nc-1": {"total": len(entry["lost_data"]), "blocks": entry["lost_data"]}
        },
    }
    with pytest.raises(StepFailed, match="lost data the confirmed dry-run did not show") as failed:
        drive.step("ned_migrate", confirmed)
    assert written, "the commit ran between the check and the migrate"
    assert "9000" in str(failed.value)
    assert failed.value.result == {"changed": True}
    assert _ned_id_of(nso, "router-nc-1") == NEW
