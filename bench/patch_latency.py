"""From an operator's emergency-patch rollout to every agent's report, with 1,000 agents.

Run from the repository root:

    python bench/patch_latency.py                                # 1,000 agents, both shapes
    python bench/patch_latency.py --agents 200 --shape embedded  # quick try

Two server shapes, one after the other: `nso-repo serve` as it is deployed for a fleet (its
default on PostgreSQL, a gunicorn worker process per CPU, 2 to 4: 2 on this machine; on a
throwaway PostgreSQL 15 cluster with its durable defaults: fsync on), and the embedded default (one worker, SQLite, local
disk). AGENTS light agent clients (tests/support/light_agents.py: asyncio, one keep-alive
connection each, each from a loopback address of its own as agents on their own hosts)
enroll, report an inventory on the patch's release, and long-poll
`GET /api/v1/agent/next?wait=30` as `nso-agent` does. Each step they get is run the agent's
way, in a throwaway folder instead of an NSO host: download the bundle, check its sha256,
write each `.beam` file atomically (temporary file, rename), report the result. Their
folders are in memory (/dev/shm, unless --agents-dir says otherwise): on a fleet each agent
writes on its own host's disk with its own CPU, while here the thousand share the server's
2 CPUs, and creating their 1,000 folders and 2,000 files on this machine's ext4 took from
0.2 to 2.1 s of CPU, a different figure each run (in memory: 0.06-0.08 s). The server's
data and PostgreSQL stay on disk.

Measured in the same run, for each shape:

* baseline: a rollout to one node while every other agent waits (three times; the median);
* the fleet: `POST /api/v1/patch-rollouts {"all_affected": true}` to every agent, twice
  (the second apply finds the files in place: the server's path is the same).

For each: how long the trigger's own answer took, and the time from sending the trigger to
each agent's step and to its report being answered: p50, p99, max, and p99 against the
baseline; the CPU the server, the database and the agents used per agent; and, while every
agent waits, `/health`'s latency, the server's threads and the connections to PostgreSQL
(one LISTEN per worker process, whatever the number of agents). Goal: p99 under 2 s with
1,000 agents. The last line printed is one JSON object with the figures and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchkit import (  # noqa: E402
    BenchError,
    cpu_seconds,
    loadavg,
    process_tree,
    run_benchmark,
    serve_repo,
    upload,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from nso_sim import beam  # noqa: E402
from repo_server.gunicorn_settings import default_workers  # noqa: E402
from tests.support.abuse import health_seconds  # noqa: E402
from tests.support.light_agents import (  # noqa: E402
    LightAgent,
    enroll_many,
    percentile,
    serve_steps,
)
from tests.support.postgres import connections, start_postgres, stop_postgres  # noqa: E402
from tests.upgrades.builders import healthy_inventory  # noqa: E402

NSO_VERSION = "6.2.3"
PATCH_ID = "CSCbench01"
MODULES = ["ncs_cli_bench", "ncs_conf_bench"]
GOAL_P99_S = 2.0
# As `nso-repo serve` runs on PostgreSQL when not told: one worker per CPU (2 to 4).
WORKERS = default_workers("postgresql")
WAIT = 30
AGENTS_DIR = "/dev/shm"


def make_bundle(folder: Path) -> Path:
    (bundle,) = beam.make_patch(NSO_VERSION, PATCH_ID, MODULES, folder)
    return bundle


def _api(agent: LightAgent) -> Callable[..., Any]:
    async def call(method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        answer = await agent.request(method, path, body)
        if answer.status != expect:
            raise BenchError(f"{method} {path} answered {answer.status}: {answer.body[:400]!r}")
        return answer.json() if answer.body else None

    return call


def apply_in(root: Path) -> Any:
    """The step handler: write the bundle's .beam files into the agent's own folder."""

    async def handler(agent: LightAgent, step: dict[str, Any], blobs: dict[str, bytes]) -> Any:
        folder = root / agent.name
        folder.mkdir(exist_ok=True)
        modules, changed = [], False
        for data in blobs.values():
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                for member in tar.getmembers():
                    if not (member.isfile() and member.name.endswith(".beam")):
                        continue
                    body = tar.extractfile(member)
                    content = body.read() if body else b""
                    target = folder / Path(member.name).name
                    modules.append(target.stem)
                    if target.exists() and target.read_bytes() == content:
                        continue
                    temporary = target.with_suffix(".tmp")
                    temporary.write_bytes(content)
                    os.replace(temporary, target)
                    changed = True
        return {"modules": sorted(modules), "changed": changed}

    return handler


def threads_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(list(Path(f"/proc/{pid}/task").iterdir()))
    return total


async def fleet_run(
    args: argparse.Namespace,
    served: Any,
    root: Path,
    database_pid: Optional[int],
    pg_url: Optional[str],
) -> dict[str, Any]:
    admin = LightAgent(served.base, served.token, "admin")
    api = _api(admin)
    bundle = make_bundle(root)
    await upload(served.base, served.token, bundle)
    names = [f"edge-{i:04d}" for i in range(args.agents)]
    agents = await enroll_many(served.base, served.token, names)
    inventory = healthy_inventory(NSO_VERSION)
    gate = asyncio.Semaphore(50)

    async def beat(agent: LightAgent) -> None:
        async with gate:
            answer = await agent.request(
                "POST", "/api/v1/agent/heartbeat", {"inventory": inventory}
            )
            if answer.status != 200:
                raise BenchError(f"heartbeat of {agent.name} answered {answer.status}")

    await asyncio.gather(*(beat(a) for a in agents))
    stop = asyncio.Event()
    trigger_at = [0.0]
    handler = apply_in(root)
    runners = [
        asyncio.ensure_future(serve_steps(a, handler, stop, lambda: trigger_at[0], WAIT))
        for a in agents
    ]
    await asyncio.sleep(3)
    # Every agent has asked and is waiting once the server has nothing left to do: measure
    # then, not while the first polls are still being answered.
    await asyncio.to_thread(settled, process_tree(served.started.proc.pid))
    waiting: dict[str, Any] = {
        "health_s": max(
            [await asyncio.to_thread(health_seconds, served.base, 30) for _ in range(5)]
        ),
        "server_threads": threads_of(process_tree(served.started.proc.pid)),
    }
    if pg_url:
        waiting["pg_connections"] = await asyncio.to_thread(pg_connections, pg_url)

    async def rollout(body: dict[str, Any], expected: int) -> dict[str, Any]:
        for agent in agents:
            agent.done.clear()
        server = process_tree(served.started.proc.pid)
        database = process_tree(database_pid) if database_pid else []
        cpu = (cpu_seconds(server), cpu_seconds(database), time.process_time())
        trigger_at[0] = time.monotonic()
        created = await api("POST", "/api/v1/patch-rollouts", body, expect=201)
        answered = time.monotonic() - trigger_at[0]
        deadline = time.monotonic() + 120
        while sum(len(a.done) for a in agents) < expected:
            if time.monotonic() > deadline:
                late = sum(len(a.done) for a in agents)
                raise BenchError(f"only {late} of {expected} agents reported within 120 s")
            await asyncio.sleep(0.05)
        used = (cpu_seconds(server), cpu_seconds(database), time.process_time())
        cpu_ms = [round(1000 * (after - before) / expected, 2) for before, after in zip(cpu, used)]
        latencies = [reported for a in agents for *_, reported in a.done]
        arrivals = [arrived for a in agents for _, arrived, _, _ in a.done]
        fetches = [fetched for a in agents for _, _, fetched, _ in a.done]
        await asyncio.sleep(1)  # the agents are back to waiting
        return {
            "id": created.get("id"),
            "trigger_s": answered,
            "latencies": latencies,
            "arrivals": arrivals,
            "fetches": fetches,
            "cpu_ms_per_agent": dict(zip(("server", "postgres", "agents"), cpu_ms)),
        }

    baselines = [await rollout({"patch": bundle.name, "nodes": [names[0]]}, 1) for _ in range(3)]
    fleets = [await rollout({"patch": bundle.name, "all_affected": True}, len(agents))]
    fleets.append(await rollout({"patch": bundle.name, "all_affected": True}, len(agents)))
    stop.set()
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    await asyncio.gather(*(a.close() for a in [*agents, admin]))
    return {"baselines": baselines, "fleets": fleets, "waiting": waiting}


def settled(pids: list[int], within: float = 30.0) -> None:
    """Wait (at most ``within`` seconds) until the processes use under 5% of a CPU."""
    deadline = time.monotonic() + within
    before = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pids)
        if now - before < 0.025:
            return
        before = now


def pg_connections(url: str) -> dict[str, int]:
    rows = connections(url)
    return {
        "total": len(rows),
        "listening": sum(query.startswith("LISTEN") for _, query in rows),
        "idle_in_transaction": sum(state.startswith("idle in transaction") for state, _ in rows),
    }


def figures(run: dict[str, Any]) -> dict[str, float]:
    values = run["latencies"]
    return {
        "trigger_s": round(run["trigger_s"], 3),
        "p50_s": round(percentile(values, 0.5), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
        "step_p50_s": round(percentile(run["arrivals"], 0.5), 3),
        "step_p99_s": round(percentile(run["arrivals"], 0.99), 3),
        "fetched_p99_s": round(percentile(run["fetches"], 0.99), 3),
        **{f"cpu_ms_{k}": v for k, v in run["cpu_ms_per_agent"].items()},
    }


SHAPES = {
    "postgresql": f"nso-repo serve, {WORKERS} workers, PostgreSQL 15 (durable defaults)",
    "embedded": "nso-repo serve, the embedded default: 1 worker, SQLite, local disk",
}


def shape_summary(run: dict[str, Any]) -> dict[str, Any]:
    base = statistics.median(figures(b)["p50_s"] for b in run["baselines"])
    worst = max((figures(f) for f in run["fleets"]), key=lambda f: f["p99_s"])
    return {
        **{k: worst[k] for k in ("p50_s", "p99_s", "max_s", "trigger_s")},
        "baseline_one_node_s": base,
        "p99_baseline_ratio": round(worst["p99_s"] / base, 2),
        "fleet_runs": [figures(f) for f in run["fleets"]],
        "while_waiting": run["waiting"],
    }


def print_shape(console: Console, shape: str, agents: int, run: dict[str, Any]) -> None:
    base = statistics.median(figures(b)["p50_s"] for b in run["baselines"])
    table = Table(title=f"{SHAPES[shape]}: seconds from the trigger to each agent's report")
    columns = ("run", "agents", "trigger", "step p50", "p50", "p99", "max", "p99/base")
    for column in (*columns, "CPU ms/agent srv+db+agt"):
        table.add_column(column, justify="right")
    rows = [(f"one node #{i + 1}", 1, figures(b)) for i, b in enumerate(run["baselines"])]
    rows += [(f"fleet #{i + 1}", agents, figures(f)) for i, f in enumerate(run["fleets"])]
    for name, count, fig in rows:
        table.add_row(
            name,
            str(count),
            *(f"{fig[k]:.2f}" for k in ("trigger_s", "step_p50_s", "p50_s", "p99_s", "max_s")),
            f"{fig['p99_s'] / base:.1f}",
            f"{fig['cpu_ms_server']:.1f}+{fig['cpu_ms_postgres']:.1f}+{fig['cpu_ms_agents']:.1f}",
        )
    console.print(table)
    waiting = run["waiting"]
    line = (
        f"while {agents} agents waited: /health {waiting['health_s']:.3f} s at worst, "
        f"{waiting['server_threads']} server threads"
    )
    if "pg_connections" in waiting:
        pg = waiting["pg_connections"]
        line += (
            f", {pg['total']} PostgreSQL connections ({pg['listening']} LISTEN, "
            f"{pg['idle_in_transaction']} idle in transaction)"
        )
    console.print(line)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000, help="light agents (default 1000)")
    parser.add_argument(
        "--shape", choices=[*SHAPES, "both"], default="both", help="which servers (default both)"
    )
    parser.add_argument("--tmp-dir", default=None, help="where the throwaway folders go")
    parser.add_argument(
        "--agents-dir",
        default=AGENTS_DIR if os.access(AGENTS_DIR, os.W_OK) else None,
        help=f"where the agents write their files (default {AGENTS_DIR}, else --tmp-dir)",
    )
    args = parser.parse_args(argv)
    if args.agents_dir and not os.access(args.agents_dir, os.W_OK | os.X_OK):
        parser.error(f"--agents-dir {args.agents_dir}: not a folder this user can write in")
    console = Console(width=120)  # the tables' columns, whole, in a log or CI output too

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "benchmark": "patch_latency",
            "agents": args.agents,
            "agents_dir": args.agents_dir,
        }
        console.print(
            f"{args.agents} light agents, {os.cpu_count()} CPUs; the agents' files in "
            f"{args.agents_dir or 'the work folder'}"
        )
        for shape in SHAPES if args.shape == "both" else [args.shape]:
            folder = work / shape
            folder.mkdir()
            env: dict[str, str] = {}
            database_pid: Optional[int] = None
            url: Optional[str] = None
            if shape == "postgresql":
                pg = start_postgres(durable=True)
                cleanup.append(lambda pg=pg: stop_postgres(pg))
                url = pg.create_database("bench")
                env["NSO_REPO_DATABASE_URL"] = url
                database_pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
            workers = WORKERS if shape == "postgresql" else 1
            served = serve_repo(folder, cleanup, "admin", env, workers=workers)
            root = Path(tempfile.mkdtemp(prefix="nso-bench-agents-", dir=args.agents_dir or folder))
            cleanup.append(lambda root=root: shutil.rmtree(root, ignore_errors=True))
            run = asyncio.run(fleet_run(args, served, root, database_pid, url))
            served.started.stop()
            print_shape(console, shape, args.agents, run)
            summary[shape] = {"workers": workers, **shape_summary(run)}
        load.append(loadavg())
        # The headline: the production shape when it ran, else the embedded one.
        head = summary.get("postgresql") or summary["embedded"]
        summary.update({k: head[k] for k in ("p50_s", "p99_s", "max_s")})
        summary["loadavg_start_end"] = load
        summary["goals"] = {
            "p99_s": {"below": GOAL_P99_S, "met": head["p99_s"] < GOAL_P99_S},
            **{
                f"{shape}_p99_s": {"below": GOAL_P99_S, "met": summary[shape]["p99_s"] < GOAL_P99_S}
                for shape in SHAPES
                if shape in summary
            },
        }
        return summary

    return run_benchmark(console, "nso-bench-patch-", args.tmp_dir, body)


if __name__ == "__main__":
    sys.exit(main())
