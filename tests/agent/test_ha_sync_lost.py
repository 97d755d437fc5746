"""``ha_sync_packages`` when the agent does not see the sync end: the CLI went away while it
ran (simulator fault ``ha-sync-cli-lost``: the connection drops while NSO holds the primary
read-only, and the sync goes on), or the agent restarted after sending it. The step waits,
within the sync's own bound (``sync_timeout``, scaled down here), for NSO to end it, and
never changes read-only mode while NSO may still hold it; what it cannot settle it calls
unknown, with the mode left alone."""

from __future__ import annotations

import shutil
import time
from typing import Any, Union

import pytest

from agent.errors import StepFailed
from agent.journal import Journal
from agent.steps.context import StepContext
from agent.steps.package_links import save_package_links
from agent.steps.registry import run_step
from tests.support.sim_hosts import TIME_SCALE, sim

from .conftest import agent_config
from .test_ha_package_steps import NEW_SERVICE, read_only

HOLD = 300.0  # nominal seconds the sync goes on after the CLI drops (3 s in the tests)
HELD_S = HOLD * TIME_SCALE
SYNC = "packages ha sync and-reload { wait-commit-queue-empty }"
SET_MODE = "ncs# high-availability read-only mode"  # how the step's log shows it set the mode


def _pair(make_cluster, artifacts):
    """A primary and its secondary, l3vpn 1.1 installed on the primary (1.0 loaded)."""
    primary, secondary = make_cluster("6.2")
    secondary.wait_for("show high-availability status mode", "secondary")
    shutil.copy(artifacts.service("6.2", "1.1"), primary.path("/opt/ncs/packages"))
    assert primary.cli("software packages install package l3vpn-1.1 replace-existing")[1] == 0
    return primary, secondary


def _fault(host, name: str, *value: str) -> None:
    sim("fault", "set", "--root", str(host.root), name, *value, "--once")


def _sync(
    config, params: dict[str, Any], keep: bool = False, **facts: Any
) -> tuple[StepContext, Any]:
    """Run ha_sync_packages as the runner would, with ``facts`` in its journal (what an
    earlier attempt recorded); the step's context (its log) and its result or StepFailed.
    ``keep``: the journal stays as the agent left it when it died before its report."""
    return _run(
        config,
        910,
        "ha_sync_packages",
        {"sync": "and-reload", "packages": NEW_SERVICE, **params},
        {},
        "ha_package_upgrade",
        facts,
        keep,
    )


def _run(
    config,
    step_id: int,
    name: str,
    params: dict[str, Any],
    context: dict[str, Any],
    kind: str,
    facts: dict[str, Any],
    keep: bool = False,
) -> tuple[StepContext, Any]:
    """Run step ``name`` of job 7 as the runner would: its context and result (or
    StepFailed)."""
    step = {
        "id": step_id,
        "job_id": 7,
        "attempt": 1,
        "name": name,
        "params": params,
        "context": context,
        "job": {"id": 7, "kind": kind},
    }
    journal = Journal(config.journal_file)
    journal.begin(step)
    if facts:
        journal.update("earlier attempt", **facts)
    ctx = StepContext(config, step, journal)
    outcome: Union[dict[str, Any], StepFailed]
    try:
        outcome = run_step(ctx)
    except StepFailed as exc:
        outcome = exc
    if not keep:
        journal.clear()
    return ctx, outcome


def _step_log(ctx: StepContext) -> str:
    return "\n".join(ctx.lines)


def _until_nso_ended(began: float, held: float = HELD_S) -> None:
    """Past the end of a sync the simulator holds ``held`` seconds from ``began``."""
    time.sleep(max(0.0, began + held + 1.5 - time.monotonic()))


def _version(host, package: str) -> str:
    return host.cli(f"show packages package {package} package-version")[0].strip()


def test_cli_lost_during_a_sync_that_succeeds(make_cluster, artifacts) -> None:
    primary, secondary = _pair(make_cluster, artifacts)
    _fault(primary, "ha-sync-cli-lost", str(HOLD))
    began = time.monotonic()

    ctx, outcome = _sync(agent_config(primary), {"sync_timeout": 60})

    # A lost connection is no refusal: the step waited for NSO, which synced both members.
    assert outcome == {"read_only_before": False, "read_only": False}, outcome
    assert time.monotonic() - began >= HELD_S
    log = _step_log(ctx)
    assert "lost the NSO CLI" in log and "waiting for NSO to end the sync" in log
    assert SET_MODE not in log  # never turned read-only off under NSO: NSO put it back
    assert not read_only(primary)
    assert _version(primary, "l3vpn") == _version(secondary, "l3vpn") == "package-version 1.1"


def test_cli_lost_during_a_sync_that_fails_with_read_only_before(make_cluster, artifacts) -> None:
    primary, secondary = _pair(make_cluster, artifacts)
    primary.cli("high-availability read-only mode true")
    _fault(secondary, "ha-sync-reload-fails")
    _fault(primary, "ha-sync-cli-lost", str(HOLD))
    began = time.monotonic()

    _, outcome = _sync(agent_config(primary), {"sync_timeout": 60})

    assert isinstance(outcome, StepFailed), outcome
    message = str(outcome)
    assert "lost the NSO CLI" in message and "It was not sent again" in message
    assert "this primary does not load l3vpn 1.1 up (loaded: 1.0, up)" in message
    assert "NSO left this primary read-write, as it does when the sync fails" in message
    assert "Read-only mode is back to true, as before the sync (confirmed" in message
    # Said once NSO had ended the sync: it stays so (NSO does not turn it off afterwards).
    _until_nso_ended(began)
    assert read_only(primary)
    assert _version(primary, "l3vpn") == "package-version 1.0"


def test_a_sync_past_its_bound_is_unknown_and_read_only_is_left_alone(
    make_cluster, artifacts
) -> None:
    primary, secondary = _pair(make_cluster, artifacts)
    held = 2 * HOLD  # 6 s, past the step's 2 s bound
    _fault(primary, "ha-sync-cli-lost", str(held))
    began = time.monotonic()

    ctx, outcome = _sync(agent_config(primary), {"sync_timeout": 2})

    assert isinstance(outcome, StepFailed), outcome
    message = str(outcome)
    assert "packages ha sync and-reload: the outcome is UNKNOWN. lost the NSO CLI" in message
    assert "the sync's bound (2 s after it was sent)" in message
    assert "Read-only mode was NOT touched: it is true now, it was false before" in message
    assert "set the mode back with 'high-availability read-only mode false'" in message
    assert SET_MODE not in _step_log(ctx)
    assert read_only(primary)  # NSO still holds it: the sync goes on
    # NSO ends the sync on its own and puts the mode back itself.
    _until_nso_ended(began, held * TIME_SCALE)
    assert not read_only(primary)
    assert _version(primary, "l3vpn") == _version(secondary, "l3vpn") == "package-version 1.1"


def test_a_rerun_with_read_only_before_waits_for_the_sync_to_end(make_cluster, artifacts) -> None:
    primary, secondary = _pair(make_cluster, artifacts)
    primary.cli("high-availability read-only mode true")
    _fault(secondary, "ha-sync-reload-fails")
    # The first attempt sent the sync, then the agent restarted: the sync runs on in NSO.
    _fault(primary, "ha-sync-cli-lost", str(HOLD))
    began, sent_at = time.monotonic(), time.time()
    assert primary.cli(SYNC, primary.ssh()) == ("", -1)

    _, outcome = _sync(
        agent_config(primary),
        {"sync_timeout": 60},
        read_only_before=True,
        sync_sent=True,
        sync_sent_at=sent_at,
    )

    assert isinstance(outcome, StepFailed), outcome
    message = str(outcome)
    assert "lost track of it" in message and "it was not sent again" in message
    assert "NSO left this primary read-write" in message
    assert "Read-only mode is back to true" in message
    assert time.monotonic() - began >= HELD_S
    _until_nso_ended(began)
    assert read_only(primary)


def test_a_rollback_sync_naming_no_packages_is_judged_by_the_load_path(
    make_cluster, artifacts
) -> None:
    """A rollback's sync step names no packages: the step judges it by the primary's load
    path (what the sync must make every member load), not by an empty list."""
    primary, secondary = _pair(make_cluster, artifacts)
    _fault(secondary, "ha-sync-reload-fails")
    out, status = primary.cli(SYNC)
    assert status == 1, out
    rollback = {"packages": [], "sync_timeout": 5}
    earlier = {"read_only_before": False, "sync_sent": True, "sync_sent_at": time.time()}

    _, failed = _sync(agent_config(primary), rollback, **earlier)

    assert isinstance(failed, StepFailed), failed
    message = str(failed)
    assert "this primary does not load l3vpn 1.1 up (loaded: 1.0, up)" in message
    assert "judged by the packages in /var/opt/ncs/packages, as the step names none" in message
    assert "Read-only mode is back to false" in message

    assert primary.cli(SYNC)[1] == 0
    _, synced = _sync(agent_config(primary), rollback, **earlier)
    assert synced == {"read_only_before": False, "read_only": False}


def test_nso_unreadable_while_waiting_is_unknown_not_a_crash(make_cluster, artifacts) -> None:
    """NSO cannot be read during the wait (here: the CLI refuses the agent's login): the step
    keeps looking until the bound, then says the outcome is unknown."""
    primary, _ = _pair(make_cluster, artifacts)
    config = agent_config(primary, cli_password="not-the-password")

    _, outcome = _sync(
        config, {"sync_timeout": 2}, read_only_before=False, sync_sent=True, sync_sent_at=0
    )

    assert isinstance(outcome, StepFailed), outcome
    message = str(outcome)
    assert "the outcome is UNKNOWN. An earlier attempt of this step sent" in message
    assert "NSO could not be read: NSO CLI at" in message
    assert "Read-only mode was NOT touched: it could not be read" in message


def test_a_command_whose_confirmation_is_lost_is_not_sent_again(make_host) -> None:
    """The connection drops after NSO ran the command but before it confirmed the request
    (simulator fault ``cli-exec-reply-lost``): the command may have run, so the CLI says
    it lost it, and never sends it again as it would one that never went out."""
    from agent.nso_cli import CliLost, NsoCli

    host = make_host("6.2", [])
    cli = NsoCli(agent_config(host))
    assert "6.2" in cli.run("show ncs-state version")
    _fault(host, "cli-exec-reply-lost", "packages reload")
    try:
        cli.run("packages reload")
    except CliLost as lost:
        assert "it may have taken effect" in str(lost)
    else:
        raise AssertionError("a command that may have run was sent again")
    log = host.path("/var/log/ncs/ncs.log").read_text()
    assert log.count("dropped before confirming an exec request") == 1
    assert "6.2" in cli.run("show ncs-state version")  # a fresh connection afterwards
    cli.close()


def test_cli_lost_while_nso_copies_the_packages_is_not_taken_for_a_failure(
    make_cluster, artifacts
) -> None:
    """NSO copies the packages to the secondaries before it holds the primary read-only:
    lost then, with the primary read-write before, the sync looks like one that failed
    (read-write, the old packages) for as long as the copying takes. The step waits it out
    and sees the sync succeed."""
    primary, secondary = _pair(make_cluster, artifacts)
    _fault(primary, "ha-sync-cli-lost-copying", str(HOLD))
    began = time.monotonic()

    ctx, outcome = _sync(agent_config(primary), {"sync_timeout": 60})

    assert outcome == {"read_only_before": False, "read_only": False}, outcome
    assert time.monotonic() - began >= HELD_S
    assert SET_MODE not in _step_log(ctx)
    assert _version(primary, "l3vpn") == _version(secondary, "l3vpn") == "package-version 1.1"


def test_a_rollback_sync_ends_in_the_mode_it_is_told(make_cluster, artifacts) -> None:
    """A rollback's sync carries the mode the group had before the upgrade
    (``read_only_after``): a primary a failed upgrade left read-only ends read-write."""
    primary, _ = _pair(make_cluster, artifacts)
    primary.cli("high-availability read-only mode true")

    _, outcome = _sync(agent_config(primary), {"sync_timeout": 60, "read_only_after": False})

    assert outcome == {"read_only_before": True, "read_only": False}, outcome
    assert not read_only(primary)
    # The primary's verification, with the sync's result in its context, takes the mode
    # the sync ended in.
    verified = _verify(agent_config(primary), outcome)
    assert verified["read_only"] is False, verified
    _, refused = _sync(agent_config(primary), {"read_only_after": "no"})
    assert isinstance(refused, StepFailed) and "read_only_after" in str(refused)


def _verify(config, context: dict[str, Any]) -> dict[str, Any]:
    """ha_verify_packages on the primary, as the runner runs it after the sync."""
    params = {"packages": _loaded_now(config), "primary": True}
    _, outcome = _run(config, 911, "ha_verify_packages", params, context, "ha_package_rollback", {})
    assert isinstance(outcome, dict), outcome
    return outcome


def _loaded_now(config) -> list[dict[str, str]]:
    """Every package the primary loads, at its version: what its verification expects."""
    from agent.nso import Nso

    states = Nso(config).package_states()
    return [{"name": n, "version": v} for n, (v, _) in sorted(states.items()) if v]


def test_a_lost_sync_that_takes_a_package_out_is_waited_for_though_read_only_as_before(
    make_cluster, artifacts
) -> None:
    """A sync that only takes a package out (an upgrade that removes it: the step names it
    in ``remove``): the primary, read-only before, loads every package of its load path
    already while NSO still syncs. That is no proof the sync ended: the step waits until
    NSO no longer loads the package taken out, and sets the mode it was told only then."""
    primary, _ = _pair(make_cluster, artifacts)
    # A service with no data yet, added to both members, then taken out of the load path.
    extra = artifacts.service("6.2", "1.0", name="audit-svc")
    shutil.copy(extra, primary.path("/opt/ncs/packages"))
    assert primary.cli("software packages install package audit-svc-1.0")[1] == 0
    assert primary.cli(SYNC)[1] == 0
    assert _version(primary, "audit-svc") == "package-version 1.0"
    (primary.path("/var/opt/ncs/packages") / extra.name).unlink()
    primary.cli("high-availability read-only mode true")
    # The first attempt sent the sync, then the agent restarted: the sync runs on in NSO.
    _fault(primary, "ha-sync-cli-lost", str(HOLD))
    began, sent_at = time.monotonic(), time.time()
    assert primary.cli(SYNC, primary.ssh()) == ("", -1)

    ctx, outcome = _sync(
        agent_config(primary),
        {"packages": [], "remove": ["audit-svc"], "sync_timeout": 60, "read_only_after": False},
        read_only_before=True,
        sync_sent=True,
        sync_sent_at=sent_at,
    )

    assert outcome == {"read_only_before": True, "read_only": False}, outcome
    assert time.monotonic() - began >= HELD_S, "judged ended while NSO still synced"
    assert "1.0" not in _version(primary, "audit-svc")
    assert not read_only(primary) and SET_MODE in _step_log(ctx)  # set once NSO had ended


@pytest.mark.parametrize("before", [True, False], ids=["read-only-before", "read-write-before"])
def test_a_rerun_after_the_mode_was_set_keeps_the_verdict_of_the_first_attempt(
    make_cluster, artifacts, before
) -> None:
    """A rollback's sync succeeds and the step sets the mode it was told (the opposite of
    the one before); the agent dies before its report is kept. The rerun must not judge
    the sync again from a mode the first attempt set: read-write after read-only is how a
    failed sync looks, read-only after read-write how one still running looks."""
    primary, _ = _pair(make_cluster, artifacts)
    primary.cli(f"high-availability read-only mode {str(before).lower()}")
    params = {"sync_timeout": 60, "read_only_after": not before}
    wanted = {"read_only_before": before, "read_only": not before}
    config = agent_config(primary)
    _, first = _sync(config, params, keep=True)
    assert first == wanted, first
    began = time.monotonic()
    ctx, rerun = _sync(config, params)
    assert rerun == wanted, rerun
    assert read_only(primary) is (not before)
    assert SYNC not in _step_log(ctx)  # never sent twice
    assert time.monotonic() - began < 20  # no wait for a sync that ended


def test_a_rerun_after_a_failed_sync_put_read_only_back_says_failed(
    make_cluster, artifacts
) -> None:
    """The sync fails on the secondary; the step puts the primary's read-only mode back
    (NSO left it read-write) and the agent dies before its report is kept. Read-only with
    the old packages is how a sync still running looks: the rerun must say failed at once,
    not wait for the sync's bound and call it unknown."""
    primary, secondary = _pair(make_cluster, artifacts)
    primary.cli("high-availability read-only mode true")
    _fault(secondary, "ha-sync-reload-fails")
    config = agent_config(primary)
    _, first = _sync(config, {"sync_timeout": 60}, keep=True)
    assert isinstance(first, StepFailed) and "failed" in str(first), first
    began = time.monotonic()
    _, rerun = _sync(config, {"sync_timeout": 60})
    assert isinstance(rerun, StepFailed), rerun
    assert "UNKNOWN" not in str(rerun) and "Read-only mode is back to true" in str(rerun)
    assert read_only(primary) is True
    assert time.monotonic() - began < 20


def test_a_rerun_after_a_failed_rollback_sync_relinked_still_says_failed(
    make_cluster, artifacts
) -> None:
    """A rollback's sync (the links saved at the backup, l3vpn 1.0) fails on the secondary:
    NSO reloaded nothing, so the step links the load path back to what NSO loads (1.1)
    and dies before its report is kept. The load path now matches what NSO loads: the
    rerun must not judge the sync by it and call the rollback a success."""
    primary, secondary = make_cluster("6.2")
    secondary.wait_for("show high-availability status mode", "secondary")
    config = agent_config(primary)
    saved = primary.path("/var/opt/ncs/backups") / "nso-agent-job-7" / "package-links"
    saved.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(config.journal_file)
    save_package_links(
        StepContext(config, {"id": 1, "job_id": 7, "name": "backup"}, journal), saved
    )
    journal.clear()
    shutil.copy(artifacts.service("6.2", "1.1"), primary.path("/opt/ncs/packages"))
    assert primary.cli("software packages install package l3vpn-1.1 replace-existing")[1] == 0
    assert primary.cli(SYNC)[1] == 0
    _fault(secondary, "ha-sync-reload-fails")
    rollback = {
        "packages": [],
        "restore_links": "/var/opt/ncs/backups/nso-agent-job-7/package-links",
        "sync_timeout": 60,
        "read_only_after": False,
    }
    _, first = _sync(config, rollback, keep=True)
    assert isinstance(first, StepFailed) and "NSO reloaded nothing" in str(first), first
    _, rerun = _sync(config, rollback)
    assert isinstance(rerun, StepFailed), f"a failed rollback reported as {rerun}"
    assert _version(primary, "l3vpn") == "package-version 1.1"
