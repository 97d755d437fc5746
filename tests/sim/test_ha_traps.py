"""The two traps of the guide's HA upgrade, at simulator level: the third node that joins the
failover-primary and clears read-only mode, and ``high-availability disable`` on the
designated secondary, which resets read-only mode so it takes writes that vanish when it
rejoins. Each with the plan that avoids it."""

from __future__ import annotations

import itertools
import threading
import time

import paramiko

from tests.sim.test_upgrade_ha import upgrade_node
from tests.support.sim_hosts import run
from tests.support.waiting import wait_until

READ_ONLY = "Aborted: node is in read-only mode"


def _read_only(host) -> str:
    return host.cli("show high-availability status read-only-mode")[0].split()[-1]


def _three_nodes_read_only(make_cluster) -> list:
    """A 3-node cluster after the guide's stage 1: read-only on the primary and the
    failover secondary."""
    nodes = make_cluster("6.1", ("primary", "secondary:failover", "secondary"))
    for node in nodes[1:]:
        node.wait_for("show high-availability status mode", "secondary")
    for node in nodes[:2]:
        assert node.cli("high-availability read-only mode true")[1] == 0
    return nodes


def test_third_node_joining_the_failover_primary_clears_read_only(make_cluster):
    n1, n2, _n3 = _three_nodes_read_only(make_cluster)
    # Stage 4 without stage 3: n3 is still an HA member when the pair is split.
    n1.cli("high-availability disable")
    assert n2.cli("high-availability be-primary")[0] == "result ok\n"
    n2.wait_for("show high-availability status connected-secondary", "n3")
    assert _read_only(n2) == "false"
    out, status = n2.cli("config\nl3vpn trap customer c\ncommit")
    assert status == 0 and "Commit complete." in out


def test_stopping_the_third_node_first_keeps_read_only(make_cluster):
    n1, n2, n3 = _three_nodes_read_only(make_cluster)
    assert run(n3.ncs, "--stop").returncode == 0
    n1.cli("high-availability disable")
    assert n2.cli("high-availability be-primary")[0] == "result ok\n"
    time.sleep(0.5)  # many reconnect intervals at the tests' time scale
    assert "n3" not in n2.cli("show high-availability status")[0]
    assert _read_only(n2) == "true"
    out, status = n2.cli("config\nl3vpn trap customer c\ncommit")
    assert status == 1 and out.startswith(READ_ONLY)


class Writer:
    """Commits a new service instance every ~50 ms to the member a client would reach: the
    primary, else the node it wrote to last while that one still takes writes (a client keeps
    its connection), else any node in mode none that takes writes. Remembers every commit that
    NSO acknowledged, and on which node."""

    def __init__(self, hosts: dict[str, object]) -> None:
        self.hosts = hosts
        self.acked: list[tuple[str, str]] = []  # (key, node)
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last: str | None = None
        self._seq = itertools.count(1)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for client in self._clients.values():
            client.close()

    def acked_on(self, node: str) -> int:
        return sum(1 for _, n in self.acked if n == node)

    def _cli(self, node: str, command: str) -> str:
        client = self._clients.get(node)
        if client is None:
            host = self.hosts[node]
            client = host.ssh()
            host.clients.remove(client)  # the writer's own: the test's restarts leave it be
            self._clients[node] = client
        try:
            _, out, _ = client.exec_command(command, timeout=10)
            return out.read().decode()
        except Exception:
            self._clients.pop(node).close()
            raise

    def _state(self, node: str) -> tuple[str, bool]:
        """(mode, takes writes) of a node, ("down", False) when it does not answer."""
        try:
            out = self._cli(node, "show high-availability status")
        except Exception:
            return "down", False
        mode = "none"
        read_only = True
        for line in out.splitlines():
            if line.startswith("high-availability status mode "):
                mode = line.split()[-1]
            if line.startswith("high-availability status read-only-mode "):
                read_only = line.split()[-1] == "true"
        return mode, mode != "secondary" and not read_only

    def _target(self) -> str | None:
        states = {node: self._state(node) for node in self.hosts}
        primaries = [n for n, (mode, _) in states.items() if mode == "primary"]
        if primaries:
            return primaries[0]
        if self._last is not None and states[self._last] == ("none", True):
            return self._last
        return next((n for n, s in states.items() if s == ("none", True)), None)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            node = self._target()
            if node is None:
                continue
            self._last = node
            key = f"w{next(self._seq)}"
            try:
                out = self._cli(node, f"config\nl3vpn {key} customer writer\ncommit")
            except Exception:
                continue
            if "Commit complete." in out:
                self.acked.append((key, node))


def _upgrade(host, artifacts, vsn: str) -> None:
    """The guide's upgrade of one node, then its restart with package reload."""
    upgrade_node(host, artifacts, vsn)
    result = run(host.init, "restart-with-package-reload")
    assert result.returncode == 0, result.stdout + result.stderr
    host.clients.clear()


def _replay_guide(make_cluster, artifacts, stop_secondary: bool) -> tuple[Writer, set[str]]:
    """The guide's 2-node script order with a steady writer; at stage 6 the designated
    secondary is disabled (the script) or stopped (our plan). Returns the writer and the
    keys the primary holds at the end."""
    n1, n2 = make_cluster("6.1")
    n2.wait_for("show high-availability status mode", "secondary")
    with Writer({"n1": n1, "n2": n2}) as writer:
        wait_until(lambda: writer.acked_on("n1"), 10, message="the writer never committed")
        # Stages 1-2: read-only on both, backups.
        for node in (n1, n2):
            assert node.cli("high-availability read-only mode true")[1] == 0
        for node in (n1, n2):
            assert run(node.path("/opt/ncs/current/bin/ncs-backup")).returncode == 0
        # Stage 4: split the pair; 5: upgrade the designated primary.
        n1.cli("high-availability disable")
        assert n2.cli("high-availability be-primary")[0] == "result ok\n"
        _upgrade(n1, artifacts, "6.2")
        # Stage 6: disable (the script) or stop (our plan) the designated secondary. The
        # pause stands for the next ssh of the script: the writer gets its turn.
        before = len(writer.acked)
        if stop_secondary:
            assert run(n2.ncs, "--stop").returncode == 0
        else:
            assert n2.cli("high-availability disable")[0] == "result NSO Built-in HA disabled\n"
        wait_until(lambda: len(writer.acked) > before, 10, message="no write after stage 6")
        # Stage 7: enable the upgraded primary; 8-9: upgrade and enable the secondary.
        assert n1.cli("high-availability enable")[0] == "result enabled\n"
        n1.wait_for("show high-availability status mode", "primary")
        # A stopped secondary is upgraded the same way: the restart starts the new release.
        _upgrade(n2, artifacts, "6.2")
        assert n2.cli("high-availability enable")[0] == "result enabled\n"
        n2.wait_for("show high-availability status mode", "secondary")
        n1.wait_for("show high-availability status connected-secondary", "n2")
        after = len(writer.acked)
        wait_until(lambda: len(writer.acked) > after, 10, message="no write after the upgrade")
    config = n1.cli("show running-config l3vpn")[0]
    n2.wait_for("show running-config l3vpn", writer.acked[-1][0])
    assert n2.cli("show running-config l3vpn")[0] == config
    held = {line.split()[1] for line in config.splitlines() if line.startswith("l3vpn ")}
    return writer, held


def test_disabling_the_secondary_at_stage_6_loses_acknowledged_writes(make_cluster, artifacts):
    writer, held = _replay_guide(make_cluster, artifacts, stop_secondary=False)
    lost = [(key, node) for key, node in writer.acked if key not in held]
    assert lost, f"every acknowledged write survived: {writer.acked}"
    # Exactly the writes n2 took as a standalone node after its disable.
    assert {node for _, node in lost} == {"n2"}


def test_stopping_the_secondary_at_stage_6_loses_no_acknowledged_write(make_cluster, artifacts):
    writer, held = _replay_guide(make_cluster, artifacts, stop_secondary=True)
    assert writer.acked
    assert [key for key, _ in writer.acked if key not in held] == []
