"""Orchestration overhead of a single-node NSO 6.1 -> 6.2 upgrade, server + agent + sim host.

Run from the repository root:

    python bench/upgrade_overhead.py               # 3 upgrades, median
    python bench/upgrade_overhead.py --repeat 1    # quick try

Overhead = the job's wall time (created_at -> finished_at, from the API) minus the time the
simulated NSO spent in its own commands, per step of the plan (goal < 1 s per step). NSO's
time is taken two ways, in the same run:

* what the agent reports per step as `nso_seconds` (docs/agent-protocol.md);
* a baseline that does not trust the agent: a second, identical host is upgraded by hand
  here, running the same NSO commands the agent runs for each step (installer, ncs-backup,
  init stop, ncs --cdb-compact, start-with-package-reload, the `ncs --status`/`--version`
  checks and the CLI commands over SSH), each timed with perf_counter.

Everything is started as real processes: artifacts from `python -m nso_sim make-installer`
/`make-package`, `nso-repo serve` on a free port with a temporary data dir, a simulated host
on its own 127.x address per upgrade (fresh each time), `nso-agent run` with a 1 s poll
wait. It stops what it started and removes its temporary files on exit, on error and on
Ctrl-C. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import paramiko
from benchkit import (
    BenchError,
    free_port,
    loadavg,
    run_benchmark,
    start,
    tail,
    wait_http,
)
from rich.console import Console
from rich.table import Table

GOAL_PER_STEP_S = 1.0
SOURCE, TARGET = "6.1", "6.2"
REPO = Path(__file__).resolve().parents[1]
# The packages every host runs: a NED and a service package, rebuilt for each release.
PACKAGES = [("router-nc", "1.0.2", ["--ned-id", "router-nc-1.0"]), ("l3vpn", "1.0", [])]
# The steps of a single-node major upgrade (docs/upgrades.md), as the baseline runs them.
EXPECTED_STEPS = [
    "prestage",
    "backup",
    "stop",
    "restore_point",
    "compact",
    "switch_current",
    "relink_packages",
    "start",
    "verify",
]
CATEGORIES = ("shell", "status", "cli")

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


# ---------------------------------------------------------------------------- helpers


def parse_time(text: str) -> datetime:
    """An API timestamp (ISO 8601, naive = UTC)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def seconds_between(a: Optional[str], b: Optional[str]) -> float:
    if not a or not b:
        return 0.0
    return (parse_time(b) - parse_time(a)).total_seconds()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without NSO_REPO_*/NCS_* settings, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NSO_REPO_", "NCS_", "NSO_SIM_"))
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_checked(
    what: str, cmd: list[str], env: Optional[dict[str, str]] = None, timeout: float = 300
) -> str:
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env or clean_env(), timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(
            f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n"
            f"{(done.stdout + done.stderr).strip()[-2000:]}"
        )
    return done.stdout


def sim(*args: str) -> str:
    return run_checked(f"nso-sim {args[0]}", [sys.executable, "-m", "nso_sim", *args])


# ---------------------------------------------------------------------------- processes


@dataclass
class Api:
    """JSON over HTTP to the repository server with an admin token."""

    base: str
    token: str

    def call(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise BenchError(
                f"{method} {path}: HTTP {exc.code} {exc.read().decode(errors='replace')[:2000]}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise BenchError(f"{method} {path}: {exc}") from None
        return json.loads(text) if text else None


# ---------------------------------------------------------------------------- hosts


@dataclass
class Host:
    """A simulated NSO host made with `nso-sim host create`, started."""

    root: Path
    address: str
    cli_port: int
    ipc_port: int

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    @property
    def ncs(self) -> Path:
        return self.path("/opt/ncs/current/bin/ncs")

    def stop(self) -> None:
        """`nso-sim host stop`, then SIGKILL to the daemon this host's pid file names."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [sys.executable, "-m", "nso_sim", "host", "stop", "--root", str(self.root)],
                capture_output=True,
                env=clean_env(),
                timeout=60,
                check=False,
            )
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(self.path("/.nso-sim/ncs.pid").read_text()), signal.SIGKILL)


@dataclass
class Artifacts:
    dir: Path
    host_key: Path

    def installer(self, vsn: str) -> Path:
        return self.dir / f"nso-{vsn}.linux.x86_64.installer.bin"

    def packages(self, vsn: str) -> list[Path]:
        return [self.dir / f"ncs-{vsn}-{name}-{version}.tar.gz" for name, version, _ in PACKAGES]

    def all(self) -> list[Path]:
        return [p for v in (SOURCE, TARGET) for p in [self.installer(v), *self.packages(v)]]


def build_artifacts(folder: Path) -> Artifacts:
    folder.mkdir()
    for vsn in (SOURCE, TARGET):
        sim("make-installer", vsn, "--out", str(folder))
        for name, version, extra in PACKAGES:
            sim("make-package", name, version, "--nso", vsn, *extra, "--out", str(folder))
    key = folder / "ssh_host_rsa_key"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(key))
    made = Artifacts(folder, key)
    missing = [p.name for p in made.all() if not p.exists()]
    if missing:
        raise BenchError(f"nso-sim did not make {', '.join(missing)}")
    return made


def create_host(root: Path, address: str, art: Artifacts, time_scale: float) -> Host:
    host = Host(root, address, free_port(address), free_port(address))
    args = ["host", "create", "--root", str(root), "--version", SOURCE, "--address", address]
    args += ["--cli-port", str(host.cli_port), "--ipc-port", str(host.ipc_port)]
    args += ["--ha-port", str(free_port(address)), "--time-scale", f"{time_scale:g}"]
    args += ["--installer", str(art.installer(SOURCE)), "--ssh-host-key", str(art.host_key)]
    for pkg in art.packages(SOURCE):
        args += ["--package", str(pkg)]
    sim(*args, "--start")
    return host


# ---------------------------------------------------------------------------- baseline


@dataclass
class HandRun:
    """The upgrade's NSO commands typed by hand on a host, each timed (perf_counter)."""

    host: Host
    art: Artifacts
    # step -> category -> seconds; category: shell (what the agent counts as nso_seconds),
    # status (`ncs --status`/`--version`), cli (SSH connect + CLI commands).
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    step: str = ""
    ssh: Optional[paramiko.SSHClient] = None

    def _add(self, category: str, seconds: float) -> None:
        per = self.seconds.setdefault(self.step, dict.fromkeys(CATEGORIES, 0.0))
        per[category] += seconds
        self.calls[category] = self.calls.get(category, 0) + 1

    def sh(self, category: str, *cmd: str | Path, timeout: float = 600) -> str:
        began = time.perf_counter()
        done = subprocess.run(
            [str(c) for c in cmd],
            cwd=self.host.root,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")},
            timeout=timeout,
            check=False,
        )
        self._add(category, time.perf_counter() - began)
        if category == "shell" and done.returncode != 0:
            raise BenchError(f"baseline: {' '.join(map(str, cmd))} failed: {done.stderr.strip()}")
        return done.stdout

    def status(self) -> str:
        """`started`, a start-up phase, or `stopped` (no answer), as the agent reads it."""
        out = self.sh("status", self.host.ncs, "--status")
        found = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("status:")]
        return found[0] if found else "stopped"

    def wait_status(self, wanted: str, timeout: float = 300) -> None:
        # Back to back, no sleep: the wait ends within one `ncs --status` of NSO being there.
        deadline = time.monotonic() + timeout
        while self.status() != wanted:
            if time.monotonic() > deadline:
                raise BenchError(f"baseline: NSO did not become {wanted} in {timeout:.0f}s")

    def cli(self, command: str) -> str:
        began = time.perf_counter()
        if self.ssh is None:  # the agent opens one SSH connection per step, so do we
            self.ssh = paramiko.SSHClient()
            self.ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            self.ssh.connect(
                self.host.address,
                self.host.cli_port,
                username="admin",
                password="admin",
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
        _, out, _ = self.ssh.exec_command(command, timeout=120)
        text = out.read().decode(errors="replace")
        out.channel.recv_exit_status()
        self._add("cli", time.perf_counter() - began)
        return text

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None

    def begin(self, step: str) -> None:
        self.close()
        self.step = step
        self.seconds[step] = dict.fromkeys(CATEGORIES, 0.0)

    def run(self) -> dict[str, dict[str, float]]:
        h = self.host
        bin_dir = h.path("/opt/ncs/current/bin")
        self.begin("prestage")
        store = h.path("/opt/ncs/packages")
        for pkg in self.art.packages(TARGET):  # the agent downloads them: not NSO's time
            shutil.copyfile(pkg, store / pkg.name)
        installer = h.root / self.art.installer(TARGET).name
        shutil.copyfile(self.art.installer(TARGET), installer)
        self.sh("shell", "sh", installer, "--system-install", "--non-interactive")
        installer.unlink()

        self.begin("backup")
        out = self.sh("shell", bin_dir / "ncs-backup")
        if "created successfully" not in out:
            raise BenchError(f"baseline: ncs-backup said {out.strip()!r}")

        self.begin("stop")
        self.status()
        self.cli("show running-config | nomore")
        self.status()
        self.sh("shell", h.path("/etc/init.d/ncs"), "stop")
        self.wait_status("stopped")

        # The restore point is the agent's own copy of the stopped data: no NSO command but
        # the status check; its copy and read-back count as orchestration overhead.
        self.begin("restore_point")
        self.status()

        self.begin("compact")
        self.status()
        self.sh("shell", bin_dir / "ncs", "--cdb-compact", h.path("/var/opt/ncs/cdb"))

        self.begin("switch_current")
        tmp = h.path("/opt/ncs/current.tmp")
        os.symlink(f"ncs-{TARGET}", tmp)
        os.replace(tmp, h.path("/opt/ncs/current"))
        self.sh("status", h.ncs, "--version")

        self.begin("relink_packages")
        load = h.path("/var/opt/ncs/packages")
        for link in load.iterdir():
            link.unlink()
        for pkg in self.art.packages(TARGET):
            os.symlink(store / pkg.name, load / pkg.name)

        self.begin("start")
        self.status()
        self.sh("shell", h.path("/etc/init.d/ncs"), "start-with-package-reload")
        self.wait_status("started")

        self.begin("verify")
        self.status()
        version = self.sh("status", h.ncs, "--version").strip()
        running = self.cli("show ncs-state version")
        for name, _, _ in PACKAGES:
            oper = self.cli(f"show packages package {name} oper-status")
            self.cli(f"show packages package {name} package-version")
            if "up" not in oper:
                raise BenchError(f"baseline: package {name} is not up: {oper.strip()}")
        self.cli("show packages | nomore")
        self.cli("show running-config | nomore")
        self.close()
        if not version.startswith(TARGET) or TARGET not in running:
            raise BenchError(f"baseline: NSO runs {version!r} / {running.strip()!r}")
        return self.seconds


def heartbeat_cost(host: Host, repeat: int = 3) -> float:
    """For information: seconds the agent's inventory collection takes on a host (it runs
    at every heartbeat, which the agent sends after every step)."""
    from agent import inventory
    from agent.config import Config

    cfg = Config(
        root=str(host.root), cli_host=host.address, cli_port=host.cli_port, cli_password="admin"
    )
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        inventory.collect(cfg)
        times.append(time.perf_counter() - began)
    return median(times)


# ---------------------------------------------------------------------------- one upgrade


def agent_upgrade(
    api: Api, work: Path, n: int, host: Host, cleanup: list[Callable[[], None]], poll: int
) -> dict[str, Any]:
    """Enroll an agent for `host`, run it, upgrade through the API; the finished job."""
    name = f"bench-{n}"
    added = api.call("POST", "/api/v1/nodes", {"name": name})
    conf = work / f"agent-{n}.conf"
    conf.write_text(
        f"[host]\nroot = {host.root}\n[cli]\nhost = {host.address}\nport = {host.cli_port}\n"
        f"user = admin\npassword = admin\n[agent]\npoll_wait = {poll}\nheartbeat_interval = 60\n"
    )
    agent_cmd = [sys.executable, "-m", "agent", "--config", str(conf)]
    run_checked(
        "nso-agent enroll",
        [*agent_cmd, "enroll", "--server", api.base, "--token", added["enrollment_token"]],
    )
    agent = start(f"nso-agent ({name})", [*agent_cmd, "run"], work / f"agent-{n}.log", clean_env())
    cleanup.append(agent.stop)
    deadline = time.monotonic() + 60
    while True:  # the agent's first heartbeat: the server knows what the node runs
        node = api.call("GET", f"/api/v1/nodes/{name}")
        if (node.get("inventory") or {}).get("running_version") == SOURCE:
            break
        if not agent.alive() or time.monotonic() > deadline:
            raise BenchError(f"nso-agent sent no inventory; its log ends with:\n{tail(agent.log)}")
        time.sleep(0.2)

    began = time.perf_counter()
    job = api.call("POST", f"/api/v1/nodes/{name}/upgrade", {"to": TARGET})
    while job["state"] not in ("succeeded", "failed"):
        if not agent.alive():
            raise BenchError(f"nso-agent died; its log ends with:\n{tail(agent.log)}")
        if time.perf_counter() - began > 900:
            raise BenchError(f"job {job['id']} did not finish in 900 s")
        time.sleep(0.05)
        job = api.call("GET", f"/api/v1/jobs/{job['id']}")
    job["polled_s"] = time.perf_counter() - began
    agent.stop()
    if job["state"] != "succeeded":
        failed = [s for s in job["steps"] if s["state"] == "failed"]
        raise BenchError(
            f"job {job['id']} {job['state']} ({job.get('outcome')}): {job.get('error')}\n"
            + "\n".join(f"{s['name']}: {s['message']}\n{s['log_tail'] or ''}" for s in failed)
        )
    return job


def analyse(job: dict[str, Any], hand: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per-step and total figures of one upgrade."""
    steps = sorted(job["steps"], key=lambda s: s["seq"])
    per_step: dict[str, dict[str, float]] = {}
    previous_end = job["created_at"]
    reported = all(s.get("nso_seconds") is not None for s in steps)
    for s in steps:
        wall = seconds_between(s["started_at"], s["finished_at"])
        nso = float(s.get("nso_seconds") or 0.0)
        base = hand.get(s["name"], dict.fromkeys(CATEGORIES, 0.0))
        per_step[s["name"]] = {
            "gap_before_s": seconds_between(previous_end, s["started_at"]),
            "wall_s": wall,
            "agent_nso_s": nso,
            "hand_nso_s": sum(base.values()),
            "hand_shell_s": base["shell"],
            "hand_status_s": base["status"],
            "hand_cli_s": base["cli"],
        }
        previous_end = s["finished_at"]
    total = seconds_between(job["created_at"], job["finished_at"])
    agent_nso = sum(p["agent_nso_s"] for p in per_step.values())
    hand_nso = sum(sum(c.values()) for c in hand.values())
    return {
        "steps": [s["name"] for s in steps],
        "total_s": total,
        "polled_s": job["polled_s"],
        "agent_nso_s": agent_nso,
        "hand_nso_s": hand_nso,
        "hand_by_category": {c: sum(v[c] for v in hand.values()) for c in CATEGORIES},
        "gaps_s": sum(p["gap_before_s"] for p in per_step.values()),
        "tail_s": seconds_between(previous_end, job["finished_at"]),
        "nso_seconds_reported": reported,
        "per_step": per_step,
    }


# ---------------------------------------------------------------------------- main


def measure(args: argparse.Namespace, work: Path, cleanup: list[Callable[[], None]]) -> dict:
    with console.status("building artifacts with nso-sim"):
        art = build_artifacts(work / "artifacts")
    console.print(f"artifacts: {', '.join(p.name for p in art.all())}")

    data = work / "server"
    port = free_port()
    env = clean_env(NSO_REPO_STORAGE="local", NSO_REPO_LOG_LEVEL="warning")
    cli = [sys.executable, "-m", "repo_server.cli"]
    serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
    server = start("nso-repo serve", serve, work / "server.log", env)
    cleanup.append(server.stop)
    base = f"http://127.0.0.1:{port}"
    with console.status("starting nso-repo serve"):
        wait_http(server, f"{base}/api/v1/health")
    token = run_checked(
        "nso-repo token create",
        [*cli, "token", "create", "--role", "admin", "--name", "bench", "--data-dir", str(data)],
        env,
    ).split()[-1]
    api = Api(base, token)
    upload_env = dict(env, NSO_REPO_URL=base, NSO_REPO_TOKEN=token)
    run_checked("nso-repo upload", [*cli, "upload", *map(str, art.all())], upload_env)
    for vsn in (SOURCE, TARGET):
        api.call(
            "POST",
            "/api/v1/releases",
            {
                "nso_version": vsn,
                "installer": art.installer(vsn).name,
                "packages": [p.name for p in art.packages(vsn)],
            },
        )
    console.print(f"nso-repo serve on {base}; releases {SOURCE} and {TARGET} defined")

    # One loopback /24 of our own: 127.<77..>.<pid>.<n>.
    prefix = f"127.{77 + os.getpid() % 50}.{os.getpid() % 250}"
    runs: list[dict[str, Any]] = []
    heartbeat: list[float] = []
    for i in range(1, args.repeat + 1):
        host = create_host(work / f"host-{i}a", f"{prefix}.{2 * i}", art, args.time_scale)
        cleanup.append(host.stop)
        with console.status(f"run {i}/{args.repeat}: agent upgrade on {host.address}"):
            job = agent_upgrade(api, work, i, host, cleanup, args.poll_wait)
        host.stop()
        twin = create_host(work / f"host-{i}b", f"{prefix}.{2 * i + 1}", art, args.time_scale)
        cleanup.append(twin.stop)
        with console.status(f"run {i}/{args.repeat}: the same commands by hand on {twin.address}"):
            hand = HandRun(twin, art)
            try:
                seconds = hand.run()
            finally:
                hand.close()
            if i == 1:
                heartbeat.append(heartbeat_cost(twin))
        twin.stop()
        r = analyse(job, seconds)
        r["hand_calls"] = hand.calls
        runs.append(r)
        console.print(
            f"run {i}: job {job['id']} {job['state']} in {r['total_s']:.2f} s "
            f"(polled {r['polled_s']:.2f} s), {len(r['steps'])} steps; NSO: agent says "
            f"{r['agent_nso_s']:.2f} s, by hand {r['hand_nso_s']:.2f} s"
        )
        for folder in (host.root, twin.root):
            shutil.rmtree(folder, ignore_errors=True)
    return {"runs": runs, "heartbeat_s": median(heartbeat), "artifacts": art}


def summarise(args: argparse.Namespace, m: dict[str, Any], load: list[float]) -> dict[str, Any]:
    runs = m["runs"]
    names = runs[0]["steps"]
    if any(r["steps"] != names for r in runs):
        raise BenchError(f"the plans differ between runs: {[r['steps'] for r in runs]}")
    n_steps = len(names)
    reported = all(r["nso_seconds_reported"] for r in runs)

    def med(key: str) -> float:
        return median([r[key] for r in runs])

    total = med("total_s")
    agent_nso = med("agent_nso_s")
    hand_nso = med("hand_nso_s")
    overhead_agent = median([r["total_s"] - r["agent_nso_s"] for r in runs])
    overhead_hand = median([r["total_s"] - r["hand_nso_s"] for r in runs])
    per_step = {
        name: {
            key: round(median([r["per_step"][name][key] for r in runs]), 3)
            for key in runs[0]["per_step"][name]
        }
        for name in names
    }
    for name, figures in per_step.items():
        figures["overhead_s"] = round(
            median(
                [r["per_step"][name]["wall_s"] - r["per_step"][name]["agent_nso_s"] for r in runs]
            ),
            3,
        )
    ok_agent = overhead_agent / n_steps < GOAL_PER_STEP_S
    ok_hand = overhead_hand / n_steps < GOAL_PER_STEP_S

    table = Table(
        title=(
            f"single-node upgrade {SOURCE} -> {TARGET}: orchestration overhead, "
            f"median of {len(runs)} runs (time scale {args.time_scale:g}, poll wait "
            f"{args.poll_wait} s)"
        ),
        caption=(
            "gap = from the previous step's final report (the job's creation for the first) "
            "to this step's dispatch; wall = dispatch -> final report; agent NSO = the step's "
            "nso_seconds; by hand = the same NSO commands on a twin host (shell + ncs "
            "--status/--version + CLI over SSH); overhead = wall - agent NSO. Medians per "
            "cell, so columns need not add up exactly."
        ),
    )
    for column in ("step", "gap", "wall", "agent NSO", "by hand", "shell/status/cli", "overhead"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for name in names:
        p = per_step[name]
        table.add_row(
            name,
            f"{p['gap_before_s']:.2f}",
            f"{p['wall_s']:.2f}",
            f"{p['agent_nso_s']:.2f}",
            f"{p['hand_nso_s']:.2f}",
            f"{p['hand_shell_s']:.2f}/{p['hand_status_s']:.2f}/{p['hand_cli_s']:.2f}",
            f"{p['overhead_s']:.2f}",
        )
    table.add_section()
    cat = {c: median([r["hand_by_category"][c] for r in runs]) for c in CATEGORIES}
    table.add_row(
        "[bold]job total[/]",
        f"{med('gaps_s'):.2f}",
        f"{total:.2f}",
        f"{agent_nso:.2f}",
        f"{hand_nso:.2f}",
        f"{cat['shell']:.2f}/{cat['status']:.2f}/{cat['cli']:.2f}",
        "",
    )

    def verdict(ok: bool) -> str:
        return "[green]pass[/]" if ok else "[red]MISS[/]"

    summary = Table(title="overhead = job wall time (created_at -> finished_at) - NSO time")
    for column in ("NSO time from", "NSO s", "overhead s", "per step s", "goal", "result"):
        summary.add_column(column, justify="left" if column == "NSO time from" else "right")
    summary.add_row(
        "agent's nso_seconds",
        f"{agent_nso:.2f}",
        f"{overhead_agent:.2f}",
        f"{overhead_agent / n_steps:.2f}",
        f"< {GOAL_PER_STEP_S:g}",
        verdict(ok_agent),
    )
    summary.add_row(
        "by hand on a twin host",
        f"{hand_nso:.2f}",
        f"{overhead_hand:.2f}",
        f"{overhead_hand / n_steps:.2f}",
        f"< {GOAL_PER_STEP_S:g}",
        verdict(ok_hand),
    )
    summary.add_row(
        "[dim]by hand, shell commands only[/]",
        f"[dim]{cat['shell']:.2f}[/]",
        f"[dim]{total - cat['shell']:.2f}[/]",
        f"[dim]{(total - cat['shell']) / n_steps:.2f}[/]",
        "",
        "[dim]info[/]",
    )
    console.print(table)
    console.print(summary)
    console.print(
        f"job wall time: API {total:.2f} s, polled by this script {med('polled_s'):.2f} s; "
        f"dispatch gaps {med('gaps_s'):.2f} s in all; one heartbeat's inventory collection "
        f"(sent when a job ends and every heartbeat_interval, not between steps) {m['heartbeat_s']:.2f} s"
    )
    if not reported:
        console.print("[yellow]note:[/] the agent did not report nso_seconds for every step")
    return {
        "benchmark": "upgrade_overhead",
        "upgrade": f"{SOURCE}->{TARGET}",
        "runs": len(runs),
        "statistic": "median",
        "steps": n_steps,
        "step_names": names,
        "total_s": round(total, 3),
        "polled_total_s": round(med("polled_s"), 3),
        "nso_s": round(agent_nso, 3),
        "nso_source": "agent nso_seconds" if reported else "agent nso_seconds (incomplete)",
        "overhead_s": round(overhead_agent, 3),
        "overhead_per_step_s": round(overhead_agent / n_steps, 3),
        "baseline_nso_s": round(hand_nso, 3),
        "baseline_nso_by_category_s": {c: round(v, 3) for c, v in cat.items()},
        "baseline_overhead_s": round(overhead_hand, 3),
        "baseline_overhead_per_step_s": round(overhead_hand / n_steps, 3),
        "dispatch_gaps_s": round(med("gaps_s"), 3),
        "heartbeat_inventory_s": round(m["heartbeat_s"], 3),
        "goal_per_step_s": GOAL_PER_STEP_S,
        "per_step": per_step,
        "runs_total_s": [round(r["total_s"], 3) for r in runs],
        "runs_agent_nso_s": [round(r["agent_nso_s"], 3) for r in runs],
        "runs_baseline_nso_s": [round(r["hand_nso_s"], 3) for r in runs],
        "baseline_calls": runs[0]["hand_calls"],
        "nso_seconds_reported": reported,
        "time_scale": args.time_scale,
        "poll_wait_s": args.poll_wait,
        "loadavg_start_end": load,
        "python": sys.version.split()[0],
        "pass": ok_agent and ok_hand,
        "pass_by_nso_source": {"agent": ok_agent, "baseline": ok_hand},
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="upgrades to run (default 3)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.1,
        help="the simulated hosts' time scale: a nominal 17 s start takes 1.7 s (default 0.1)",
    )
    parser.add_argument(
        "--poll-wait", type=int, default=1, help="the agent's long-poll wait in s (default 1)"
    )
    parser.add_argument("--tmp-dir", help="where to make the temporary folder")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0 <= args.poll_wait <= 60:
        parser.error("--poll-wait must be 0..60")

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        measured = measure(args, work, cleanup)
        load.append(loadavg())
        return summarise(args, measured, load)

    return run_benchmark(console, "nso-bench-upgrade-", args.tmp_dir, body)


if __name__ == "__main__":
    sys.exit(main())
