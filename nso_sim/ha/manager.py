"""Rule-based built-in HA between simulated hosts, over TCP (``/ncs-config/ha``).

A secondary connects to the primary, proves it runs the same NSO version and holds the same
crypto keys, receives a full copy of the database and then every committed change. Roles at
start-up and on ``enable`` follow the start-up table of the gitbook's high-availability.md;
failover follows its rule-based consensus algorithm: the failover-primary retries the lost
primary, then takes over in read-only mode, which a joining secondary clears (the hazard the
upgrade guide works around); a nominal primary that loses all its secondaries takes role
none. The wire format (JSON lines) is the simulator's own (``nso_sim.ha.link``).

The manager reports state and outcomes as data (``HaStatus``, ``SyncReport``); the CLI
renders them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from nso_sim import encrypted_strings, faults, ncsconf, packages
from nso_sim.cdb import Op
from nso_sim.ha.link import HaLink
from nso_sim.ipc import Connection
from nso_sim.node.daemon import Daemon
from nso_sim.node.errors import ReloadRefused
from nso_sim.package_meta import package_file_bytes

CONNECT_TIMEOUT = 2.0
# Defaults of high-availability settings reconnect-interval (nominal seconds) and -attempts.
RECONNECT_INTERVAL = 10.0
RECONNECT_ATTEMPTS = 3
# Real seconds: however small the time scale, HA loops sleep at least this long.
MIN_INTERVAL = 0.05


@dataclass
class HaStatus:
    """What ``show high-availability`` shows, read under the node's lock."""

    enabled: bool
    mode: str
    current_id: Optional[str]  # None in mode none
    assigned_role: str
    be_secondary_result: Optional[str]
    primary_id: Optional[str]
    read_only: bool
    # (id, address) of the connected secondaries, on a primary
    secondaries: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Alarm:
    """One HA alarm of ``/alarms/alarm-list`` (``ha-primary-down`` or ``ha-secondary-down``
    on ``/high-availability/ha-node[id=...]``), with its status changes, oldest first."""

    kind: str
    node_id: str
    # (ISO time, alarm text, cleared)
    changes: list[tuple[str, str, bool]] = field(default_factory=list)


@dataclass
class SyncReport:
    """The outcome of ``packages ha sync``: ``started`` once the load paths matched and the
    upgrade began; ``synced`` is (node, ok) per secondary reached; ``loaded`` the packages
    loaded on success; ``errors`` the error lines."""

    ok: bool
    started: bool = False
    synced: list[tuple[str, bool]] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class HaManager:
    def __init__(self, daemon: Daemon, sock: Optional[socket.socket]) -> None:
        self.d = daemon
        self.lock = daemon.lock  # one lock for data and roles: no lock-order puzzles
        self.sock = sock
        self.enabled = False
        self.mode = "none"
        self.assigned_role = "none"
        self.primary_id: Optional[str] = None
        self.be_secondary_result: Optional[str] = None
        self.promoted_by_failover = False
        self.secondaries: dict[str, HaLink] = {}
        self.upstream: Optional[HaLink] = None
        self.generation = 0
        self.alarms: dict[tuple[str, str], Alarm] = {}
        daemon.commit_listeners.append(self._on_commit)
        if sock is not None:
            threading.Thread(target=self._accept_loop, daemon=True).start()
        threading.Thread(target=self._tick_loop, daemon=True).start()

    # ----- configuration read from CDB -----
    def nodes(self) -> dict[str, dict[str, Any]]:
        ha = self.d.tree.get("high-availability") or {}
        return dict(ha.get("ha-node") or {})

    def setting(self, *path: str) -> Optional[str]:
        node: Any = (self.d.tree.get("high-availability") or {}).get("settings") or {}
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, str) else None

    def own_id(self) -> Optional[str]:
        mine = {self.d.config.address}
        if self.d.conf.ha_address not in (ncsconf.ANY_ADDRESS, ""):
            mine.add(self.d.conf.ha_address)
        for node_id, node in self.nodes().items():
            if node.get("address") in mine:
                return node_id
        return self.d.config.ha_id

    def nominal_role(self, node_id: Optional[str]) -> str:
        return str(self.nodes().get(node_id or "", {}).get("nominal-role", "none"))

    def _may_fail_over(self, node_id: Optional[str]) -> bool:
        """A failover-primary, or the nominal primary (implicitly one while it is secondary)."""
        node = self.nodes().get(node_id or "", {})
        return node.get("failover-primary") == "true" or node.get("nominal-role") == "primary"

    def local_node_id(self) -> Optional[str]:
        """The ``ha-node`` whose address is this host's (the ``local-node-id`` action)."""
        own = self.own_id()
        return own if own in self.nodes() else None

    def _token_proof(self) -> Optional[str]:
        """What this node proves it knows of ``/high-availability/token``: a digest of the
        decrypted token (never the token itself, as NSO's CHAP-like exchange), or None when
        no token is configured. Other crypto keys decrypt it to other bytes: a mismatch."""
        stored = (self.d.tree.get("high-availability") or {}).get("token")
        if not isinstance(stored, str) or not stored:
            return None
        clear = encrypted_strings.decrypt(self.d.keys, stored)
        return hashlib.sha256(b"nso-sim-ha\0" + (clear or stored.encode())).hexdigest()

    def _clears_read_only_on_join(self) -> bool:
        """Under the rule-based algorithm a failover-primary acting as primary (by failover,
        or promoted with be-primary as the guide's stage 4 does) leaves read-only mode when a
        secondary joins it: why the guide disables the third node first."""
        node = self.nodes().get(self.own_id() or "", {})
        return self._consensus() and (
            self.promoted_by_failover or node.get("failover-primary") == "true"
        )

    # ----- alarms -----
    def _alarm(self, kind: str, node_id: str, text: str, cleared: bool) -> None:
        """Raise (or clear) an alarm; called under the lock. A clear of an alarm that was
        never raised, or a repeat of the same state, changes nothing."""
        alarm = self.alarms.get((kind, node_id))
        if alarm is None and cleared:
            return
        if alarm is None:
            alarm = self.alarms[(kind, node_id)] = Alarm(kind, node_id)
        if alarm.changes and alarm.changes[-1][2] == cleared:
            return
        alarm.changes.append((datetime.now(timezone.utc).isoformat(), text, cleared))
        self.d.log("WARNING" if not cleared else "INFO", f"HA alarm {kind} {node_id}: {text}")

    def alarm_list(self) -> list[Alarm]:
        with self.lock:
            return [
                Alarm(a.kind, a.node_id, list(a.changes))
                for _, a in sorted(self.alarms.items(), key=lambda item: item[0])
            ]

    def _consensus(self) -> bool:
        """The rule-based consensus algorithm, on by default since NSO 5.8."""
        return self.setting("consensus", "enabled") != "false"

    def _reconnect_interval(self) -> float:
        try:
            nominal = float(self.setting("reconnect-interval") or RECONNECT_INTERVAL)
        except ValueError:
            nominal = RECONNECT_INTERVAL
        return self._interval(nominal)

    def _reconnect_attempts(self) -> int:
        try:
            return max(0, int(self.setting("reconnect-attempts") or RECONNECT_ATTEMPTS))
        except ValueError:
            return RECONNECT_ATTEMPTS

    def _interval(self, nominal: float) -> float:
        return max(MIN_INTERVAL, self.d.config.scaled(nominal))

    # ----- start-up -----
    def at_start_up(self) -> None:
        """With ``/ncs-config/ha/enabled``, start-up settings decide whether HA is enabled."""
        if self.sock is None:
            return
        if "true" in (
            self.setting("start-up", "join-ha"),
            self.setting("start-up", "assume-nominal-role"),
        ):
            threading.Thread(target=self.enable, daemon=True).start()

    def shutdown(self) -> None:
        with self.lock:
            self.generation += 1
            self._drop_links()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    # ----- actions -----
    def enable(self) -> str:
        """Enable HA and take a role by the start-up settings (high-availability.md, Startup)."""
        if self.sock is None:
            return "Error: HA is not enabled in ncs.conf (/ncs-config/ha/enabled)"
        with self.lock:
            own = self.own_id()
            if own is None or own not in self.nodes():
                return "Error: no ha-node is configured with this node's address"
            if self.enabled and self.mode != "none":
                return "result enabled"
            self.enabled = True
            self.generation += 1
            gen = self.generation
            role = self.nominal_role(own)
            assume = self.setting("start-up", "assume-nominal-role") == "true"
            join = self.setting("start-up", "join-ha") == "true"
        self.d.log("INFO", f"HA enabled, nominal role {role}")
        self._take_start_up_role(gen, own, role, assume, join)
        return "result enabled"

    def _take_start_up_role(self, gen: int, own: str, role: str, assume: bool, join: bool) -> None:
        if role not in ("primary", "secondary") or not (assume or join):
            return  # role none
        if role == "primary" and not join:
            self._become_primary_if(gen)
        elif role == "secondary" and not join:
            # One attempt to the nominal primary, no retries; failing that, role none.
            nominal = next((n for n in self.nodes() if self.nominal_role(n) == "primary"), None)
            if nominal is not None:
                self._join(nominal, gen)
        elif role == "primary" and assume:
            # Query once: join an acting primary if there is one, else become primary. A
            # failed join leaves role none: two primaries would be a split brain.
            other = self._find_acting_primary(exclude=own)
            if other is None:
                self._become_primary_if(gen)
            else:
                self._join(other, gen)
        elif not self._join_acting_primary(gen):
            attempts = None if role == "primary" else self._reconnect_attempts()
            self._start_reconnect(gen, attempts)

    def _leave_role(self, assigned_role: str) -> int:
        """Drop every HA connection on purpose and take mode none (under the lock); returns
        the new generation, which ends whatever the old role had running."""
        self.generation += 1
        self._drop_links()
        self.mode = "none"
        self.assigned_role = assigned_role
        self.primary_id = None
        self.be_secondary_result = None
        self.promoted_by_failover = False
        return self.generation

    def disable(self) -> str:
        with self.lock:
            self.enabled = False
            self._leave_role("none")
            self.d.read_only = False  # current releases reset read-only when HA is disabled
        self.d.log("INFO", "HA disabled")
        return "result NSO Built-in HA disabled"

    def be_primary(self) -> str:
        with self.lock:
            self.enabled = True
            self.generation += 1
            if self.upstream is not None:
                self.upstream.close()
            self._become_primary(failover=False)
        return "result ok"

    def be_none(self) -> str:
        """Role none, HA staying enabled (unlike ``disable``); read-only mode is kept."""
        if self.sock is None:
            return "Error: HA is not enabled in ncs.conf (/ncs-config/ha/enabled)"
        with self.lock:
            self._leave_role("none")
        self.d.log("INFO", "HA: assumed role none (be-none)")
        return "result ok"

    def be_secondary_to(self, node: str) -> str:
        """Asynchronous, as upstream: the outcome shows in ``status be-secondary-result``."""
        with self.lock:
            self.enabled = True
            gen = self._leave_role("secondary")
        threading.Thread(target=self._join, args=(node, gen), daemon=True).start()
        return f"result Attempting to be secondary to node {node}"

    def set_read_only(self, on: bool) -> None:
        with self.lock:
            self.d.read_only = on
        self.d.log("INFO", f"read-only mode {'enabled' if on else 'disabled'}")

    # ----- roles -----
    def _become_primary(self, failover: bool) -> None:
        self.mode = self.assigned_role = "primary"
        self.primary_id = None
        self.promoted_by_failover = failover
        self.be_secondary_result = None
        self.d.log("INFO", "HA: assumed primary role" + (" (failover)" if failover else ""))

    def _become_primary_if(self, gen: int) -> None:
        with self.lock:
            if self.generation == gen and self.enabled:
                self._become_primary(failover=False)

    def _drop_links(self) -> None:
        links = list(self.secondaries.values())
        self.secondaries.clear()
        upstream, self.upstream = self.upstream, None
        for link in links:
            link.close()
        if upstream is not None:
            upstream.close()

    def _address(self, node_id: str) -> Optional[str]:
        node = self.nodes().get(node_id)
        return None if node is None else node.get("address")

    def _probe(self, node_id: str) -> Optional[str]:
        address = self._address(node_id)
        if address is None:
            return None
        try:
            with socket.create_connection((address, self.d.conf.ha_port), CONNECT_TIMEOUT) as s:
                s.settimeout(CONNECT_TIMEOUT)
                conn = Connection(s)
                conn.send({"type": "probe"})
                reply = conn.recv() or {}
                return str(reply.get("mode"))
        except (OSError, ValueError):
            return None

    def _find_acting_primary(self, exclude: Optional[str]) -> Optional[str]:
        for node_id in self.nodes():
            if node_id != exclude and self._probe(node_id) == "primary":
                return node_id
        return None

    def _join_acting_primary(self, gen: int) -> bool:
        """Query the configured nodes for the one acting as primary and join it."""
        other = self._find_acting_primary(exclude=self.own_id())
        if other is None:
            with self.lock:
                if self.generation == gen:
                    self.be_secondary_result = "error (25) - could not connect to primary"
            return False
        return self._join(other, gen)[0]

    def _start_reconnect(self, gen: int, attempts: Optional[int]) -> None:
        """Retry joining the acting primary every reconnect-interval; ``attempts`` None means
        for as long as HA stays enabled and the node has no role."""

        def loop() -> None:
            for _ in itertools.count() if attempts is None else range(attempts):
                time.sleep(self._reconnect_interval())
                with self.lock:
                    if self.generation != gen or not self.enabled or self.mode != "none":
                        return
                if self._join_acting_primary(gen):
                    return
            self.d.log("WARNING", "HA: no primary found, keeping role none")

        threading.Thread(target=loop, daemon=True).start()

    def _fail_over(self, gen: int, lost: str) -> None:
        """The failover-primary retries the lost primary, then takes over (read-only under
        the consensus algorithm until a secondary joins)."""
        for _ in range(self._reconnect_attempts()):
            time.sleep(self._reconnect_interval())
            with self.lock:
                if self.generation != gen or not self.enabled or self.mode != "none":
                    return
            if self._join(lost, gen)[0]:
                return
        with self.lock:
            if self.generation != gen or not self.enabled or self.mode != "none":
                return
            self._become_primary(failover=True)
            if self._consensus():
                self.d.read_only = True
                self.d.log("INFO", "HA: read-only mode enabled until a secondary joins")

    def _join(self, node_id: str, gen: int) -> tuple[bool, str]:
        """Connect to ``node_id`` as its secondary; (ok, be-secondary-result text)."""
        fail = "error (25) - could not connect to primary"
        address = self._address(node_id)
        own = self.own_id()
        proof = self._token_proof()
        if proof is None:
            fail = (
                "error (26) - no HA token configured (/high-availability/token);"
                " set the same token on every node"
            )
        if (
            proof is None
            or address is None
            or node_id == own
            or faults.active(self.d.layout, "ha-link-down")
        ):
            with self.lock:
                if self.generation == gen:
                    self.be_secondary_result = fail
            return False, fail
        sock: Optional[socket.socket] = None
        first: Optional[dict[str, Any]] = None
        try:
            sock = socket.create_connection((address, self.d.conf.ha_port), CONNECT_TIMEOUT)
            sock.settimeout(30)
            conn = Connection(sock)
            conn.send(
                {
                    "type": "hello",
                    "id": own,
                    "version": self.d.version,
                    "token": proof,
                    "address": self.d.config.address,
                }
            )
            first = conn.recv()
        except (OSError, ValueError):
            first = None
        if sock is None or first is None or first.get("type") != "snapshot":
            reason = fail if first is None else f"error (26) - {first.get('reason')}"
            if sock is not None:
                sock.close()
            with self.lock:
                if self.generation == gen:
                    self.be_secondary_result = reason
            self.d.log("WARNING", f"HA: cannot join {node_id}: {reason}")
            return False, reason
        sock.settimeout(None)
        with self.lock:
            if self.generation != gen:
                sock.close()
                return False, "error (27) - superseded by another HA action"
            self.d.replace_tree(first["tree"], first["txid"])
            # The Connection's buffered reader may already hold the next lines: reuse it.
            link = HaLink(
                conn, node_id, address, self._on_upstream_message, self._on_upstream_close
            )
            self.upstream = link
            self.mode = self.assigned_role = "secondary"
            self.primary_id = node_id
            self.promoted_by_failover = False
            self.be_secondary_result = "initialized"
            for kind, lost in list(self.alarms):
                if kind == "ha-primary-down":
                    self._alarm(kind, lost, f"Connected to primary {node_id}", cleared=True)
            link.start()
        self.d.log("INFO", f"HA: secondary to {node_id}")
        return True, "initialized"

    # ----- secondary side -----
    def _on_upstream_message(self, link: HaLink, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "tx":
            self.d.apply_remote([(k, p, v) for k, p, v in msg["ops"]], msg["txid"])
        elif kind == "snapshot":
            self.d.replace_tree(msg["tree"], msg["txid"])
        elif kind == "load-path":
            link.send({"type": "reply", "req": msg["req"], "load_path": self._load_path()})
        elif kind == "sync-packages":
            link.send({"type": "reply", "req": msg["req"], **self._receive_packages(msg)})
        elif kind == "reload":
            try:
                failure = faults.fire(self.d.layout, "ha-sync-reload-fails")
                if failure is not None:
                    # INVENTED: the secondary's side of a failed `packages ha sync and-reload`.
                    reason = failure if isinstance(failure, str) else "package reload failed"
                    self.d.log("ERROR", f"HA: package reload refused: {reason}")
                    raise ReloadRefused([reason])
                self.d.reload_packages(force=bool(msg.get("force")))
                reply: dict[str, Any] = {"ok": True}
            except ReloadRefused as exc:
                reply = {"ok": False, "info": " ".join(exc.lines)}
            link.send({"type": "reply", "req": msg["req"], **reply})

    def _on_upstream_close(self, link: HaLink) -> None:
        with self.lock:
            if self.upstream is not link:
                return  # closed on purpose (disable, be-primary, ...)
            # As on a real node: mode none; assigned-role and primary-id stay as they were.
            self.upstream = None
            self.mode = "none"
            gen = self.generation
            self._alarm(
                "ha-primary-down",
                link.peer_id,
                "Lost connection to primary due to: Primary closed connection",
                cleared=False,
            )
            if not self.enabled:
                return
            failover = self.setting("enable-failover") == "true" and self._may_fail_over(
                self.own_id()
            )
            # Other secondaries look for a new primary only with reconnect-secondaries.
            reconnect = self.setting("reconnect-secondaries") != "false"
        self.d.log("WARNING", f"HA: lost connection to primary {link.peer_id}")
        if failover:
            threading.Thread(target=self._fail_over, args=(gen, link.peer_id), daemon=True).start()
        elif reconnect:
            self._start_reconnect(gen, None)

    def _load_path(self) -> list[str]:
        root = str(self.d.layout.root)
        return [
            str(p)[len(root) :] if str(p).startswith(root) else str(p)
            for p in self.d.conf.load_path
        ]

    def _receive_packages(self, msg: dict[str, Any]) -> dict[str, Any]:
        load_dir = self.d.layout.load_dir
        load_dir.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = msg["files"]
        for entry in load_dir.iterdir():
            if packages.is_package_entry(entry) or entry.is_symlink():
                if entry.is_symlink() or entry.is_file():
                    entry.unlink()
                else:
                    shutil.rmtree(entry)
        for name, data in files.items():
            (load_dir / name).write_bytes(base64.b64decode(data))
        return {"ok": True}

    # ----- primary side -----
    def _accept_loop(self) -> None:
        assert self.sock is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn, addr[0]), daemon=True).start()

    def _handshake(self, sock: socket.socket, peer_addr: str) -> None:
        sock.settimeout(30)
        conn = Connection(sock)
        try:
            hello = conn.recv()
        except (OSError, ValueError):
            hello = None
        if hello is None:
            sock.close()
            return
        if hello.get("type") == "probe":
            try:
                conn.send({"type": "probe", "mode": self.mode, "id": self.own_id()})
            finally:
                sock.close()
            return
        with self.lock:
            reason = None
            if faults.active(self.d.layout, "ha-link-down"):
                reason = "HA link is down"
            elif not (self.enabled and self.mode == "primary"):
                reason = "node is not primary"
            elif hello.get("version") != self.d.version:
                reason = (
                    f"incompatible NSO version {hello.get('version')}, "
                    f"primary runs {self.d.version}"
                )
            elif self._token_proof() is None:
                reason = (
                    "no HA token configured on the primary (/high-availability/token);"
                    " set the same token on every node"
                )
            elif hello.get("token") != self._token_proof():
                reason = "Token mismatch, secondary is not allowed"
            if reason is not None:
                self.d.log("WARNING", f"HA: refused secondary {hello.get('id')}: {reason}")
                try:
                    conn.send({"type": "error", "reason": reason})
                finally:
                    sock.close()
                return
            node_id = str(hello.get("id"))
            sock.settimeout(None)
            conn.send(
                {
                    "type": "snapshot",
                    "tree": self.d.tree,
                    "txid": self.d.txid,
                    "primary_id": self.own_id(),
                }
            )
            old = self.secondaries.pop(node_id, None)
            if old is not None:
                old.close()
            link = HaLink(
                conn,
                node_id,
                str(hello.get("address", peer_addr)),
                lambda _link, _msg: None,
                self._on_secondary_close,
            )
            self.secondaries[node_id] = link
            self._alarm("ha-secondary-down", node_id, "Secondary connected", cleared=True)
            if self.d.read_only and self._clears_read_only_on_join():
                self.d.read_only = False
                self.d.log("WARNING", f"HA: read-only mode cleared as {node_id} joined")
            link.start()
        self.d.log("INFO", f"HA: secondary {node_id} connected")

    def _on_secondary_close(self, link: HaLink) -> None:
        with self.lock:
            if self.secondaries.get(link.peer_id) is not link:
                return  # closed on purpose (disable, a reconnecting secondary, ...)
            del self.secondaries[link.peer_id]
            self._alarm(
                "ha-secondary-down", link.peer_id, "Lost connection to secondary", cleared=False
            )
            # Consensus: a nominal primary that loses all its secondaries takes role none.
            demote = (
                not self.secondaries
                and self.mode == "primary"
                and self._consensus()
                and self.nominal_role(self.own_id()) == "primary"
            )
            if demote:
                self.mode = self.assigned_role = "none"
        self.d.log("INFO", f"HA: secondary {link.peer_id} disconnected")
        if demote:
            self.d.log("WARNING", "HA: lost all secondaries, assuming role none (consensus)")

    def _on_commit(self, ops: list[Op], txid: int) -> None:
        if self.mode != "primary":
            return
        for link in list(self.secondaries.values()):
            link.send({"type": "tx", "ops": [list(op) for op in ops], "txid": txid})

    def broadcast_snapshot(self) -> None:
        with self.lock:
            if self.mode != "primary":
                return
            msg = {"type": "snapshot", "tree": self.d.tree, "txid": self.d.txid}
            for link in list(self.secondaries.values()):
                link.send(msg)

    def _tick_loop(self) -> None:
        while not self.d.stop_event.wait(self._interval(1.0)):
            if faults.active(self.d.layout, "ha-link-down"):
                with self.lock:
                    links = list(self.secondaries.values())
                    upstream = self.upstream
                for link in links:
                    link.close()
                if upstream is not None:
                    upstream.close()
                continue
            if self.mode == "primary":
                for link in list(self.secondaries.values()):
                    link.send({"type": "ping"})

    # ----- packages ha sync -----
    def sync_packages(
        self,
        add_only: bool,
        wait_queue: bool,
        while_held: Callable[[], None] = lambda: None,
        while_copying: Callable[[], None] = lambda: None,
    ) -> SyncReport:
        """``while_copying`` runs as the packages go out to the secondaries, the primary
        still in its own mode; ``while_held`` once the primary is held read-only, before
        the reload: where the CLI's faults strike mid-sync."""
        if self.mode != "primary":
            return SyncReport(False, errors=["Error: packages ha sync must run on the HA primary"])
        if wait_queue:
            self.d.wait_commit_queue_empty()
        links = list(self.secondaries.values())
        mine = self._load_path()
        for link in links:
            theirs = link.request({"type": "load-path"}).get("load_path")
            if theirs != mine:
                return SyncReport(
                    False,
                    errors=[
                        f"Error: load-path on node {link.peer_id} differs: {theirs} != {mine}",
                        "The packages were not distributed.",
                    ],
                )
        previous = self.d.read_only
        report = SyncReport(False, started=True)
        try:
            old = {(i.name, i.version) for i in self.d.package_infos(only_up=False)}
            found, _doomed = self.d.plan_reload(force=False)
            if add_only and not old <= {(i.name, i.version) for _, i in found}:
                raise ReloadRefused(["Error: and-add may only add packages; use and-reload"])
            files = {}
            for entry, _info in found:
                name = entry.name if entry.name.endswith(".tar.gz") else entry.name + ".tar.gz"
                files[name] = base64.b64encode(package_file_bytes(entry)).decode()
            # The packages go out first, the primary still in its own mode; the upgrade
            # starts once they are copied over, with the primary read-only (the reference).
            while_copying()
            for link in links:
                reply = link.request({"type": "sync-packages", "files": files})
                report.synced.append((link.peer_id, bool(reply.get("ok"))))
                if not reply.get("ok"):
                    raise ReloadRefused(
                        [f"Error: sync to {link.peer_id} failed: {reply.get('info')}"]
                    )
            self.d.read_only = True
            while_held()
            self.d.check_commit_queue()
            for link in links:
                reply = link.request({"type": "reload", "force": False})
                if not reply.get("ok"):
                    raise ReloadRefused(
                        [f"Error: reload on {link.peer_id} failed: {reply.get('info')}"]
                    )
            if faults.fire(self.d.layout, "ha-sync-primary-reload-unsaid") is not None:
                # SIMULATOR behaviour: NSO's answer to a sync is not documented; this one
                # claims nothing and hides a failure, for clients that must not trust it.
                self.d.read_only = False
                report.ok = True
                return report
            names = self.d.reload_packages(force=False)
        except ReloadRefused as exc:
            self.d.read_only = False  # upstream: the node is left read-write on error
            report.errors = exc.lines
            return report
        self.d.read_only = previous
        self.broadcast_snapshot()
        report.ok, report.loaded = True, names
        return report

    # ----- status -----
    def status(self) -> HaStatus:
        with self.lock:
            own = self.own_id()
            return HaStatus(
                enabled=self.enabled,
                mode=self.mode,
                current_id=own if own and self.mode != "none" else None,
                assigned_role=self.assigned_role,
                be_secondary_result=self.be_secondary_result,
                primary_id=self.primary_id,
                read_only=self.d.read_only,
                secondaries=(
                    [(n, link.address) for n, link in sorted(self.secondaries.items())]
                    if self.mode == "primary"
                    else []
                ),
            )
