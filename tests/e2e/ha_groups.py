"""HA groups end to end: simulated clusters whose members each run a real agent, registered
as a group on a real server; checks of what a healthy group looks like after an upgrade."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tests.support.group_writer import GroupWriter
from tests.support.nso_repo import RepoServer
from tests.support.waiting import wait_until

from .conftest import WORKER, Builds, Node, branch, running_config

ROLES = {2: ("primary", "secondary:failover"), 3: ("primary", "secondary:failover", "secondary")}
_groups = itertools.count(1)


@dataclass
class Group:
    name: str
    nodes: list[Node]  # the primary, the failover secondary, the third node

    @property
    def server(self) -> RepoServer:
        return self.nodes[0].server

    def upgrade(self, to: str, policy: str = "safe") -> int:
        answer = self.server.api(
            "POST", f"/groups/{self.name}/upgrade", json={"to": to, "write_policy": policy}
        )
        assert answer.status_code == 202, answer.text
        return int(answer.json()["id"])

    def writer(self) -> GroupWriter:
        return GroupWriter([(n.host.address, n.host.cli_port) for n in self.nodes])


def make_group(
    server: RepoServer,
    make_cluster: Callable[..., Any],
    make_agent: Callable[..., Node],
    builds: Builds,
    size: int = 2,
    version: str = "6.1",
) -> Group:
    """A started cluster of ``size`` members on ``version``, an agent on each, registered as
    a group once every heartbeat shows the cluster whole."""
    hosts = make_cluster(version, ROLES[size], packages=builds.packages(branch(version)))
    hosts[1].wait_for("show high-availability status mode", "secondary")
    nodes = [make_agent(server, host) for host in hosts]
    ids = [f"n{i}" for i in range(1, size + 1)]

    def whole() -> bool:
        ha = (nodes[0].info().get("inventory") or {}).get("ha") or {}
        return set(ids[1:]) <= set(ha.get("connected_secondaries") or [])

    wait_until(whole, 30, 0.2, message="the primary's heartbeat never showed every secondary")
    name = f"grp-{WORKER}-{next(_groups)}"
    members = [
        {
            "node": n.name,
            "ha_id": i,
            "role": "primary" if k == 0 else "secondary",
            "failover": k == 1,
        }
        for k, (n, i) in enumerate(zip(nodes, ids))
    ]
    added = server.api("POST", "/groups", json={"name": name, "members": members})
    assert added.status_code == 201, added.text
    return Group(name, nodes)


def devices(node: Node) -> set[str]:
    return set(re.findall(r"^devices device (inv-\d+)$", running_config(node.host), re.M))


def lost_on(
    group: Group, writer: GroupWriter, nodes: Optional[list[Node]] = None
) -> dict[str, list[str]]:
    """Per member (of ``nodes``: those running), the acknowledged writes it does not hold."""
    lost = {}
    for node in nodes or group.nodes:
        present = devices(node)
        missing = [n for n in writer.names if n not in present]
        if missing:
            lost[node.name] = missing
    return lost


def ha_mode(node: Node) -> str:
    out, _ = node.host.cli("show high-availability status mode")
    return out.strip().split()[-1] if out.strip() else ""


def read_only(node: Node) -> Optional[bool]:
    out, _ = node.host.cli("show high-availability status read-only-mode")
    return out.strip().endswith("true") if out.strip() else None


def assert_group_on(group: Group, version: str, builds: Builds) -> None:
    """Every member on ``version`` with its builds, in its nominal role, HA converged,
    the primary writable, and the same data everywhere."""
    for node in group.nodes:
        for client in node.host.clients:
            client.close()
        node.host.clients.clear()
    primary, *secondaries = group.nodes
    primary.host.wait_for("show high-availability status mode", "primary")
    for node in secondaries:
        node.host.wait_for("show high-availability status mode", "secondary")
    connected, _ = primary.host.cli("show high-availability")
    for i in range(2, len(group.nodes) + 1):
        assert re.search(rf"^n{i}\s", connected, re.M), connected
    assert read_only(primary) is False
    files = sorted(p.name for p in builds.packages(branch(version)))
    config = running_config(primary.host)
    for node in group.nodes:
        out, _ = node.host.cli("show ncs-state version")
        assert f"ncs-state version {version}" in out, (node.name, out)
        linked = sorted(p.resolve().name for p in node.host.path("/var/opt/ncs/packages").iterdir())
        assert linked == files, (node.name, linked)
        assert running_config(node.host) == config, node.name


def report(scenario: str, job: dict, writer, lost: dict) -> None:
    windows = job.get("windows") or {}
    print(
        f"HA-INVARIANT {scenario}: job {job['state']}"
        + (f" ({job['outcome']})" if job.get("outcome") else "")
        + f", acknowledged {len(writer.acknowledged)}, lost {sum(map(len, lost.values()))},"
        f" refused {writer.refused}, unreachable {writer.unreachable},"
        f" unavailable {windows.get('write_unavailable_s')} s,"
        f" unprotected {windows.get('unprotected_s')} s"
    )
