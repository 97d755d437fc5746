"""The NSO adapter (a step's ``ctx.nso``): NSO's local commands, its service and its CLI,
behind typed methods.

Steps never write an NSO command or read what NSO prints: they call typed methods
(``stop``, ``backup``, ``packages_reload``, ``show_ha_status``...). CLI text is built only
here, from values ``agent/trust.py`` checks where the command is written. Beneath:
``agent/nso_commands.py`` runs the local commands by path and reads what they print,
``agent/nso_cli.py`` is the CLI's SSH transport, ``agent/nso_cli_output.py`` reads its answers.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypedDict

from agent import ned, patch_bundle, trust
from agent import nso_cli_output as answers
from agent.config import Config, HostPaths
from agent.errors import CliError, NsoError
from agent.nso_cli import NsoCli
from agent.nso_cli_output import Fingerprint
from agent.nso_commands import (
    START_EXIT_CODES,
    STARTED,
    STOPPED,
    UNKNOWN,
    CommandResult,
    parse_backup_path,
    parse_daemon_version,
    parse_status,
    parse_version,
    run,
    set_env_line,
)


class ReloadRefusedDataLoss(CliError):
    """NSO refused ``packages reload`` because namespaces (and their data) would be deleted."""


@dataclass
class ReloadResult:
    """A ``packages reload`` NSO carried out: the packages that failed (``result false``)."""

    failures: list[str]
    output: str


@dataclass
class PackageStatus:
    """A package's ``oper-status`` (None when NSO printed none) and why it is not up."""

    oper_status: Optional[str]
    detail: str


class HaStatus(TypedDict):
    """``show high-availability`` as the heartbeat reports it and the HA steps read it."""

    enabled: bool
    mode: str
    current_id: Optional[str]
    assigned_role: Optional[str]
    primary_id: Optional[str]
    be_secondary_result: Optional[str]  # why the last join failed (`error (26) - ...`)
    read_only: bool
    connected_secondaries: list[str]  # ids, on a primary


# `packages ha sync and-reload`, or `and-add` when the change only adds packages.
HA_SYNC_VARIANTS = ("and-reload", "and-add")
PHASE0, PHASE1 = "phase0", "phase1"
# `ncs --status` during start-up, in order ("starting" is before phase0, ncs(1)).
START_PHASES = ("starting", PHASE0, PHASE1, STARTED)


def _phase_index(state: str) -> int:
    """How far a start has come (-1: not starting, or unknown)."""
    return START_PHASES.index(state) if state in START_PHASES else -1


class Nso:
    """One NSO installation: its commands, its service and its CLI."""

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.paths: HostPaths = config.paths
        self.log = log or (lambda _line: None)
        self.nso_seconds = 0.0  # time spent waiting on NSO's own commands
        self._cli = NsoCli(config, self.log)

    def seconds_in_nso(self) -> float:
        """Time spent in NSO's commands and its CLI (connecting included)."""
        return self.nso_seconds + self._cli.nso_seconds

    def close(self) -> None:
        """Close the CLI's connection (a later CLI call opens a new one)."""
        self._cli.close()

    def cmd(self, args: list[str], timeout: Optional[float] = 600, **kw: object) -> CommandResult:
        result = run(args, timeout=timeout, **kw)  # type: ignore[arg-type]
        self.nso_seconds += result.seconds
        self.log(result.describe())
        return result

    # -- facts ------------------------------------------------------------------------

    def current_version(self) -> Optional[str]:
        """The release ``current`` points at, from its folder name (no command needed)."""
        try:
            target = os.readlink(self.paths.current)
        except OSError:
            return None
        name = Path(target).name
        return name[len("ncs-") :] if name.startswith("ncs-") else None

    def installed_releases(self) -> list[str]:
        base = self.paths.install_dir
        if not base.is_dir():
            return []
        return sorted(
            p.name[len("ncs-") :]
            for p in base.iterdir()
            if p.name.startswith("ncs-") and (p / "bin" / "ncs").exists()
        )

    def version(self) -> Optional[str]:
        """``ncs --version`` of ``current`` (works with NSO down)."""
        ncs = self.paths.bin("ncs")
        if not ncs.exists():
            return None
        result = self._timed([str(ncs), "--version"])
        return parse_version(result.stdout) if result.returncode == 0 else None

    def status(self) -> str:
        """What ``ncs --status`` says; raises NsoError when it cannot tell."""
        return self.daemon()[0]

    def state(self) -> str:
        """Like ``status`` but ``unknown`` instead of raising, for callers that wait or
        act the same either way."""
        return self._query()[0]

    def daemon(self) -> tuple[str, Optional[str]]:
        """(state, version) as the running daemon reports them: what runs, not what
        ``current`` points at (they differ between a switch and the next start). Raises
        NsoError when the state cannot be told (never a guess of "stopped")."""
        state, version, result = self._query()
        if state == UNKNOWN:
            raise NsoError(
                "ncs --status did not tell whether NSO runs"
                + (" (no answer in 60 s)" if result and result.timed_out else "")
                + ": check NSO by hand; nothing is done to it meanwhile",
                result.output if result else "",
            )
        return state, version

    def _query(self) -> tuple[str, Optional[str], Optional[CommandResult]]:
        ncs = self.paths.bin("ncs")
        if not ncs.exists():
            # `current` points at no release: any installed release's `ncs --status` asks
            # the same daemon; with none installed, NSO cannot be running.
            found = [self.paths.release_dir(v) / "bin" / "ncs" for v in self.installed_releases()]
            if not found:
                return STOPPED, None, None
            ncs = found[-1]
        result = self._timed([str(ncs), "--status"])
        state = parse_status(result)
        return state, parse_daemon_version(result) if state != STOPPED else None, result

    def _timed(self, args: list[str]) -> CommandResult:
        """A quiet query of NSO (no log line), counted as time spent in NSO's commands."""
        result = run(args, timeout=60)
        self.nso_seconds += result.seconds
        return result

    # -- service ----------------------------------------------------------------------

    def _service(self, verb: str, timeout: Optional[float]) -> CommandResult:
        if self.config.uses_systemd():
            return self.cmd([str(self.paths.systemctl), verb, "ncs"], timeout=timeout)
        return self.cmd([str(self.paths.init_script), verb], timeout=timeout)

    def wait_status(
        self, done: Callable[[str], bool], timeout: float, interval: float = 0.5
    ) -> str:
        began = time.monotonic()
        counted = self.nso_seconds
        deadline = began + timeout
        while True:
            state = self.state()  # unknown while waiting is not an answer: ask again
            if done(state) or time.monotonic() >= deadline:
                # All of it is waiting on NSO (its status calls included, counted once).
                self.nso_seconds = counted + (time.monotonic() - began)
                return state
            time.sleep(min(interval, max(0.05, deadline - time.monotonic())))

    def stop(self) -> None:
        """Stop NSO through its service; done when ``ncs --status`` says it is down (an
        unknown state is stopped too, and waited for until it positively is)."""
        if self.state() == STOPPED:
            self.log("NSO is already stopped")
            return
        timeout = self.config.stop_timeout
        if self.config.uses_systemd() and not self._unit_active():
            # Started outside ncs.service (``start_read_only``'s phases): `systemctl stop`
            # would do nothing and the fallback below would come only after the timeout.
            self.log("NSO runs outside ncs.service (started in phases): ncs --stop")
            result = self.cmd([str(self.paths.bin("ncs")), "--stop"], timeout=timeout)
        else:
            result = self._service("stop", timeout)
        state = self.wait_status(lambda s: s == STOPPED, timeout)
        if state != STOPPED:
            # The service did not bring it down: ask the daemon directly, as the guide's
            # fallback (`ncs --stop` returns once the daemon has gone).
            self.cmd([str(self.paths.bin("ncs")), "--stop"], timeout=timeout)
            state = self.wait_status(lambda s: s == STOPPED, 10)
        if state != STOPPED:
            raise NsoError(
                f"NSO is still {state} after stopping it; stop it by hand and retry", result.output
            )

    def _unit_active(self) -> bool:
        """``systemctl is-active ncs`` says active (or activating, deactivating)."""
        result = self._timed([str(self.paths.systemctl), "is-active", "ncs"])
        return result.stdout.strip() in ("active", "activating", "deactivating", "reloading")

    def start(self, reload: bool, timeout: float) -> CommandResult:
        """Start NSO (with package reload if asked) and wait until it says ``started``.

        The service's own verdict is not final: systemd gives up after 90 s while NSO keeps
        starting (the guide says so), so a failed or timed-out start command is judged by
        ``ncs --status`` until ``timeout`` passes. Raises NsoError when NSO is not started.
        """
        began = time.monotonic()
        if self.config.uses_systemd():
            result = self._start_systemd(reload, timeout)
        else:
            verb = "start-with-package-reload" if reload else "start"
            result = self._service(verb, timeout)
        state = self.state()
        if state != STARTED and state != STOPPED:
            remaining = max(1.0, timeout - (time.monotonic() - began))
            self.log(f"NSO is {state} after the start command; waiting up to {remaining:.0f} s")
            state = self.wait_status(lambda s: s in (STARTED, STOPPED), remaining)
        if state == STARTED:
            if not result.ok:
                self.log(
                    "The start command failed but NSO reached 'started' (a service timeout "
                    "is not a start failure)"
                )
            return result
        raise self._start_failure(result)

    def _start_failure(self, result: CommandResult, what: str = "NSO did not start") -> NsoError:
        """Why NSO did not start: the exit status, its meaning and NSO's reason from ncs.log."""
        code = self.exit_code_from_log() if result.returncode in (0, 1) else result.returncode
        meaning = START_EXIT_CODES.get(code or -1, "")
        return NsoError(
            f"{what} (exit status {code}"
            + (f": {meaning}" if meaning else "")
            + ")"
            + (f"; {self.last_failure_reason()}" if self.last_failure_reason() else ""),
            result.output,
        )

    def start_read_only(self, reload: bool, timeout: float) -> bool:
        """Start NSO through its start phases with read-only mode set in phase1, before
        phase2 opens the northbound interfaces (SSH CLI, NETCONF, RESTCONF...): NSO accepts
        no write before read-only mode is on. A start left in a phase (a restarted agent)
        goes on from there. True when read-only mode was set before phase2; False when NSO
        was already started, so the caller sets it (writes may have been accepted).

        The phases run ``ncs`` by path with the arguments and environment NSO's init script
        and ncs.service give it (``--cd`` the run dir, ``-c`` ncs.conf, ``NCS_*_DIR``), not
        through the service: neither knows the phases.
        """
        began = time.monotonic()

        def left() -> float:
            return max(1.0, timeout - (time.monotonic() - began))

        ncs = str(self.paths.bin("ncs"))
        state = self.state()
        if state == STOPPED:
            args = [ncs, "--cd", str(self.paths.run_dir), "-c", str(self.paths.ncs_conf)]
            args += ["--with-package-reload"] if reload else []
            state = self._to_phase([*args, "--start-phase0"], PHASE0, left())
        elif _phase_index(state) < _phase_index(PHASE0):
            self.log(f"NSO is {state} (a start in progress): waiting for phase0")
            state = self._to_phase([], PHASE0, left())
        if state == PHASE0:
            state = self._to_phase([ncs, "--start-phase1"], PHASE1, left())
        if state != PHASE1:
            return False  # started already: the read-only mode is the caller's to set
        self.console_read_only(True)
        self._to_phase([ncs, "--start-phase2"], STARTED, left())
        return True

    def _to_phase(self, args: list[str], phase: str, timeout: float) -> str:
        """Run ``args`` (if any) and wait until NSO reaches ``phase`` (or a later one);
        raises NsoError when NSO stops or does not get there in ``timeout``."""
        result = self.cmd(args, timeout=timeout, env=self._start_env()) if args else None
        state = self.wait_status(
            lambda s: s == STOPPED or _phase_index(s) >= _phase_index(phase), timeout
        )
        if _phase_index(state) >= _phase_index(phase):
            return state
        what = f"NSO did not reach {phase}: it is {state}"
        if result is not None and state == STOPPED:
            raise self._start_failure(result, what)
        raise NsoError(
            f"{what} after {timeout:.0f} s; look at ncs.log, stop NSO (ncs --stop) and retry",
            result.output if result else "",
        )

    def _start_env(self) -> dict[str, str]:
        """The environment NSO's init script and ncs.service start the daemon with."""
        env = {
            "NCS_DIR": str(self.paths.current),
            "NCS_CONFIG_DIR": str(self.paths.config_dir),
            "NCS_RUN_DIR": str(self.paths.run_dir),
            "NCS_LOG_DIR": str(self.paths.ncs_log.parent),
        }
        if self.config.uses_systemd():
            # ncs.service's EnvironmentFile; reload is asked for by the phase0 argument.
            env.update(_env_file(self.paths.systemd_conf))
            env.pop("NCS_RELOAD_PACKAGES", None)
        return env

    def console_read_only(self, on: bool) -> None:
        """``high-availability read-only mode true|false`` on the console (``ncs_cli -C``
        over IPC: the SSH CLI is not open before phase2), confirmed by reading it back."""
        command = f"high-availability read-only mode {_cli_bool(on)}"
        result = self.cmd(
            [str(self.paths.bin("ncs_cli")), "-C", "-u", self.config.cli_user],
            timeout=120,
            input=f"{command}\nshow high-availability status read-only-mode\n",
        )
        if answers.read_only_mode(result.stdout) != on:
            raise NsoError(
                f"'{command}' on the console (ncs_cli) did not take: NSO stays in phase1 and "
                "takes no writes; stop it (ncs --stop), check ncs.log and retry the step",
                result.output,
            )

    def _start_systemd(self, reload: bool, timeout: float) -> CommandResult:
        # ncs.service reads NCS_RELOAD_PACKAGES at every start: set it back afterwards or
        # every later restart reloads packages (an operator mistake the guide warns about).
        conf = self.paths.systemd_conf
        if reload:
            set_env_line(conf, "NCS_RELOAD_PACKAGES", "true")
        try:
            return self.cmd([str(self.paths.systemctl), "start", "ncs"], timeout=timeout)
        finally:
            if reload:
                set_env_line(conf, "NCS_RELOAD_PACKAGES", "false")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.paths.ncs_log.open(errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    def exit_code_from_log(self) -> Optional[int]:
        codes = re.findall(r"Daemon died status=(\d+)", self.log_tail(50))
        return int(codes[-1]) if codes else None

    def last_failure_reason(self) -> str:
        reasons = re.findall(r"(NCS package upgrade failed with reason .*)", self.log_tail(50))
        if reasons:
            return reasons[-1].strip()
        errors = [ln for ln in self.log_tail(20).splitlines() if "<ERROR>" in ln]
        return errors[-1].split(": - ", 1)[-1].strip() if errors else ""

    # -- CDB and backups --------------------------------------------------------------

    def cdb_compact(self) -> CommandResult:
        result = self.cmd([str(self.paths.bin("ncs")), "--cdb-compact", str(self.paths.cdb_dir)])
        if not result.ok:
            raise NsoError("ncs --cdb-compact failed", result.output)
        return result

    def backup(self) -> Path:
        """Run ``ncs-backup``; the real path of the backup file it made."""
        before = set(self.paths.backups_dir.glob("ncs-*.backup*"))
        result = self.cmd([str(self.paths.bin("ncs-backup"))], timeout=3600)
        if not result.ok:
            raise NsoError("ncs-backup failed", result.output)
        printed = parse_backup_path(result.output)
        if printed:
            path = Path(printed)
            # A real host prints /var/opt/ncs/...; under a test root it may print either.
            return path if path.exists() else self.paths.path(printed)
        made = sorted(
            set(self.paths.backups_dir.glob("ncs-*.backup*")) - before,
            key=lambda p: p.stat().st_mtime,
        )
        if not made:
            raise NsoError("ncs-backup said nothing about the file it made", result.output)
        return made[-1]

    def run_installer(self, installer: Path) -> CommandResult:
        """``sh <installer> --system-install --non-interactive``: installs a release beside
        the running one. cwd is the host root: ``/`` on a real host, where it does not
        matter."""
        return self.cmd(
            ["sh", str(installer), "--system-install", "--non-interactive"],
            timeout=3600,
            cwd=self.paths.root,
        )

    def restore(self, backup: Path) -> CommandResult:
        result = self.cmd(
            [str(self.paths.bin("ncs-backup")), "--restore", str(backup), "--non-interactive"],
            timeout=3600,
        )
        if not result.ok or "Restore completed successfully" not in result.output:
            raise NsoError(f"ncs-backup --restore {backup} failed", result.output)
        return result

    # -- the NSO CLI --------------------------------------------------------------------

    def show_ncs_state_version(self) -> Optional[str]:
        """``show ncs-state version``: the version the CLI's NSO says it is."""
        return answers.show_value(self._cli.run("show ncs-state version"), "version")

    def loaded_patches(self) -> dict[str, patch_bundle.LoadedPatch]:
        """``show ncs-state patches``: module -> what NSO lists of it (emergency patches);
        raises CliError when the answer cannot be read."""
        return patch_bundle.patches_table(self._cli.run("show ncs-state patches"))

    def load_patch_modules(self) -> dict[str, str]:
        """``ncs-state patches load-modules``: NSO loads the ``.beam`` files of its patches
        folder; module -> NSO's reason, for each it could not load (empty: all loaded)."""
        # NSO's exit status says only "not every module": the lines say which, and why.
        return patch_bundle.load_failures(
            self._cli.run("ncs-state patches load-modules", check=False)
        )

    def loaded_packages(self) -> set[str]:
        """The names of the packages NSO has loaded."""
        return answers.package_names(self._cli.run("show packages | nomore"))

    def packages_oper_status(self) -> dict[str, str]:
        """Package name -> oper-status of every loaded package."""
        return answers.packages_oper_status(self._cli.run("show packages | nomore"))

    def package_states(self) -> dict[str, tuple[Optional[str], Optional[str]]]:
        """Package name -> (package-version, oper-status) of every loaded package, in one
        ``show packages`` (not one command per package)."""
        return answers.package_states(self._cli.run("show packages | nomore"))

    def package_oper_status(self, name: str) -> PackageStatus:
        name = trust.package_name(name, "package name")
        text = self._cli.run(f"show packages package {name} oper-status", check=False)
        return PackageStatus(
            answers.show_value(text, "oper-status"),
            answers.show_value(text, "error-info") or text.strip(),
        )

    def package_version(self, name: str) -> Optional[str]:
        name = trust.package_name(name, "package name")
        text = self._cli.run(f"show packages package {name} package-version", check=False)
        return answers.show_value(text, "package-version")

    def install_package(self, name: str, version: str, filename: Optional[str] = None) -> str:
        """``software packages install ... replace-existing``; what NSO printed. With the
        staged ``filename``, NSO is named that file (its base name, ``ncs-6.2-router-nc-1.0.2``):
        NAME-VERSION alone leaves off the ``ncs-X.Y-`` prefix, and with builds of several
        releases side by side in /opt/ncs/packages (as the guide keeps them) it names more
        than one."""
        name = trust.package_name(name, "package name")
        version = trust.package_version(version, "package version")
        wanted = f"{name}-{version}"
        if filename is not None:
            base = trust.package_file(filename, "package file")[0]
            wanted = base[: -len(".tar.gz")] if base.endswith(".tar.gz") else base
        command = f"software packages install package {wanted} replace-existing"
        return self._cli.run(command).strip()

    def deinstall_package(self, name: str, version: str) -> str:
        """``software packages deinstall package NAME-VERSION``: out of the load path, gone
        at the next reload; what NSO printed. A package already out of it is no error (the
        step runs again after a restart)."""
        name = trust.package_name(name, "package name")
        version = trust.package_version(version, "package version")
        try:
            return self._cli.run(f"software packages deinstall package {name}-{version}").strip()
        except CliError as exc:
            if "is not installed" not in exc.output:
                raise
            return f"{name}-{version} was deinstalled already"

    def packages_reload(self, force: bool = False) -> ReloadResult:
        """``packages reload`` (``force``: even if NSO deletes namespaces and their data).

        Raises ReloadRefusedDataLoss when NSO refuses it for the data it would delete, with
        NSO's lines verbatim; CliError for any other refusal.
        """
        command = "packages reload force" if force else "packages reload"
        try:
            text = self._cli.run(command, timeout=3600)
        except CliError as exc:
            if answers.refuses_data_loss(exc.output):
                raise ReloadRefusedDataLoss(str(exc), exc.output) from None
            raise
        return ReloadResult(answers.reload_failures(text), text)

    def packages_ha_sync(self, variant: str, timeout: float = 3600) -> ReloadResult:
        """``packages ha sync and-reload { wait-commit-queue-empty }`` (``and-add``: only new
        packages) on the HA primary: NSO sends its packages to the secondaries and reloads
        every member. Raises CliError with NSO's lines verbatim when it refuses or fails;
        CliLost (agent/nso_cli.py) when the CLI went away, or ``timeout`` seconds passed,
        while it ran: NSO may still be syncing."""
        if variant not in HA_SYNC_VARIANTS:
            raise ValueError(f"packages ha sync {variant!r}: expected one of {HA_SYNC_VARIANTS}")
        # The guide pairs wait-commit-queue-empty with and-reload: queue items written for
        # the old schema would break the reload.
        wait = " { wait-commit-queue-empty }" if variant == "and-reload" else ""
        text = self._cli.run(f"packages ha sync {variant}{wait}", timeout=timeout)
        return ReloadResult(answers.reload_failures(text), text)

    def running_config_fingerprint(self) -> Fingerprint:
        """The data fingerprint (docs/agent.md): ``show running-config``, normalised."""
        return answers.running_config_fingerprint(self._cli.run("show running-config | nomore"))

    def show_ha_status(self) -> HaStatus:
        """``show high-availability``; raises CliError when it cannot be read."""
        status = answers.ha_status(self._cli.run("show high-availability"))
        return HaStatus(
            enabled=bool(status["enabled"]),
            mode=str(status["mode"]),
            current_id=status["current_id"],
            assigned_role=status["assigned_role"],
            primary_id=status["primary_id"],
            be_secondary_result=status["be_secondary_result"],
            read_only=bool(status["read_only"]),
            connected_secondaries=list(status["connected_secondaries"]),
        )

    def ha_read_only_mode(self) -> bool:
        """``show high-availability status read-only-mode``; raises CliError when NSO does
        not say (unknown is not "writable")."""
        text = self._cli.run("show high-availability status read-only-mode")
        on = answers.read_only_mode(text)
        if on is None:
            raise CliError(
                "'show high-availability status read-only-mode' did not say true or false: "
                f"{text[:200]!r}; check HA on this node by hand",
                text,
            )
        return on

    def set_ha_read_only(self, on: bool) -> None:
        """``high-availability read-only mode true|false`` (NSO prints nothing)."""
        self._cli.run(f"high-availability read-only mode {_cli_bool(on)}")

    def ensure_ha_read_only(self, on: bool) -> bool:
        """Read-only mode as asked, set only when it differs and confirmed by reading it
        back (NSO prints nothing when it sets it); what NSO says at the end."""
        if self.ha_read_only_mode() == on:
            self.log(f"read-only mode is {_cli_bool(on)} already")
            return on
        self.set_ha_read_only(on)
        if self.ha_read_only_mode() != on:
            raise NsoError(
                f"read-only mode is still {_cli_bool(not on)} after 'high-availability "
                f"read-only mode {_cli_bool(on)}'; set it by hand on this node and retry the step"
            )
        return on

    def ha_be_primary(self) -> str:
        """``high-availability be-primary``; what NSO printed (``result ok``)."""
        return self._cli.run("high-availability be-primary").strip()

    def ha_enable(self) -> str:
        """``high-availability enable``; what NSO printed (``result enabled``). The role is
        taken afterwards, by the HA start-up settings: read it with ``show_ha_status``."""
        return self._cli.run("high-availability enable").strip()

    # -- NED migration (agent/ned.py checks every name before it is written here) ------

    def device_ned_id(self, device: str) -> Optional[str]:
        """The ned-id ``device`` uses now; None when NSO has no such device."""
        device = ned.device_name(device, "device")
        text = self._cli.run(f"show running-config devices device {device} device-type | nomore")
        return ned.device_ned_id(text)

    def device_group_members(self, group: str) -> Optional[tuple[list[str], list[str]]]:
        """The devices device group ``group`` names and the groups it nests; None when NSO
        has no such group."""
        group = ned.group_name(group, "device group")
        text = self._cli.run(f"show running-config devices device-group {group} | nomore")
        return ned.group_members(text)

    def migrate_ned(
        self, where: str, name: str, new_ned_id: str, dry_run: bool
    ) -> dict[str, ned.Migration]:
        """``devices device|device-group NAME migrate new-ned-id ID [dry-run]``: device ->
        what NSO reported for it. Raises CliError with NSO's words when it refuses."""
        if where not in ("device", "device-group"):
            raise ValueError(f"migrate on a device or a device-group, not {where!r}")
        checker = ned.device_name if where == "device" else ned.group_name
        name = checker(name, where.replace("-", " "))
        new_ned_id = ned.ned_id(new_ned_id, "new_ned_id")
        command = f"devices {where} {name} migrate new-ned-id {new_ned_id}"
        _cli_bool(dry_run)  # a bool, nothing else: no other value may mean a real migration
        text = self._cli.run(command + (" dry-run" if dry_run else ""), timeout=3600)
        # A dry-run's answer is what the operator confirms: every block must be read. A
        # migration's is not (its dry-run was read): what it did is read back from NSO.
        return ned.migrations(text, name if where == "device" else None, whole=dry_run)


def _cli_bool(on: bool) -> str:
    """A Python bool as NSO's CLI writes a boolean leaf; anything else is refused, so no other
    text reaches a command."""
    if not isinstance(on, bool):
        raise TypeError(f"expected True or False, got {on!r}")
    return "true" if on else "false"


def _env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a systemd EnvironmentFile (comments and others skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    found = (re.match(r"^\s*([A-Za-z_]\w*)\s*=\s*(.*?)\s*$", line) for line in lines)
    return {m.group(1): m.group(2).strip('"') for m in found if m}
