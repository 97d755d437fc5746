"""The simulated NSO daemon's state: one per host process, started by ``ncs``.

Start-up follows the real phases (starting, phase0, phase1, started), all at once or one
``ncs --start-phase1|2`` at a time after ``ncs --start-phase0``; the process around it (exit
codes, signals) is ``nso_sim.node.process``. The HA manager and the console are started in
phase1 through the ``StartParts`` function the process passes in (``nso_sim.node.parts``);
the CLI over SSH listens from phase2.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from nso_sim import beam, cdb, encrypted_strings, faults, ncsconf, packages
from nso_sim.cdb import CdbStore, Op, Tree
from nso_sim.cdb_lock import CdbLock, CdbLocked
from nso_sim.ipc import Connection
from nso_sim.layout import HostConfig, HostLayout, check_password, release_version
from nso_sim.node.errors import ReloadRefused, StartupFailure, StopDuringStart, WriteRefused
from nso_sim.node.parts import HaPeer, Parts, Service
from nso_sim.package_meta import PackageInfo
from nso_sim.timings import TIMINGS

EXIT_UPGRADE = 13
EXIT_UPGRADE_CORRUPT = 14
EXIT_BIND = 20
EXIT_CONF = 21
EXIT_INSTALL = 22
# Another daemon holds the CDB lock: like a port in use (the code is not documented).
EXIT_CDB_LOCKED = EXIT_BIND

# packages reload's default max-wait-time for other sessions' open transactions (nominal
# seconds); how long NSO's work takes is in nso_sim.timings.
RELOAD_OPEN_TX_WAIT = 10.0


HA_TOKEN_PATH = ["high-availability", "token"]

# Called in phase1 with the bound CLI socket and the HA socket (None without
# /ncs-config/ha/enabled); starts the HA manager and the CLI on top of the node.
StartParts = Callable[["Daemon", socket.socket, Optional[socket.socket]], Parts]


class Daemon:
    def __init__(
        self,
        layout: HostLayout,
        reload_mode: Optional[str],
        start_parts: StartParts,
        conf_path: Optional[Path] = None,
    ) -> None:
        self.layout = layout
        self._start_parts = start_parts
        self.conf_path = conf_path
        self.config = HostConfig.load(layout)
        self.reload_mode = reload_mode
        self.state = "starting"
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.phase0_event = threading.Event()
        self.started_event = threading.Event()
        # Serializes the moves between start phases (ncs --start-phase1/2 arrive over IPC).
        self._phase_lock = threading.Lock()
        self.version = ""
        self.conf: ncsconf.NcsConf
        self.keys: dict[str, str] = {}
        self.store: CdbStore
        self.cdb_lock = CdbLock(layout.cdb_dir)
        self.tree: Tree = {}
        self.txid = 0
        self.packages: list[packages.LoadedPackage] = []
        self.patches: dict[str, beam.BeamInfo] = {}
        self.read_only = False
        self.upgrading = False
        self.config_sessions: set[Any] = set()
        self.commit_queue: list[dict[str, Any]] = []
        self._queue_seq = int(time.time() * 1000)
        self.commit_listeners: list[Callable[[list[Op], int], None]] = []
        self.sockets: list[socket.socket] = []
        self._ipc_sock: Optional[socket.socket] = None
        self._cli_sock: Optional[socket.socket] = None
        self._ha_sock: Optional[socket.socket] = None
        self.ha: Optional[HaPeer] = None
        self.ssh: Optional[Service] = None
        self._console: Optional[Callable[[Connection, str], None]] = None

    # ----- logging -----
    def log(self, level: str, msg: str) -> None:
        stamp = datetime.now().strftime("%d-%b-%Y::%H:%M:%S.%f")[:-3]
        line = f"<{level}> {stamp} {self.config.address} ncs[{os.getpid()}]: - {msg}\n"
        self.layout.log_dir.mkdir(parents=True, exist_ok=True)
        with self.layout.ncs_log.open("a") as fh:
            fh.write(line)

    def sleep_nominal(self, seconds: float) -> None:
        time.sleep(self.config.scaled(seconds))

    # ----- start-up -----
    def start(self, phased: bool = False) -> None:
        """Start up to phase0; without ``phased`` (``ncs --start-phase0``) go on through
        phase1 and phase2 at once, as a plain ``ncs`` start does."""
        release = self.layout.current_release()
        if release is None or not (release / "VERSION").is_file():
            raise StartupFailure(EXIT_INSTALL, f"{self.layout.current}: no installed release")
        self.version = release_version(release)
        self.log("INFO", f"Starting NCS vsn: {self.version}")
        code = faults.fire(self.layout, "start-exit")
        if code is not None:
            self.sleep_nominal(TIMINGS.start_base)
            raise StartupFailure(int(code), "injected start-up failure (fault start-exit)")
        try:
            self.conf = ncsconf.load(self.layout, self.conf_path)
            ncsconf.check_for_release(self.conf, self.version)
            self.keys = ncsconf.check_crypto_keys(self.conf.crypto_keys, self.version)
        except ncsconf.ConfError as exc:
            raise StartupFailure(EXIT_CONF, f"Bad configuration: {exc}") from None

        ipc_sock = self._bind(self.conf.ipc_address, self.conf.ipc_port, "IPC")
        self._ipc_sock = ipc_sock
        threading.Thread(target=self._ipc_loop, args=(ipc_sock,), daemon=True).start()

        # "starting" (pre-phase0, ncs(1)) lasts while CDB is read and its data upgraded to
        # the packages: the long part of a start, proportional to data and packages.
        log_len = self._open_cdb()
        nominal = self._start_time(log_len)
        self.log("INFO", f"Start-up will take {nominal:.1f} nominal seconds")
        if self.stop_event.wait(self.config.scaled(nominal)):
            raise StopDuringStart()  # ncs --stop (or SIGTERM) while still starting
        # The upgrade is what took that time: a package set that cannot load fails only now
        # (exit 13), after the CDB load, as on a real host.
        self._load_packages_at_start()
        # Bound now, so a port in use fails the start (exit 20) before anything is served;
        # each listens only from its phase on (a bound socket that does not listen refuses
        # connections, as a port nobody has opened yet).
        self._cli_sock = self._bind(
            self.conf.cli_address, self.conf.cli_port, "CLI SSH", listen=False
        )
        if self.conf.ha_enabled:
            self._ha_sock = self._bind(self.conf.ha_address, self.conf.ha_port, "HA", listen=False)
        self.state = "phase0"
        self.phase0_event.set()
        self.log("INFO", "Start phase0: CDB loaded and upgraded, packages loaded")
        if not phased:
            self.start_phase1()
            self.start_phase2()

    def start_phase1(self) -> Optional[str]:
        """Phase1: the HA manager (which takes its start-up role) and the ``ncs_cli`` console;
        no northbound yet. Returns what was wrong, or None."""
        with self._phase_lock:
            if self.state != "phase0":
                return (
                    f"cannot start phase1: NSO is {self.state}, not in phase0;"
                    " start it with ncs --start-phase0 first"
                )
            assert self._cli_sock is not None  # nosec B101 # bound before phase0; narrows the type for mypy
            if self._ha_sock is not None:
                self._ha_sock.listen(64)
            parts = self._start_parts(self, self._cli_sock, self._ha_sock)
            self.ha, self.ssh, self._console = parts.ha, parts.ssh, parts.console
            self.load_patches()
            threading.Thread(target=self._commit_queue_loop, daemon=True).start()
            self.state = "phase1"
            self.log("INFO", "Start phase1: HA and the console are up, no northbound yet")
        parts.ha.at_start_up()
        return None

    def start_phase2(self) -> Optional[str]:
        """Phase2: open the northbound (the CLI over SSH); the node is ``started``."""
        with self._phase_lock:
            if self.state != "phase1" or self.ssh is None or self._cli_sock is None:
                return (
                    f"cannot start phase2: NSO is {self.state}, not in phase1;"
                    " run ncs --start-phase1 first"
                )
            self._cli_sock.listen(64)
            self.ssh.start()
            self.state = "started"
            self.started_event.set()
            self.log("INFO", "Started")
        return None

    def _open_cdb(self) -> int:
        """Lock and read CDB; returns the length of its write log."""
        self.cdb_lock = CdbLock(self.conf.cdb_dir)
        try:
            self.cdb_lock.acquire()
        except CdbLocked as exc:
            raise StartupFailure(EXIT_CDB_LOCKED, f"Cannot open CDB: {exc}") from None
        # The pid file belongs to the daemon that holds CDB, not to one refused above.
        self.layout.pid_file.write_text(f"{os.getpid()}\n")
        self.store = CdbStore(self.conf.cdb_dir)
        try:
            self.tree, self.txid, log_len = self.store.load()
        except cdb.CdbCorrupt as exc:
            raise StartupFailure(EXIT_UPGRADE_CORRUPT, f"CDB corrupt: {exc}") from None
        return log_len

    def _start_time(self, log_len: int) -> float:
        """Nominal seconds to load CDB and upgrade it to the packages about to be loaded."""
        in_use = packages.read_in_use(self.layout)
        if self.reload_mode or in_use is None:
            scan = packages.scan_load_path(self.conf.load_path)
            count = len(scan.found) + len(scan.errors)
        else:
            count = len(in_use)
        extra = faults.fire(self.layout, "start-slow")
        nominal = TIMINGS.start(count, cdb.count_leaves(self.tree), log_len, bool(self.reload_mode))
        return nominal + (float(extra) if extra is not None else 0.0)

    def _bind(self, address: str, port: int, what: str, listen: bool = True) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            raise StartupFailure(
                EXIT_BIND, f"Cannot bind to {what} address {address}:{port}: {exc.strerror}"
            ) from None
        if listen:
            sock.listen(64)
        self.sockets.append(sock)
        return sock

    def _load_packages_at_start(self) -> None:
        in_use = packages.read_in_use(self.layout)
        # What was loaded last time is the "old" schema a reload is compared against.
        self.packages = in_use or []
        if self.reload_mode or in_use is None:
            force = self.reload_mode == "force"
            try:
                self.reload_packages(force=force, at_start=True)
            except ReloadRefused as exc:
                raise StartupFailure(
                    EXIT_UPGRADE,
                    "NCS package upgrade failed with reason '"
                    + " ".join(ln.removeprefix("Error: ") for ln in exc.lines)
                    + "'",
                ) from None
            return
        # Without reload NSO uses its private copy; a package compiled for another branch
        # stays listed with oper-status file-load-error and its data untouched.
        loaded = {p.info.name: p.info.version for p in in_use}
        for pkg in in_use:
            err = packages.load_error(pkg.info, self.version, loaded)
            pkg.oper_status = "file-load-error" if err else "up"
            pkg.error_info = err
        self.packages = in_use

    # ----- packages -----
    def package_infos(self, only_up: bool = True) -> list[PackageInfo]:
        return [p.info for p in self.packages if p.oper_status == "up" or not only_up]

    def schema(self) -> cdb.Container:
        return cdb.top_schema(packages.service_prefixes(self.package_infos(only_up=False)))

    def plan_reload(self, force: bool) -> tuple[list[tuple[Path, PackageInfo]], list[str]]:
        scan = packages.scan_load_path(self.conf.load_path)
        infos = [info for _, info in scan.found]
        errors = scan.errors + packages.check_set(infos, self.version)
        if errors:
            raise ReloadRefused(
                [f"Error: {e}" for e in errors],
                {e.split(": ", 1)[1].split(";", 1)[0]: e for e in errors},
            )
        doomed = packages.namespaces_to_delete(self.tree, self.package_infos(only_up=False), infos)
        if doomed and not force:
            raise ReloadRefused(
                [
                    "Error: The following namespaces will be deleted by upgrade:",
                    *[f"{ns}" for ns in doomed],
                    "If this is intended, proceed with 'force' parameter.",
                ]
            )
        return scan.found, doomed

    def check_commit_queue(self) -> None:
        """Queued items were built against the schema a reload replaces: the guide's reason
        for ``wait-commit-queue-empty``. The simulator refuses outright (simplified)."""
        with self.lock:
            queued = len(self.commit_queue)
        if queued:
            raise ReloadRefused(
                [
                    f"Error: the commit queue holds {queued} item(s) that rely on the current"
                    " schema; wait until it is empty, or use"
                    " 'packages ha sync and-reload { wait-commit-queue-empty }'"
                ]
            )

    def reload_packages(self, force: bool, at_start: bool = False) -> list[str]:
        """Load the load path's packages; returns the names loaded. Raises ReloadRefused."""
        with self.lock:
            if not at_start:
                self.check_commit_queue()
            found, doomed = self.plan_reload(force)
            crash = faults.fire(self.layout, "reload-crash")
            if crash is not None:
                self.log("ERROR", "Daemon crashed during package reload (fault reload-crash)")
                os._exit(int(crash) if not isinstance(crash, bool) else 70)
            old = self.package_infos(only_up=False)
            tree = copy.deepcopy(self.tree)
            if doomed:
                packages.delete_namespaces(tree, old, doomed)
                self.log("WARNING", f"Deleting data of namespaces {', '.join(doomed)} (force)")
            # Upgrade components run in the load's own transaction: their changes are
            # committed with it, or not at all.
            rewrites = packages.upgrade_rewrites(tree, old, [info for _, info in found])
            for what, count in rewrites:
                self.log("INFO", f"Package upgrade: {what} ({count} entries)")
            if doomed or rewrites or not self.store.exists():
                self.txid += 1
                self.tree = tree
                self.store.write_snapshot(self.tree, self.txid)
                if not at_start:
                    self.notify_snapshot()
            self.packages = packages.write_in_use(self.layout, found)
            self.log("INFO", f"Packages loaded: {', '.join(p.info.name for p in self.packages)}")
            return [p.info.name for p in self.packages]

    def notify_snapshot(self) -> None:
        if self.ha is not None:
            self.ha.broadcast_snapshot()

    # ----- configuration -----
    def read_only_now(self) -> bool:
        """Read-only mode, or an HA secondary (which takes its data from the primary)."""
        return self.read_only or (self.ha is not None and self.ha.mode == "secondary")

    def writable_check(self) -> None:
        if self.upgrading:
            raise WriteRefused("Aborted: system upgrade in progress")
        if self.read_only_now():
            raise WriteRefused("Aborted: node is in read-only mode")

    def commit(self, ops: list[Op], queue: bool = False) -> Optional[int]:
        """Apply a transaction; returns the commit-queue id when queued."""
        ops = [self._encrypt_secret(op) for op in ops]
        with self.lock:
            self.writable_check()
            faults.check_disk(self.layout, str(self.store.path))
            self.txid += 1
            cdb.apply_ops(self.tree, ops)
            self.store.append(ops, self.txid)
            for listener in list(self.commit_listeners):
                listener(ops, self.txid)
            if queue:
                self._queue_seq += 1
                self.commit_queue.append({"id": self._queue_seq, "since": time.monotonic()})
                return self._queue_seq
            return None

    def _encrypt_secret(self, op: Op) -> Op:
        """The HA token is an encrypted string: CDB (and a secondary's copy) holds only the
        ciphertext, which the keys of ncs.crypto_keys open."""
        kind, path, value = op
        if (
            kind == "set"
            and path == HA_TOKEN_PATH
            and value
            and not encrypted_strings.is_encrypted(value)
        ):
            return kind, path, encrypted_strings.encrypt(self.keys, value)
        return op

    def replace_tree(self, tree: Tree, txid: int) -> None:
        """A full copy from the HA primary."""
        with self.lock:
            self.tree, self.txid = tree, txid
            self.store.write_snapshot(tree, txid)

    def apply_remote(self, ops: list[Op], txid: int) -> None:
        with self.lock:
            cdb.apply_ops(self.tree, ops)
            self.txid = txid
            self.store.append(ops, txid)

    def _commit_queue_loop(self) -> None:
        while not self.stop_event.wait(0.05):
            with self.lock:
                if self.commit_queue:
                    head = self.commit_queue[0]
                    if time.monotonic() - head["since"] >= self.config.scaled(
                        TIMINGS.commit_queue_item
                    ):
                        self.commit_queue.pop(0)
                        if self.commit_queue:
                            self.commit_queue[0]["since"] = time.monotonic()

    def wait_commit_queue_empty(self, timeout: float = 600.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.commit_queue:
                    return True
            time.sleep(0.02)
        return False

    # ----- patches -----
    def patches_dir(self) -> Path:
        release = self.layout.current_release()
        base = release if release is not None else self.layout.current
        return base / "lib" / "ncs" / "patches"

    def load_patches(self) -> list[tuple[str, bool, str]]:
        """Load every ``.beam`` in the patches folder, and unload every patch module whose
        file is gone (the release's own module is back in use): (module, ok, what
        happened: ``loaded``, ``unloaded`` or why it failed). Unloading is INVENTED: the
        reference says only that load-modules loads the folder's files."""
        results = []
        present = set()
        for path in sorted(self.patches_dir().glob("*.beam")):
            present.add(path.stem)
            try:
                info = beam.parse_beam(path.read_bytes(), path.name)
            except (beam.BeamError, ValueError, OSError) as exc:
                # One entry it cannot read (a folder named x.beam) fails that module only.
                results.append((path.stem, False, str(exc)))
                continue
            if info.module != path.stem:
                # Erlang's code loader refuses a file whose module is not its name (the
                # words here are INVENTED): a file never loads as another module.
                msg = f"{path.name} holds module {info.module}, not {path.stem}"
                results.append((info.module, False, msg))
                continue
            present.add(info.module)
            if info.nso_version not in ("?", self.version):
                msg = f"built for NSO {info.nso_version}, running {self.version}"
                results.append((info.module, False, msg))
                continue
            with self.lock:
                self.patches[info.module] = info
            results.append((info.module, True, "loaded"))
            self.log("INFO", f"Loaded patch module {info.module} ({info.patch_id})")
        with self.lock:
            gone = sorted(m for m in self.patches if m not in present)
            for module in gone:
                del self.patches[module]
        for module in gone:
            results.append((module, True, "unloaded"))
            self.log("INFO", f"Unloaded patch module {module}: its file is gone")
        return results

    # ----- users -----
    def check_password(self, user: str, password: str) -> bool:
        stored = self.config.users.get(user)
        return stored is not None and check_password(stored, password)

    def authorized_keys(self, user: str) -> list[str]:
        path = self.layout.homes_dir(user) / ".ssh" / "authorized_keys"
        try:
            return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            return []

    # ----- IPC -----
    def _ipc_loop(self, sock: socket.socket) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._ipc_serve, args=(Connection(conn),), daemon=True).start()

    def _ipc_serve(self, conn: Connection) -> None:
        try:
            msg = conn.recv()
            if msg is None:
                return
            op = msg.get("op")
            if op == "status":
                conn.send(self.status())
            elif op == "wait-started":
                self.started_event.wait(float(msg.get("timeout", 5)))
                conn.send(self.status())
            elif op == "wait-phase0":
                self.phase0_event.wait(float(msg.get("timeout", 5)))
                conn.send(self.status())
            elif op in ("start-phase1", "start-phase2"):
                error = self.start_phase1() if op == "start-phase1" else self.start_phase2()
                conn.send({"ok": error is None, "error": error, **self.status()})
            elif op == "stop":
                conn.send({"ok": True})
                self.request_stop()
            elif op == "reload-conf":
                conn.send({"ok": True})
            elif op == "cli":
                self._ipc_cli(conn, msg.get("user", "admin"))
            else:
                conn.send({"error": f"unknown op {op}"})
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _ipc_cli(self, conn: Connection, user: str) -> None:
        if self._console is None:
            conn.send(
                {
                    "error": f"NSO is {self.state}: the console opens in phase1"
                    " (ncs --start-phase1, or wait for the start to finish)"
                }
            )
            return
        self._console(conn, user)

    def status(self) -> dict[str, Any]:
        return {"status": self.state, "version": self.version, "pid": os.getpid()}

    def request_stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        self.state = "stopping"
        self.log("INFO", "Stopping")
        if self.ha is not None:
            self.ha.shutdown()
        if self.ssh is not None:
            self.ssh.shutdown()
        for sock in self.sockets:
            if sock is not self._ipc_sock:
                with contextlib.suppress(OSError):
                    sock.close()
        # Stopping takes its time (subsystems close, CDB is written out) while ncs --status
        # still answers "stopping"; ncs --stop returns only after it.
        self.sleep_nominal(TIMINGS.stop_base)
        if self._ipc_sock is not None:
            with contextlib.suppress(OSError):
                self._ipc_sock.close()
