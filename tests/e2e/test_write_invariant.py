"""The invariant of issue 7, end to end: no write NSO acknowledged is ever lost.

A writer commits a unique device over the NSO CLI (real SSH) every ~50 ms, from before the
job starts until it has ended, and records every commit NSO acknowledged with
`Commit complete.`. After the job, every acknowledged device must be in
`show running-config`. Run for a successful major upgrade, a start failure that is rolled
back, and the agent SIGKILLed at each step (then restarted). Each test prints one line of
figures (`pytest tests/e2e/test_write_invariant.py -s -p no:randomly | grep INVARIANT`).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import paramiko
import pytest

from tests.support.processes import log_tail

from .conftest import (
    FINISHED,
    KillProxy,
    KillRule,
    Node,
    assert_node_on,
    running_config,
)

WRITE_EVERY = 0.05


@dataclass
class Writer:
    """Commits ``devices device inv-<n>`` one at a time; keeps what NSO acknowledged."""

    address: str
    port: int
    acknowledged: list[str] = field(default_factory=list)
    refused: int = 0
    unreachable: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: Optional[threading.Thread] = None
    client: Optional[paramiko.SSHClient] = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        assert self.thread is not None
        self.thread.join(timeout=60)
        if self.client is not None:
            self.client.close()

    def _connect(self) -> paramiko.SSHClient:
        if self.client is not None:
            transport = self.client.get_transport()
            if transport is not None and transport.is_active():
                return self.client
            self.client.close()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            self.address,
            self.port,
            username="admin",
            password="admin",
            look_for_keys=False,
            allow_agent=False,
            timeout=2,
            banner_timeout=2,
            auth_timeout=2,
        )
        self.client = client
        return client

    def _run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            name = f"inv-{n}"
            try:
                client = self._connect()
                _, out, _ = client.exec_command(
                    f"config\ndevices device {name} address 192.0.2.{n % 250 + 1}\ncommit",
                    timeout=10,
                )
                text = out.read().decode(errors="replace")
                status = out.channel.recv_exit_status()
            except (OSError, EOFError, paramiko.SSHException):
                self.unreachable += 1
                if self.client is not None:
                    self.client.close()
                    self.client = None
            else:
                if status == 0 and "Commit complete." in text:
                    self.acknowledged.append(name)
                else:
                    self.refused += 1
            self.stop_event.wait(WRITE_EVERY)


def lost_writes(node: Node, writer: Writer) -> list[str]:
    present = set(re.findall(r"^devices device (inv-\d+)$", running_config(node.host), re.M))
    return [name for name in writer.acknowledged if name not in present]


def run_with_writer(node: Node, to: str, proxy: Optional[KillProxy] = None) -> tuple[dict, Writer]:
    """Upgrade ``node`` while a writer commits; with ``proxy`` armed, restart the agent the
    proxy killed."""
    writer = Writer(node.host.address, node.host.cli_port)
    writer.start()
    time.sleep(0.5)  # writes acknowledged before the job exists count too
    try:
        job_id = node.upgrade(to)
        if proxy is not None:
            assert proxy.fired.wait(60), f"never killed:\n{log_tail(node.agent.log)}"
            node.agent.start()
        job = node.wait_job(job_id, timeout=180)
        time.sleep(0.5)  # and so do writes after it
    finally:
        writer.stop()
    return job, writer


def report(scenario: str, job: dict, writer: Writer, lost: list[str]) -> None:
    print(
        f"INVARIANT {scenario}: job {job['state']}"
        + (f" ({job['outcome']})" if job.get("outcome") else "")
        + f", acknowledged {len(writer.acknowledged)}, lost {len(lost)},"
        f" refused {writer.refused}, unreachable {writer.unreachable}"
    )


def test_no_acknowledged_write_is_lost_in_a_successful_major_upgrade(
    shared_server, make_node, builds
):
    node = make_node(shared_server, "6.1")
    job, writer = run_with_writer(node, "6.2")
    lost = lost_writes(node, writer)
    report("major-upgrade", job, writer, lost)
    assert job["state"] == "succeeded", job
    assert lost == []
    assert len(writer.acknowledged) >= 10  # the writer really wrote, before and after
    verify = job["steps"][-1]
    assert verify["result"]["data_changed"] is True  # writes came in: not a failure


def test_no_acknowledged_write_is_lost_when_a_failed_start_is_rolled_back(
    shared_server, make_node, builds
):
    node = make_node(shared_server, "6.1")
    node.fault("start-exit", "13", "--once")
    job, writer = run_with_writer(node, "6.2")
    lost = lost_writes(node, writer)
    report("start-fails-rolled-back", job, writer, lost)
    assert (job["state"], job["outcome"]) == ("failed", "rolled_back"), job
    assert lost == []
    assert len(writer.acknowledged) >= 10  # the writer really wrote, around a long downtime


def test_no_acknowledged_write_is_lost_when_the_upgrade_rewrites_data(
    shared_server, make_node, builds, artifacts
):
    """The 6.3 build of l3vpn carries an upgrade component that rewrites every service
    instance when it replaces the 6.1 build: the data after the upgrade differs from the data
    before it by design, and that is neither a verify failure nor a reason to restore."""
    rewriting = artifacts.package("l3vpn", "1.0", "6.3", "--upgrade-set", "schema=v63")
    shared_server.publish("6.3", builds.installer("6.3"), [builds.artifacts.ned("6.3"), rewriting])
    node = make_node(shared_server, "6.1")
    assert not re.search(r"schema +v63", running_config(node.host))
    job, writer = run_with_writer(node, "6.3")
    lost = lost_writes(node, writer)
    report("major-upgrade-rewriting-data", job, writer, lost)
    assert job["state"] == "succeeded", job
    assert lost == []
    after = running_config(node.host)
    assert len(re.findall(r"^ schema +v63$", after, re.M)) == 3  # the host's 3 instances
    assert job["steps"][-1]["result"]["data_changed"] is True


KILLS = [
    KillRule("prestage", "running"),
    KillRule("backup", "running"),
    KillRule("backup", "copying the package links"),
    KillRule("stop", "running"),
    KillRule("restore_point", "running"),
    KillRule("compact", "running"),
    KillRule("switch_current", "running"),
    KillRule("relink_packages", "running"),
    KillRule("start", "running"),
    KillRule("verify", "running"),
]


@pytest.mark.parametrize("rule", KILLS, ids=lambda r: f"{r.step}-{r.point.split()[0]}")
def test_no_acknowledged_write_is_lost_when_the_agent_is_killed(
    rule, shared_server, kill_proxy, make_node, builds
):
    node = make_node(shared_server, "6.1", via=kill_proxy.url)
    before_files = [p.name for p in builds.packages("6.1")]
    kill_proxy.arm(rule, node.agent.kill)
    job, writer = run_with_writer(node, "6.2", kill_proxy)
    lost = lost_writes(node, writer)
    report(f"agent-killed-at-{rule.step}-{rule.point.split()[0]}", job, writer, lost)
    assert job["state"] in FINISHED
    assert job["state"] == "succeeded" or job["outcome"] == "rolled_back", job
    assert lost == []
    version = "6.2" if job["state"] == "succeeded" else "6.1"
    files = [p.name for p in builds.packages("6.2")] if version == "6.2" else before_files
    assert_node_on(node, version, files, running_config(node.host))
