"""One NSO CLI (C-style) session: command dispatch, shared by SSH sessions and ``ncs_cli``.

Only the commands the upgrade procedures use are simulated; see docs/nso-sim.md for which
output formats come from public sources and which are invented.
"""

from __future__ import annotations

import shlex
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nso_sim import cdb, faults, packages
from nso_sim.ha.manager import HaManager
from nso_sim.node.daemon import RELOAD_OPEN_TX_WAIT, Daemon
from nso_sim.node.errors import ReloadRefused, WriteRefused
from nso_sim.nso_cli.ha_output import alarm_lines, show_ha_lines, sync_lines
from nso_sim.nso_cli.render import NO_ENTRIES, RELOAD_BANNER, reload_blocks, table
from nso_sim.nso_cli.render import lines as _lines
from nso_sim.package_meta import PackageError, PackageInfo, read_package


class CliError(Exception):
    pass


@dataclass
class Result:
    output: str = ""
    ok: bool = True
    exit: bool = False


class CliSession:
    def __init__(self, daemon: Daemon, ha: HaManager, user: str, peer: str, via: str) -> None:
        self.d = daemon
        self.ha = ha
        self.user = user
        self.peer = peer
        self.via = via
        self.mode = "oper"
        self.pending: list[cdb.Op] = []
        # Drops the connection the session came over (set by the SSH server): fault
        # ha-sync-cli-lost.
        self.hang_up: Callable[[], None] = lambda: None

    def prompt(self) -> str:
        return f"{self.user}@ncs(config)# " if self.mode == "config" else f"{self.user}@ncs# "

    def close(self) -> None:
        self.d.config_sessions.discard(self)

    @property
    def has_open_transaction(self) -> bool:
        return self.mode == "config" and bool(self.pending)

    def execute(self, line: str) -> Result:
        """Run one input line; ``;`` separates commands (Cisco's scripts send
        ``"config; ...; commit"`` in one ``ssh`` exec)."""
        parts = _split_commands(line)
        if len(parts) <= 1:
            return self._execute_one(line)
        results: list[Result] = []
        for part in parts:
            results.append(self._execute_one(part))
            if results[-1].exit:
                break
        return Result(
            _lines(*[r.output for r in results if r.output]),
            ok=all(r.ok for r in results),
            exit=results[-1].exit,
        )

    def _execute_one(self, line: str) -> Result:
        line = line.strip()
        if " | " in line:  # output pipes (| nomore, | tab) do not change what is shown here
            line = line.split(" | ", 1)[0].strip()
        if not line or line.startswith("!") or line.startswith("#"):
            return Result()
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            return Result(f"syntax error: {exc}", ok=False)
        try:
            if self.mode == "config":
                return self._config(tokens)
            return self._oper(tokens)
        except (CliError, WriteRefused, cdb.SchemaError) as exc:
            return Result(str(exc), ok=False)
        except ReloadRefused as exc:
            return Result(_lines(*exc.lines), ok=False)
        except faults.DiskFull as exc:
            return Result(f"Error: {exc}", ok=False)
        except Exception as exc:  # a session must survive a simulator bug
            self.d.log("ERROR", f"CLI command {line!r} failed: {traceback.format_exc()}")
            return Result(f"Error: internal error: {exc}", ok=False)

    # ----- operational mode -----
    def _oper(self, tokens: list[str]) -> Result:
        if tokens[0] == "request":  # J-style habit, used by Cisco's upgrade script
            tokens = tokens[1:]
            if not tokens:
                raise CliError("syntax error: incomplete command")
        head, rest = tokens[0], tokens[1:]
        if head in ("exit", "quit", "logout"):
            return Result(exit=True)
        if head in ("config", "configure"):
            # A secondary or a read-only node refuses configuration mode outright.
            if self.d.read_only_now():
                raise CliError("Aborted: node is in read-only mode")
            self.mode = "config"
            self.pending = []
            self.d.config_sessions.add(self)
            return Result("Entering configuration mode terminal")
        if head == "show":
            return self._show(rest)
        if head == "high-availability":
            return self._ha_action(rest)
        if head == "software":
            return self._software(rest)
        if head == "packages":
            return self._packages(rest)
        if head == "ncs-state" and rest[:2] == ["patches", "load-modules"]:
            return self._load_modules()
        if (
            head == "devices"
            and rest[0:1] in (["device"], ["device-group"])
            and rest[2:3] == ["migrate"]
        ):
            return self._migrate(rest[0], rest[1], rest[3:])
        if head in ("switch", "screen-length", "screen-width", "terminal", "paginate"):
            return Result()
        raise CliError(f"syntax error: unknown command: {head}")

    # ----- configuration mode -----
    def _config(self, tokens: list[str]) -> Result:
        head, rest = tokens[0], tokens[1:]
        if head == "do":
            return self._oper(rest)
        if head in ("end", "exit"):
            discarded = bool(self.pending)
            self._leave_config()
            return Result("Uncommitted changes discarded." if discarded else "")
        if head == "abort":
            self._leave_config()
            return Result()
        if head == "top":
            return Result()
        if head == "revert":
            self.pending = []
            return Result()
        if head == "commit":
            return self._commit(rest)
        if head == "show":
            if rest[:1] == ["configuration"]:
                tree: cdb.Tree = {}
                cdb.apply_ops(tree, self.pending)
                lines = cdb.render(tree, self.d.schema())
                return Result(_lines(*lines) if lines else NO_ENTRIES)
            return self._show(rest)
        if head == "no":
            path = cdb.parse_path(rest, self.d.schema())
            self.pending.append(("delete", path, None))
            return Result()
        self.pending += cdb.parse_set(tokens, self.d.schema())
        return Result()

    def _leave_config(self) -> None:
        self.pending = []
        self.mode = "oper"
        self.d.config_sessions.discard(self)

    def _commit(self, args: list[str]) -> Result:
        if not self.pending:
            return Result("% No modifications to commit.")
        if "dry-run" in args:
            tree: cdb.Tree = {}
            cdb.apply_ops(tree, self.pending)
            return Result(
                _lines(
                    "cli {",
                    "    local-node {",
                    "        data " + "\n             ".join(cdb.render(tree, self.d.schema())),
                    "    }",
                    "}",
                )
            )
        queue = "commit-queue" in args and ("async" in args or "sync" in args)
        queue_id = self.d.commit(self.pending, queue=queue)
        self.pending = []
        out = []
        if queue_id is not None:
            if "sync" in args:
                self.d.wait_commit_queue_empty()
            out.append(f"commit-queue-id {queue_id}")
        out.append("Commit complete.")
        if "and-quit" in args:
            self._leave_config()
        return Result(_lines(*out))

    # ----- show -----
    def _show(self, args: list[str]) -> Result:
        if not args:
            raise CliError("syntax error: incomplete command")
        what, rest = args[0], args[1:]
        if what in ("running-config", "full-configuration"):
            schema = self.d.schema()
            with self.d.lock:
                path = cdb.parse_path(rest, schema) if rest else []
                tree = cdb.prune_to(self.d.tree, path)
            lines = cdb.render(tree, schema)
            return Result(_lines(*lines) if lines else NO_ENTRIES)
        if what == "high-availability":
            return Result(_lines(*show_ha_lines(self.ha.status(), rest)))
        if what == "alarms" and rest in ([], ["alarm-list"]):
            return Result(_lines(*alarm_lines(self.ha.alarm_list())))
        if what == "ncs-state":
            version = f"ncs-state version {self.d.version}"
            if rest == ["version"]:
                return Result(version)
            if rest == ["patches"]:
                return Result(_lines(*self._patch_lines()))
            if not rest:
                patches = self._patch_lines()
                return Result(_lines(version, *(patches if patches != [NO_ENTRIES] else [])))
            raise CliError(f"syntax error: unknown element: {rest[0]}")
        if what == "packages":
            return self._show_packages(rest)
        if what == "devices" and rest[:1] == ["commit-queue"]:
            with self.d.lock:
                items = list(self.d.commit_queue)
            if not items:
                return Result(NO_ENTRIES)
            out = []
            for i, item in enumerate(items):
                out += [
                    f"devices commit-queue queue-item {item['id']}",
                    f" status {'executing' if i == 0 else 'waiting'}",
                ]
            return Result(_lines(*out))
        raise CliError(f"syntax error: unknown element: {what}")

    def _patch_lines(self) -> list[str]:
        with self.d.lock:
            patches = sorted(self.d.patches.values(), key=lambda p: p.module)
        if not patches:
            return [NO_ENTRIES]
        rows = [(p.module, p.nso_version, p.patch_id, p.compile_time) for p in patches]
        head = ("NAME", "VERSION", "PATCH-ID", "COMPILE TIME")
        return ["ncs-state patches", *table(head, rows, rule=False)]

    def _show_packages(self, args: list[str]) -> Result:
        pkgs = list(self.d.packages)
        if args[:1] == ["package"] and len(args) >= 2:
            pkgs = [p for p in pkgs if p.info.name == args[1]]
            if not pkgs:
                return Result(NO_ENTRIES)
            if len(args) >= 3:
                pkg, leaf = pkgs[0], args[2]
                if leaf == "oper-status":
                    if pkg.oper_status == "up":
                        return Result("oper-status up")
                    return Result(
                        _lines(
                            f"oper-status {pkg.oper_status}",
                            f'oper-status error-info "{pkg.error_info}"',
                        )
                    )
                if leaf == "package-version":
                    return Result(f"package-version {pkg.info.version}")
                raise CliError(f"syntax error: unknown element: {leaf}")
        if not pkgs:
            return Result(NO_ENTRIES)
        out = []
        for pkg in pkgs:
            info = pkg.info
            out += [
                f"packages package {info.name}",
                f" package-version {info.version}",
                f' description "{info.description}"',
            ]
            if info.ncs_min_versions:
                out.append(f" ncs-min-version [ {' '.join(info.ncs_min_versions)} ]")
            out.append(f" directory ./state/packages-in-use.cur/{info.name}")
            if info.ned_ids:
                out.append(f" component {info.name} ned ned-id {' '.join(info.ned_ids)}")
            else:
                out.append(f" component {info.name} application")
            out.append(f" oper-status {pkg.oper_status}")
            if pkg.error_info:
                out.append(f' oper-status error-info "{pkg.error_info}"')
            out.append("!")
        return Result(_lines(*out))

    # ----- high availability -----
    def _ha_action(self, args: list[str]) -> Result:
        ha = self.ha
        if args == ["enable"]:
            out = ha.enable()
            return Result(out, ok=not out.startswith("Error:"))
        if args == ["disable"]:
            return Result(ha.disable())
        if args == ["be-primary"]:
            return Result(ha.be_primary())
        if args == ["be-none"]:
            out = ha.be_none()
            return Result(out, ok=not out.startswith("Error:"))
        if args == ["local-node-id"]:
            own = ha.local_node_id()
            if own is None:
                raise CliError(
                    "Error: no high-availability ha-node has this host's address;"
                    " configure one (high-availability ha-node ID address ADDRESS)"
                )
            return Result(f"id {own}")
        if len(args) == 3 and args[:2] == ["be-secondary-to", "node"]:
            return Result(ha.be_secondary_to(args[2]))
        if args == ["read-only"]:  # the action's mode defaults to true
            args = ["read-only", "mode", "true"]
        if len(args) == 3 and args[:2] == ["read-only", "mode"] and args[2] in ("true", "false"):
            ha.set_read_only(args[2] == "true")
            return Result()
        raise CliError("syntax error: unknown high-availability action")

    # ----- software packages -----
    def _software(self, args: list[str]) -> Result:
        if args[:1] != ["packages"] or len(args) < 2:
            raise CliError("syntax error: incomplete command")
        verb, rest = args[1], args[2:]
        layout = self.d.layout
        if verb == "list":
            return Result(_lines(*self._software_list()))
        if verb == "fetch" and len(rest) == 2 and rest[0] == "package-from-file":
            src = layout.find_file(rest[1])
            if not src.is_file():
                raise CliError(f"Error: {rest[1]}: no such file")
            faults.check_disk(layout, str(layout.package_store))
            layout.package_store.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, layout.package_store / src.name)
            return Result()
        if verb == "install" and len(rest) >= 2 and rest[0] == "package":
            return self._software_install(rest[1], "replace-existing" in rest[2:])
        if verb == "deinstall" and len(rest) >= 2 and rest[0] == "package":
            removed = [
                e for e in self._load_dir_entries() if packages.package_matches(e.name, rest[1])
            ]
            if not removed:
                raise CliError(f"Error: package {rest[1]} is not installed")
            for entry in removed:
                _remove_entry(entry)
            return Result(_lines(*[f"deinstalled {_base(e.name)}" for e in removed]))
        raise CliError(f"syntax error: unknown software packages command: {verb}")

    def _load_dir_entries(self) -> list[Path]:
        load_dir = self.d.layout.load_dir
        if not load_dir.is_dir():
            return []
        return sorted(e for e in load_dir.iterdir() if packages.is_package_entry(e))

    def _software_list(self) -> list[str]:
        layout = self.d.layout
        loaded = {p.source for p in self.d.packages}
        in_load_dir = {e.name: e for e in self._load_dir_entries()}
        load_targets = {e.resolve(): name for name, e in in_load_dir.items()}
        names = set()
        if layout.package_store.is_dir():
            names = {p.name for p in layout.package_store.iterdir() if p.name.endswith(".tar.gz")}
        out = []
        for name in sorted(names | set(in_load_dir)):
            link_name = in_load_dir.get(name) and name
            link_name = link_name or load_targets.get((layout.package_store / name).resolve())
            if link_name and link_name in loaded:
                state = "loaded"
            elif link_name:
                state = "installed"
            else:
                state = "installable"
            out += ["package {", f"  name {name}", f"  {state}", "}"]
        return out

    def _software_install(self, wanted: str, replace: bool) -> Result:
        layout = self.d.layout
        store = layout.package_store
        matches = [
            p for p in sorted(store.glob("*.tar.gz")) if packages.package_matches(p.name, wanted)
        ]
        if not matches:
            raise CliError(f"Error: package {wanted} not found in {store}")
        if len(matches) > 1:
            # SIMULATOR behaviour (the reference is silent): a name that leaves off the
            # ncs-X.Y- prefix of builds kept side by side is refused, never guessed.
            raise CliError(
                f"Error: package {wanted} names several files in {store}: "
                + ", ".join(m.name for m in matches)
                + "; name one with its ncs-X.Y- prefix"
            )
        src = matches[0]
        try:
            info = read_package(src)
        except PackageError as exc:
            raise CliError(f"Error: {exc}") from None
        clashes = []
        for entry in self._load_dir_entries():
            try:
                other = read_package(entry)
            except PackageError:
                continue
            if other.name == info.name and entry.resolve() != src.resolve():
                clashes.append(entry)
        if clashes and not replace:
            raise CliError(
                f"Error: package {info.name} is already installed "
                f"({', '.join(c.name for c in clashes)}); use replace-existing"
            )
        for entry in clashes:
            _remove_entry(entry)
        layout.load_dir.mkdir(parents=True, exist_ok=True)
        link = layout.load_dir / src.name
        if not (link.is_symlink() or link.exists()):
            link.symlink_to(src)
        return Result(f"installed {_base(src.name)}")

    # ----- packages reload / ha sync -----
    def _packages(self, args: list[str]) -> Result:
        if args[:1] == ["reload"]:
            return self._reload(args[1:])
        if args[:2] == ["ha", "sync"]:
            opts = [a for a in args[2:] if a not in ("{", "}")]
            if not opts or opts[0] not in ("and-reload", "and-add"):
                raise CliError("syntax error: packages ha sync needs and-reload or and-add")
            report = self.ha.sync_packages(
                add_only=opts[0] == "and-add",
                wait_queue="wait-commit-queue-empty" in opts,
                while_held=self._sync_cli_lost,
                while_copying=self._sync_cli_lost_copying,
            )
            return Result(_lines(*sync_lines(report)), ok=report.ok)
        raise CliError("syntax error: unknown packages command")

    def _sync_cli_lost(self) -> None:
        """SIMULATOR behaviour, fault ha-sync-cli-lost: the CLI's connection drops while the
        sync holds the primary read-only, and the sync goes on without it (the session's
        output goes nowhere), so a client sees a loss, never NSO's verdict."""
        held = faults.fire(self.d.layout, "ha-sync-cli-lost")
        if held is None:
            return
        self.d.log("INFO", "CLI connection dropped in packages ha sync (fault ha-sync-cli-lost)")
        self.hang_up()
        time.sleep(self.d.config.scaled(float(held)))

    def _sync_cli_lost_copying(self) -> None:
        """SIMULATOR behaviour, fault ha-sync-cli-lost-copying: the CLI's connection drops
        while the sync copies the packages to the secondaries (the primary not read-only
        yet), and the copying takes this much longer, then the sync goes on as it would."""
        copying = faults.fire(self.d.layout, "ha-sync-cli-lost-copying")
        if copying is None:
            return
        self.d.log(
            "INFO", "CLI connection dropped in packages ha sync (fault ha-sync-cli-lost-copying)"
        )
        self.hang_up()
        time.sleep(self.d.config.scaled(float(copying)))

    def _wait_open_transactions(self, nominal: float) -> bool:
        deadline = time.monotonic() + self.d.config.scaled(nominal)
        while True:
            busy = [
                s for s in list(self.d.config_sessions) if s is not self and s.has_open_transaction
            ]
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _reload(self, args: list[str]) -> Result:
        force = "force" in args
        max_wait = RELOAD_OPEN_TX_WAIT
        if "max-wait-time" in args:
            max_wait = float(args[args.index("max-wait-time") + 1])
        if "dry-run" in args:
            found, _doomed = self.d.plan_reload(force)
            return Result(_lines(*reload_blocks([i.name for _, i in found])))
        if not self._wait_open_transactions(max_wait):
            return Result(
                _lines(
                    "Error: open transactions did not finish within "
                    f"{max_wait:g} seconds; the upgrade was not started"
                ),
                ok=False,
            )
        self.d.upgrading = True
        try:
            names = self.d.reload_packages(force)
        except ReloadRefused as exc:
            if exc.per_package:
                return Result(
                    _lines(
                        *RELOAD_BANNER,
                        ">>> System upgrade has been aborted.",
                        *reload_blocks(sorted(exc.per_package), exc.per_package),
                        *exc.lines,
                    ),
                    ok=False,
                )
            raise
        finally:
            self.d.upgrading = False
        return Result(
            _lines(
                *RELOAD_BANNER,
                ">>> System upgrade has completed successfully.",
                *reload_blocks(names),
            )
        )

    def _load_modules(self) -> Result:
        results = self.d.load_patches()
        if not results:
            return Result("result ok\nno patch modules found")
        out = ["result " + ("ok" if all(ok for _, ok, _ in results) else "error")]
        for module, ok, msg in results:
            # `loaded`, `unloaded` (its file was removed), or `failed "<why>"`.
            out.append(f"module {module} {msg}" if ok else f'module {module} failed "{msg}"')
        return Result(_lines(*out), ok=all(ok for _, ok, _ in results))

    # ----- NED migration -----
    def _migrate(self, where: str, name: str, args: list[str]) -> Result:
        """``devices device D migrate new-ned-id ID [dry-run] [verbose] [no-networking]``, or
        the same on ``devices device-group G`` for each of its devices (the guide: "a single
        device or a group of devices"). The output is invented (docs/nso-sim.md)."""
        if len(args) < 2 or args[0] != "new-ned-id":
            raise CliError("syntax error: migrate needs new-ned-id")
        unknown = [a for a in args[2:] if a not in MIGRATE_FLAGS]
        if unknown:
            raise CliError(f"syntax error: unknown argument: {unknown[0]}")
        # An identityref may be named with its module prefix (`router-nc-2.0:router-nc-2.0`);
        # devices and packages show the bare identity (invented: the reference is silent).
        new_id, dry_run = args[1].rsplit(":", 1)[-1], "dry-run" in args[2:]
        with self.d.lock:
            if where == "device":
                names = [name]
            else:
                members = cdb.group_devices(self.d.tree, name)
                if members is None:
                    raise CliError(f"Error: device-group {name} does not exist")
                names = members
            infos = self.d.package_infos()
            new_ned = next((i for i in infos if new_id in i.ned_ids), None)
            if new_ned is None:
                raise CliError(f"Error: ned-id {new_id} is not loaded")
            out: list[str] = []
            ops: list[cdb.Op] = []
            for device in names:
                dev = cdb.get(self.d.tree, ["devices", "device", device])
                if dev is None:
                    raise CliError(f"Error: device {device} does not exist")
                if where == "device-group":
                    out.append(f"device {device}")
                lines, changes = _migration(device, dev, new_ned, new_id, infos)
                out += lines
                ops += changes
            if ops and not dry_run:
                self.d.commit(ops)
        if where == "device-group" and faults.fire(self.d.layout, "migrate-answer-wrapped"):
            out = ["migrate-result {", *(f"    {line}" for line in out), "}"]
        return Result(_lines(*out))


# `migrate` options besides new-ned-id: the devices are not reached (no-networking is the
# only way here) and services are not listed (verbose changes nothing): both simplified.
MIGRATE_FLAGS = ("dry-run", "verbose", "no-networking")


def _migration(
    device: str, dev: dict[str, object], new_ned: PackageInfo, new_id: str, infos: list[PackageInfo]
) -> tuple[list[str], list[cdb.Op]]:
    """What migrating one device to ``new_id`` prints and writes. Its ned-id changes; the
    config leaves the new NED's model lacks (when it declares one) are deleted and reported
    as modified paths and lost data; all other config, and service data, stay as they are.
    A device already on ``new_id`` has nothing to migrate (invented: real NSO's answer is
    not in our sources)."""
    old_id = packages.device_ned_id(dev)
    if old_id == new_id:
        return [], []
    types = dev.get("device-type")
    kind = next(
        (k for k in ("netconf", "cli", "generic") if isinstance(types, dict) and types.get(k)),
        "netconf",
    )
    base = f"/ncs:devices/device{{{device}}}"
    lines = [
        "modified-path {",
        f"    path {base}/device-type/{kind}/ned-id",
        f'    info "ned-id changed from {old_id} to {new_id}"',
        "}",
    ]
    ops: list[cdb.Op] = [
        ("set", ["devices", "device", device, "device-type", kind, "ned-id"], new_id)
    ]
    model = new_ned.ned_leaves
    config = dev.get("config")
    if model is None or not isinstance(config, dict):
        return lines, ops
    old_ned = next((i for i in infos if old_id in i.ned_ids), None)
    prefix = old_ned.fxs[0].prefix if old_ned is not None and old_ned.fxs else "config"
    lost = [
        (leaf, v) for leaf, v in config.items() if not isinstance(v, dict) and leaf not in model
    ]
    for leaf, value in lost:
        path = f"{base}/config/{prefix}:{leaf}"
        lines += [
            "modified-path {",
            f"    path {path}",
            f'    info "{leaf} does not exist in ned-id {new_id}"',
            "    backward-compatible false",
            "}",
            "lost-data {",
            f"    path {path}",
            f"    value {cdb.quote(value)}",
            "}",
        ]
        ops.append(("delete", ["devices", "device", device, "config", leaf], None))
    return lines, ops


def _split_commands(line: str) -> list[str]:
    """Split at ``;`` outside quotes."""
    parts, current, quote = [], "", ""
    for ch in line:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == ";":
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def _base(name: str) -> str:
    return name[: -len(".tar.gz")] if name.endswith(".tar.gz") else name


def _remove_entry(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    else:
        shutil.rmtree(entry)
