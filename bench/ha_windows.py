"""Write windows of a 2-node HA group upgrade (NSO 6.1 -> 6.2, major): ours against the guide's.

Run from the repository root:

    python bench/ha_windows.py                     # time scale 0.15, about 2-3 minutes
    python bench/ha_windows.py --time-scale 0.05   # quicker; Python start-ups weigh more

In one run, on three fresh simulated 2-node rule-based HA groups (their own 127.x
addresses and free ports), each with a writer committing every 50 ms to whichever member
takes writes and a poller reading `show high-availability` on every member:

1. `available`: a group upgrade job through the server and an agent per member. Its
   write-unavailable window (the job's `windows`) over the NSO work that must happen
   inside it: both backups, the primary's stop, compact and start (their `nso_seconds`).
   Goal: at most 1.1.
2. `safe`: the same on a fresh group. Its unprotected window (goal 0), cross-checked by
   the probe (no write acknowledged by a member that had no secondary connected), and its
   unavailable ratio, for information.
3. The reference: the guide's script order, driven here against a third group by hand
   (CLI over SSH, shell commands by path, `nso-sim copy` for its scp).

The last line printed is one JSON object with exactly the issue's five keys; the tables
above it say how each figure was taken (bench/README.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import paramiko
from benchkit import (
    BenchError,
    Started,
    free_port,
    loadavg,
    run_benchmark,
    serve_repo,
    start,
    tail,
)
from rich.console import Console
from rich.table import Table
from upgrade_overhead import (
    Api,
    Artifacts,
    Host,
    build_artifacts,
    clean_env,
    run_checked,
    seconds_between,
    sim,
)

SOURCE, TARGET = "6.1", "6.2"
GOAL_AVAILABLE_RATIO = 1.1
GOAL_SAFE_UNPROTECTED_S = 0.0
ROLES = ("primary", "secondary:failover")
HA_IDS = ("n1", "n2")
WRITE_EVERY = 0.05
POLL_EVERY = 0.1
# A pause between acknowledged writes longer than this means none were taken: a commit
# takes well under it when a member takes writes.
REFUSED_GAP = 0.5
# The steps whose NSO work must happen while no member takes writes: both backups, and the
# primary's stop, compact and start (the denominator).
BOTH_MEMBERS = ("backup",)
PRIMARY_ONLY = ("stop", "compact", "start")

console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
# The probe's connections break on purpose (members stop and restart): no tracebacks for it.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------- the probe


def cli_client(host: Host, timeout: float = 5) -> paramiko.SSHClient:
    """An SSH connection to the host's NSO CLI as admin."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        host.address,
        host.cli_port,
        username="admin",
        password="admin",
        look_for_keys=False,
        allow_agent=False,
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
    )
    return client


def connected_secondaries(text: str) -> int:
    """Rows of the `ID  ADDRESS` table of `show high-availability`."""
    return len(re.findall(r"^\S+\s+\d+\.\d+\.\d+\.\d+\s*$", text, re.M))


@dataclass
class Probe:
    """A writer committing one new device every 50 ms to whichever member takes writes
    (tests/support/group_writer.py, kept small), and a poller reading `show
    high-availability` on every member every 0.1 s. Moments are time.monotonic()."""

    hosts: list[Host]
    acks: list[tuple[float, int]] = field(default_factory=list)  # (moment, member)
    # member -> [(moment, secondaries it showed connected; -1: it did not answer)]
    ha: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._write, daemon=True)]
        for member in range(len(self.hosts)):
            self.ha[member] = []
            self.threads.append(threading.Thread(target=self._poll, args=(member,), daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(
        self, member: int, clients: dict[int, paramiko.SSHClient], command: str
    ) -> Optional[str]:
        """`command` on `member`'s CLI over its kept connection: the output when it exited
        0, "" when it did not, None when the member did not answer (the connection is
        dropped, the next call opens a new one)."""
        try:
            if member not in clients:
                clients[member] = cli_client(self.hosts[member], timeout=2)
            _, out, _ = clients[member].exec_command(command, timeout=10)
            text = out.read().decode(errors="replace")
            return text if out.channel.recv_exit_status() == 0 else ""
        except (OSError, EOFError, paramiko.SSHException):
            dead = clients.pop(member, None)
            if dead is not None:
                dead.close()
            return None

    def _write(self) -> None:
        clients: dict[int, paramiko.SSHClient] = {}
        target, n = 0, 0
        while not self.stop_event.is_set():
            n += 1
            command = f"config\ndevices device probe-{n} address 192.0.2.{n % 250 + 1}\ncommit"
            text = self._run(target, clients, command)
            if text and "Commit complete." in text:
                self.acks.append((time.monotonic(), target))
            else:
                # On a refusal the next tick tries the next member, so a new primary is
                # found within a round.
                target = (target + 1) % len(self.hosts)
            self.stop_event.wait(WRITE_EVERY)
        for client in clients.values():
            client.close()

    def _poll(self, member: int) -> None:
        clients: dict[int, paramiko.SSHClient] = {}
        while not self.stop_event.is_set():
            text = self._run(member, clients, "show high-availability")
            seen = -1 if text is None else connected_secondaries(text)
            self.ha[member].append((time.monotonic(), seen))
            self.stop_event.wait(POLL_EVERY)
        for client in clients.values():
            client.close()

    def longest_gap(self, since: float, until: float) -> tuple[float, float, float]:
        """The longest time between two acknowledged writes in [since, until]: (seconds,
        last write before, first write after)."""
        moments = [t for t, _ in self.acks if since <= t <= until]
        gaps = [(b - a, a, b) for a, b in zip(moments, moments[1:])]
        return max(gaps, default=(0.0, since, since))

    def acked_between(self, since: float, until: float) -> tuple[int, float]:
        """Writes acknowledged in (since, until), and how long of it none was: the gaps
        longer than REFUSED_GAP between them (and the bounds)."""
        inside = [t for t, _ in self.acks if since < t < until]
        moments = [since, *inside, until]
        gaps = [b - a for a, b in zip(moments, moments[1:])]
        return len(inside), sum(g for g in gaps if g > REFUSED_GAP)

    def unprotected(self) -> tuple[int, float]:
        """Writes acknowledged by a member whose last `show high-availability` before the
        write showed no secondary connected, and the time from the first such write until
        that member was next seen with a secondary."""
        count, span = 0, 0.0
        for at, member in self.acks:
            before = [n for t, n in self.ha[member] if t <= at]
            if not before or before[-1] != 0:
                continue
            count += 1
            if count == 1:
                after = [t for t, n in self.ha[member] if t > at and n > 0]
                span = (after[0] if after else self.ha[member][-1][0]) - at
        return count, span


# ---------------------------------------------------------------------------- groups


@dataclass
class Member:
    host: Host
    ha_id: str
    node: str = ""  # its node's name on the server, when it has an agent
    agent: Optional[Started] = None

    @property
    def agent_log(self) -> str:
        return tail(self.agent.log) if self.agent is not None else "(no agent)"


def shared_port(addresses: list[str]) -> int:
    """A port free on every address: the members of a group share their HA port."""
    for _ in range(50):
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise BenchError(
        f"found no port free on all of {', '.join(addresses)} in 50 tries; stop what "
        "listens on them (ss -ltnp) and run again"
    )


def make_cluster(
    work: Path,
    prefix: str,
    first: int,
    art: Artifacts,
    args: argparse.Namespace,
    cleanup: list[Callable[[], None]],
) -> list[Member]:
    """A started 2-node rule-based HA cluster on 6.1 (n1 primary, n2 failover secondary,
    shared crypto keys and HA port), with --devices/--services of data in its CDB."""
    addresses = [f"{prefix}.{first + i}" for i in range(len(ROLES))]
    ha_port = shared_port(addresses)
    spec = [f"--ha-node={i}={a}:{r}" for i, a, r in zip(HA_IDS, addresses, ROLES)]
    members: list[Member] = []
    for ha_id, address in zip(HA_IDS, addresses):
        host = Host(work / f"host-{address}", address, free_port(address), free_port(address))
        cmd = ["host", "create", "--root", str(host.root), "--version", SOURCE]
        cmd += ["--address", address, "--cli-port", str(host.cli_port)]
        cmd += ["--ipc-port", str(host.ipc_port), "--ha-port", str(ha_port)]
        cmd += ["--time-scale", f"{args.time_scale:g}", *spec, "--ha-id", ha_id]
        cmd += ["--installer", str(art.installer(SOURCE)), "--ssh-host-key", str(art.host_key)]
        cmd += ["--devices", str(args.devices), "--services", str(args.devices)]
        for pkg in art.packages(SOURCE):
            cmd += ["--package", str(pkg)]
        if members:
            cmd += ["--crypto-keys", str(members[0].host.path("/etc/ncs/ncs.crypto_keys"))]
        sim(*cmd)
        cleanup.append(host.stop)
        members.append(Member(host, ha_id))
    for member in members:
        sim("host", "start", "--root", str(member.host.root))
    wait_ha(
        members[0].host,
        lambda text: connected_secondaries(text) == len(members) - 1,
        "n2 connected to n1",
    )
    return members


def wait_ha(host: Host, ok: Callable[[str], bool], what: str, timeout: float = 120) -> float:
    """Poll `show high-availability` on `host` until `ok(output)`; the moment it was."""
    deadline = time.monotonic() + timeout
    client: Optional[paramiko.SSHClient] = None
    text = ""
    while time.monotonic() < deadline:
        try:
            client = client or cli_client(host)
            _, out, _ = client.exec_command("show high-availability", timeout=10)
            text = out.read().decode(errors="replace")
            if ok(text):
                client.close()
                return time.monotonic()
        except (OSError, EOFError, paramiko.SSHException):
            if client is not None:
                client.close()
            client = None
        time.sleep(0.05)
    raise BenchError(
        f"{host.address}: not {what} within {timeout:.0f} s; it shows:\n{text}\ncheck that "
        "tests/sim/test_upgrade_ha.py passes on this tree, or try a smaller --time-scale"
    )


def start_agents(
    api: Api, work: Path, group: str, members: list[Member], cleanup: list[Callable[[], None]]
) -> None:
    """A node, `nso-agent enroll` and `nso-agent run` per member (1 s long-poll wait, the
    default heartbeat interval of 60 s: an agent collecting its inventory every second
    would not be the agent operators run), then the group registered once the primary's
    heartbeat lists its secondary (the one an agent sends when it starts)."""
    for m in members:
        m.node = f"{group}-{m.ha_id}"
        added = api.call("POST", "/api/v1/nodes", {"name": m.node})
        conf = work / f"{m.node}.conf"
        conf.write_text(
            f"[host]\nroot = {m.host.root}\n[cli]\nhost = {m.host.address}\n"
            f"port = {m.host.cli_port}\nuser = admin\npassword = admin\n"
            "[agent]\npoll_wait = 1\nheartbeat_interval = 60\n"
        )
        agent_cmd = [sys.executable, "-m", "agent", "--config", str(conf)]
        run_checked(
            "nso-agent enroll",
            [*agent_cmd, "enroll", "--server", api.base, "--token", added["enrollment_token"]],
        )
        m.agent = start(
            f"nso-agent ({m.node})", [*agent_cmd, "run"], work / f"{m.node}.log", clean_env()
        )
        cleanup.append(m.agent.stop)
    deadline = time.monotonic() + 60
    while True:  # every member's heartbeat in, the primary's listing its secondary
        seen = [
            (api.call("GET", f"/api/v1/nodes/{m.node}").get("inventory") or {}) for m in members
        ]
        ha = seen[0].get("ha") or {}
        if all(seen) and set(HA_IDS[1:]) <= set(ha.get("connected_secondaries") or []):
            break
        if time.monotonic() > deadline:
            late = [m for m, inv in zip(members, seen) if not inv] or members[:1]
            raise BenchError(
                f"{late[0].node}'s heartbeat never came in, or never listed {HA_IDS[1]} as "
                f"connected (the primary's shows {ha}); its agent's log ends with:\n"
                f"{late[0].agent_log}"
            )
        time.sleep(0.2)
    api.call(
        "POST",
        "/api/v1/groups",
        {
            "name": group,
            "members": [
                {
                    "node": m.node,
                    "ha_id": m.ha_id,
                    "role": r.split(":")[0],
                    "failover": r.endswith(":failover"),
                }
                for m, r in zip(members, ROLES)
            ],
        },
    )


# ---------------------------------------------------------------------------- our upgrade


def in_denominator(step: dict[str, Any], primary: str) -> bool:
    return step["name"] in BOTH_MEMBERS or (
        step["node"] == primary and step["name"] in PRIMARY_ONLY
    )


def group_upgrade(api: Api, group: str, members: list[Member], policy: str) -> dict[str, Any]:
    """The group's upgrade job under `policy`, with the probe running from before the job
    until after it; the job's window, its steps inside it and the probe's figures."""
    probe = Probe([m.host for m in members])
    probe.start()
    try:
        time.sleep(1.0)  # the writer takes writes before the job exists
        began = time.monotonic()
        job = api.call(
            "POST", f"/api/v1/groups/{group}/upgrade", {"to": TARGET, "write_policy": policy}
        )
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            for m in members:
                if m.agent is None or not m.agent.alive():
                    raise BenchError(
                        f"nso-agent of {m.node} died; its log ends with:\n{m.agent_log}"
                    )
            if time.monotonic() - began > 900:
                raise BenchError(
                    f"job {job['id']} ({policy}) did not finish in 900 s; try a smaller "
                    "--time-scale, or see `nso-repo job show` while it runs"
                )
            time.sleep(0.1)
            job = api.call("GET", f"/api/v1/jobs/{job['id']}")
        ended = time.monotonic()
        time.sleep(1.0)  # and after it ended
    finally:
        probe.stop()
    if job["state"] != "succeeded":
        failed = [s for s in job["steps"] if s["state"] == "failed"]
        raise BenchError(
            f"{policy} job {job['id']} {job['state']} ({job.get('outcome')}): {job.get('error')}\n"
            + "\n".join(
                f"{s['node']} {s['name']}: {s['message']}\n{s['log_tail'] or ''}" for s in failed
            )
            + "\ncheck that tests/e2e/test_ha_upgrade.py passes on this tree"
        )
    steps = sorted(job["steps"], key=lambda s: s["seq"])
    marks = (job.get("plan") or {}).get("marks") or {}
    by_seq = {s["seq"]: s for s in steps}
    if "writes_stop" not in marks or "writes_resume" not in marks:
        raise BenchError(
            f"job {job['id']}'s plan marks no write window ({marks}): the server's HA plan "
            "(repo_server/upgrades/ha_plan.py) must mark writes_stop and writes_resume"
        )
    stop_at, resume_at = (
        by_seq[marks["writes_stop"]]["finished_at"],
        by_seq[marks["writes_resume"]]["finished_at"],
    )
    inside = [s for s in steps if marks["writes_stop"] < s["seq"] <= marks["writes_resume"]]
    primary = members[0].node
    timeline, previous = [], stop_at
    for s in inside:
        timeline.append(
            {
                "node": "primary" if s["node"] == primary else "secondary",
                "name": s["name"],
                "gap_s": seconds_between(previous, s["started_at"]),
                "wall_s": seconds_between(s["started_at"], s["finished_at"]),
                "nso_s": float(s.get("nso_seconds") or 0.0),
                "counted": in_denominator(s, primary),
            }
        )
        previous = s["finished_at"]
    work_s = sum(t["nso_s"] for t in timeline if t["counted"])
    counted = sorted((t["node"], t["name"]) for t in timeline if t["counted"])
    expected = sorted(
        [("primary", "backup"), ("secondary", "backup")] + [("primary", n) for n in PRIMARY_ONLY]
    )
    if counted != expected:
        raise BenchError(
            f"the {policy} window holds {counted}, not the NSO work the ratio divides by "
            f"({expected}): the server's HA plan changed; update BOTH_MEMBERS/PRIMARY_ONLY "
            "in bench/ha_windows.py and the README to what must happen inside the window"
        )
    gap = probe.longest_gap(began, ended)
    acked, span = probe.unprotected()
    windows = job["windows"]
    return {
        "policy": policy,
        "job": job["id"],
        "unavailable_s": float(windows["write_unavailable_s"]),
        "unprotected_s": float(windows["unprotected_s"]),
        "check_unavailable_s": seconds_between(stop_at, resume_at),
        "work_s": work_s,
        "timeline": timeline,
        "probe_gap_s": gap[0],
        "probe_acks": len(probe.acks),
        "probe_unprotected_acks": acked,
        "probe_unprotected_s": span,
        "job_s": seconds_between(job["created_at"], job["finished_at"]),
    }


# ---------------------------------------------------------------------------- the reference


@dataclass
class Script:
    """The guide's script (nso-upgrade-guide.md, "Script for HA Major Upgrade"), its
    commands run here in its order, each timed: the CLI over SSH, shell commands by path
    with a bare environment, `nso-sim copy` for its scp."""

    members: list[Member]
    art: Artifacts
    steps: list[dict[str, Any]] = field(default_factory=list)
    clients: dict[int, paramiko.SSHClient] = field(default_factory=dict)

    def _timed(self, member: int, what: str, counted: bool, run: Callable[[], str]) -> str:
        began = time.monotonic()
        out = run()
        self.steps.append(
            {
                "node": ROLES[member].split(":")[0],
                "name": what,
                "began": began,
                "ended": time.monotonic(),
                "counted": counted,
            }
        )
        return out

    def cli(self, member: int, command: str, expect: str) -> None:
        def run() -> str:
            if member not in self.clients:
                self.clients[member] = cli_client(self.members[member].host)
            _, out, _ = self.clients[member].exec_command(command, timeout=120)
            return out.read().decode(errors="replace")

        out = self._timed(member, command, False, run)
        if expect not in out:
            raise BenchError(
                f"reference: `{command}` on {HA_IDS[member]} said {out.strip()!r}, not "
                f"{expect!r}; check that tests/sim/test_upgrade_ha.py (the same transcript) "
                "passes on this tree"
            )

    def sh(self, member: int, what: str, *cmd: str, counted: bool = False) -> str:
        host = self.members[member].host

        def run() -> str:
            done = subprocess.run(
                list(cmd),
                cwd=host.root,
                capture_output=True,
                text=True,
                env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")},
                timeout=600,
                check=False,
            )
            if done.returncode != 0:
                raise BenchError(
                    f"reference: {' '.join(cmd)} on {HA_IDS[member]} failed (exit "
                    f"{done.returncode}): {done.stdout}{done.stderr}; check that "
                    "tests/sim/test_upgrade_ha.py (the same commands) passes on this tree"
                )
            return done.stdout

        return self._timed(member, what, counted, run)

    def copy(self, member: int, src: Path, dst: str) -> None:
        host = self.members[member].host
        copy = [sys.executable, "-m", "nso_sim", "copy", str(src), str(host.path(dst) / src.name)]
        self._timed(member, f"scp {src.name}", False, lambda: run_checked("nso-sim copy", copy))

    def upgrade_node(self, member: int) -> None:
        """upgrade_nso and upgrade_packages of the script."""
        host = self.members[member].host
        installer = self.art.installer(TARGET)
        self.copy(member, installer, "/")
        self.sh(
            member,
            "installer --system-install",
            "sh",
            installer.name,
            "--system-install",
            "--non-interactive",
        )
        current = host.path("/opt/ncs/current")
        self.sh(
            member,
            "switch current",
            "sh",
            "-c",
            f"rm -f {current} && ln -s {host.path(f'/opt/ncs/ncs-{TARGET}')} {current}",
        )
        self.sh(member, "rm packages", "sh", "-c", f"rm -rf {host.path('/var/opt/ncs/packages')}/*")
        for pkg in self.art.packages(TARGET):
            self.copy(member, pkg, "/opt/ncs/packages/")
            self.sh(
                member,
                f"ln -s {pkg.name}",
                "ln",
                "-s",
                str(host.path(f"/opt/ncs/packages/{pkg.name}")),
                str(host.path("/var/opt/ncs/packages/")),
            )

    def restart(self, member: int) -> None:
        host = self.members[member].host
        self.sh(
            member,
            "restart-with-package-reload",
            str(host.path("/etc/init.d/ncs")),
            "restart-with-package-reload",
            counted=True,
        )
        dead = self.clients.pop(member, None)  # NSO restarted: its CLI connection is gone
        if dead is not None:
            dead.close()

    def run(self) -> dict[str, float]:
        P, S = 0, 1
        self.cli(P, "high-availability read-only mode true", "")
        window_opened = self.steps[-1]["ended"]
        self.cli(S, "high-availability read-only mode true", "")
        for m in (P, S):
            out = self.sh(
                m,
                "ncs-backup",
                str(self.members[m].host.path("/opt/ncs/current/bin/ncs-backup")),
                counted=True,
            )
            if "created successfully" not in out:
                raise BenchError(
                    f"reference: ncs-backup on {HA_IDS[m]} said {out.strip()!r}, not that the "
                    "backup was created; check that tests/sim/test_upgrade_ha.py passes"
                )
        self.cli(P, "high-availability disable", "disabled")
        self.cli(S, "high-availability be-primary", "ok")
        self.upgrade_node(P)
        self.restart(P)
        writable = self.steps[-1]["ended"]
        self.cli(S, "high-availability disable", "disabled")
        self.cli(P, "high-availability enable", "enabled")
        self.upgrade_node(S)
        self.restart(S)
        self.cli(S, "high-availability enable", "enabled")
        protected = wait_ha(
            self.members[P].host, lambda t: connected_secondaries(t) > 0, "n2 connected to n1"
        )
        for client in self.clients.values():
            client.close()
        return {"opened": window_opened, "writable": writable, "protected": protected}


def reference_upgrade(members: list[Member], art: Artifacts) -> dict[str, Any]:
    probe = Probe([m.host for m in members])
    script = Script(members, art)
    probe.start()
    try:
        time.sleep(1.0)
        began = time.monotonic()
        moments = script.run()
        ended = time.monotonic()
        time.sleep(1.0)
    finally:
        probe.stop()
    inside = [s for s in script.steps if moments["opened"] < s["ended"] <= moments["writable"]]
    timeline, previous = [], moments["opened"]
    for s in inside:
        timeline.append(
            {
                "node": s["node"],
                "name": s["name"],
                "gap_s": s["began"] - previous,
                "wall_s": s["ended"] - s["began"],
                "nso_s": s["ended"] - s["began"],
                "counted": s["counted"],
            }
        )
        previous = s["ended"]
    gap = probe.longest_gap(began, ended)
    acked, span = probe.unprotected()
    return {
        "policy": "reference",
        "unavailable_s": moments["writable"] - moments["opened"],
        "unprotected_s": moments["protected"] - moments["writable"],
        "work_s": sum(t["nso_s"] for t in timeline if t["counted"]),
        "timeline": timeline,
        "probe_gap_s": gap[0],
        "probe_acks": len(probe.acks),
        "probe_inside": probe.acked_between(moments["opened"], moments["writable"]),
        "probe_unprotected_acks": acked,
        "probe_unprotected_s": span,
        "job_s": ended - began,
    }


# ---------------------------------------------------------------------------- main


def measure(
    args: argparse.Namespace, work: Path, cleanup: list[Callable[[], None]]
) -> list[dict[str, Any]]:
    with console.status("building artifacts with nso-sim"):
        art = build_artifacts(work / "artifacts")
    served = serve_repo(
        work, cleanup, "admin", {"NSO_REPO_STORAGE": "local", "NSO_REPO_LOG_LEVEL": "warning"}
    )
    api = Api(served.base, served.token)
    env = clean_env(NSO_REPO_URL=served.base, NSO_REPO_TOKEN=served.token)
    run_checked(
        "nso-repo upload",
        [sys.executable, "-m", "repo_server.cli", "upload", *map(str, art.all())],
        env,
    )
    for vsn in (SOURCE, TARGET):
        release = {
            "nso_version": vsn,
            "installer": art.installer(vsn).name,
            "packages": [p.name for p in art.packages(vsn)],
        }
        api.call("POST", "/api/v1/releases", release)
    console.print(f"nso-repo serve on {served.base}; releases {SOURCE} and {TARGET} published")
    # Loopback addresses of our own: 127.<140..189>.<pid>.<10 * group + member>.
    prefix = f"127.{140 + os.getpid() % 50}.{os.getpid() % 250}"
    results = []
    for i, policy in enumerate(("available", "safe", "reference")):
        with console.status(f"{policy}: a fresh 2-node group on {prefix}.{10 * i + 1}-2"):
            members = make_cluster(work, prefix, 10 * i + 1, art, args, cleanup)
        with console.status(f"{policy}: upgrading {SOURCE} -> {TARGET} under a steady writer"):
            if policy == "reference":
                result = reference_upgrade(members, art)
            else:
                start_agents(api, work, f"bench-{policy}", members, cleanup)
                result = group_upgrade(api, f"bench-{policy}", members, policy)
        for m in members:
            if m.agent is not None:
                m.agent.stop()
            m.host.stop()
        console.print(
            f"{policy}: unavailable {result['unavailable_s']:.2f} s for {result['work_s']:.2f} s "
            f"of NSO work, unprotected {result['unprotected_s']:.2f} s; the writer's longest gap "
            f"{result['probe_gap_s']:.2f} s, {result['probe_acks']} writes acknowledged"
        )
        results.append(result)
    return results


def summarise(
    args: argparse.Namespace, results: list[dict[str, Any]], load: list[float]
) -> dict[str, Any]:
    ours, safe, ref = results

    def ratio(r: dict[str, Any]) -> float:
        if r["work_s"] <= 0:
            raise BenchError(
                f"{r['policy']}: no NSO work measured inside the window (see its table): the "
                "agents reported no nso_seconds; check that they run this tree's agent/"
            )
        return float(r["unavailable_s"] / r["work_s"])

    for r in results:
        table = Table(
            title=f"{r['policy']}: inside the write-unavailable window ({r['unavailable_s']:.2f} s)",
            caption="gap = previous step's end -> this step's start; NSO = nso_seconds (the "
            "reference: the command's own time); * = NSO work the ratio divides by",
        )
        for column in ("node", "step", "gap s", "wall s", "NSO s"):
            table.add_column(column, justify="left" if column in ("node", "step") else "right")
        for t in r["timeline"]:
            table.add_row(
                t["node"],
                t["name"] + (" *" if t["counted"] else ""),
                f"{t['gap_s']:.2f}",
                f"{t['wall_s']:.2f}",
                f"{t['nso_s']:.2f}",
            )
        gaps = sum(t["gap_s"] for t in r["timeline"])
        walls = sum(t["wall_s"] for t in r["timeline"])
        outside = sum(t["wall_s"] for t in r["timeline"] if not t["counted"])
        around = sum(t["wall_s"] - t["nso_s"] for t in r["timeline"] if t["counted"])
        table.add_section()
        table.add_row("", "all steps", f"{gaps:.2f}", f"{walls:.2f}", f"{r['work_s']:.2f}")
        console.print(table)
        console.print(
            f"  beyond the NSO work ({r['unavailable_s'] - r['work_s']:.2f} s): gaps between "
            f"steps {gaps:.2f} s, steps not counted {outside:.2f} s, counted steps beyond "
            f"their NSO time {around:.2f} s"
        )

    figures = {
        "available_unavailable_ratio": round(ratio(ours), 3),
        "reference_unavailable_ratio": round(ratio(ref), 3),
        "safe_unprotected_s": round(safe["unprotected_s"], 3),
        "reference_unprotected_s": round(ref["unprotected_s"], 3),
        "safe_unavailable_ratio": round(ratio(safe), 3),
    }

    def verdict(ok: bool) -> str:
        return "[green]yes[/]" if ok else "[red]NO[/]"

    table = Table(
        title=f"HA group upgrade {SOURCE} -> {TARGET}, 2 nodes (time scale {args.time_scale:g})"
    )
    for column in ("figure", "value", "goal", "met", "cross-check (writer probe)"):
        table.add_column(
            column,
            justify="left" if column in ("figure", "cross-check (writer probe)") else "right",
        )

    def probe_gap(r: dict[str, Any]) -> str:
        text = (
            f"longest gap between acknowledged writes {r['probe_gap_s']:.2f} s (window "
            f"{r['unavailable_s']:.2f} s, NSO work {r['work_s']:.2f} s)"
        )
        if "probe_inside" in r:
            acked, refused = r["probe_inside"]
            text += (
                f"; yet {acked} writes acknowledged inside the window (the HA-disabled primary "
                f"is read-write): no member took writes for {refused:.2f} s of it, "
                f"{refused / r['work_s']:.3f} x the NSO work"
            )
        return text

    def probe_unprotected(r: dict[str, Any]) -> str:
        return f"{r['probe_unprotected_acks']} writes acknowledged with no secondary connected, over {r['probe_unprotected_s']:.2f} s"

    table.add_row(
        "available_unavailable_ratio",
        f"{figures['available_unavailable_ratio']:.3f}",
        f"<= {GOAL_AVAILABLE_RATIO:g}",
        verdict(figures["available_unavailable_ratio"] <= GOAL_AVAILABLE_RATIO),
        probe_gap(ours),
    )
    table.add_row(
        "reference_unavailable_ratio",
        f"{figures['reference_unavailable_ratio']:.3f}",
        "",
        "",
        probe_gap(ref),
    )
    table.add_row(
        "safe_unprotected_s",
        f"{figures['safe_unprotected_s']:.3f}",
        f"{GOAL_SAFE_UNPROTECTED_S:g}",
        verdict(
            figures["safe_unprotected_s"] <= GOAL_SAFE_UNPROTECTED_S
            and safe["probe_unprotected_acks"] == 0
        ),
        probe_unprotected(safe),
    )
    table.add_row(
        "reference_unprotected_s",
        f"{figures['reference_unprotected_s']:.3f}",
        "",
        "",
        probe_unprotected(ref),
    )
    table.add_row(
        "safe_unavailable_ratio",
        f"{figures['safe_unavailable_ratio']:.3f}",
        "",
        "[dim]info[/]",
        probe_gap(safe),
    )
    console.print(table)
    console.print(
        f"available: job {ours['job_s']:.1f} s, unprotected {ours['unprotected_s']:.2f} s; safe: job "
        f"{safe['job_s']:.1f} s; reference script {ref['job_s']:.1f} s; load average "
        f"{load[0]:.2f} -> {load[-1]:.2f} on {os.cpu_count()} CPUs"
    )
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.15,
        help="the simulated hosts' time scale: a nominal 30 s install takes 4.5 s (default 0.15)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=100,
        help="devices and service instances per package in each CDB (default 100)",
    )
    parser.add_argument("--tmp-dir", help="where to make the temporary folder")
    args = parser.parse_args(argv)
    if not 0 < args.time_scale <= 1:
        parser.error("--time-scale must be in (0, 1]")

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        results = measure(args, work, cleanup)
        load.append(loadavg())
        return summarise(args, results, load)

    return run_benchmark(console, "nso-bench-ha-", args.tmp_dir, body)


if __name__ == "__main__":
    sys.exit(main())
