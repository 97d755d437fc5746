"""Throughput of an agent's poll with nothing to do, against a hello-world endpoint.

Run from the repository root:

    python bench/idle_poll.py                   # 64 agents, 5 s per measurement
    python bench/idle_poll.py --seconds 2       # quicker

Two servers on the same gunicorn configuration (`nso-repo serve`'s own settings,
repo_server.cli.server_cmds.gunicorn_options: the guarded threaded worker, its threads and
timeouts, the access log), one at a time, each with 1 worker (the embedded default):

* hello world: a Flask app whose one route answers `hello`;
* `nso-repo serve` (SQLite, local disk), with AGENTS enrolled agents whose nodes hold no job,
  each polling `GET /api/v1/agent/next?wait=0` as fast as its answers come.

The same asyncio load (tests/support/light_agents.py: one keep-alive connection per client,
each from a loopback address of its own) drives both for SECONDS after a warm-up. It prints
the requests per second of each and their ratio, then one JSON line with `idle_poll_ratio`
(goal: at least 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchkit import BenchError, free_port, loadavg, run_benchmark, serve_repo, start, wait_http  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.support.light_agents import LightAgent, enroll_many, source_address  # noqa: E402

GOAL_RATIO = 0.5
WARM_UP_S = 1.0


def hello_server(port: int) -> None:
    """Serve the hello-world app with `nso-repo serve`'s gunicorn settings (1 worker)."""
    from flask import Flask

    from repo_server.cli.server_cmds import gunicorn_options, run_gunicorn

    def load() -> Any:
        app = Flask("hello")
        app.add_url_rule("/hello", "hello", lambda: "hello")
        return app

    run_gunicorn(gunicorn_options("127.0.0.1", port, 1), load)


async def throughput(clients: list[LightAgent], path: str, expect: int, seconds: float) -> float:
    """Requests per second the clients got answered, each asking again at once."""
    counting = [False]
    done = [0]
    stop = time.monotonic() + WARM_UP_S + seconds

    async def client(one: LightAgent) -> None:
        while time.monotonic() < stop:
            answer = await one.request("GET", path)
            if answer.status != expect:
                raise BenchError(f"GET {path} answered {answer.status}: {answer.body[:200]!r}")
            if counting[0]:
                done[0] += 1

    async def window() -> float:
        await asyncio.sleep(WARM_UP_S)
        counting[0], began = True, time.monotonic()
        await asyncio.sleep(seconds)
        counting[0] = False
        return time.monotonic() - began

    tasks = [asyncio.ensure_future(client(c)) for c in clients]
    elapsed = await window()
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.close() for c in clients))
    return done[0] / elapsed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=64, help="polling clients (default 64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--tmp-dir", default=None, help="where the throwaway folders go")
    parser.add_argument("--hello-server", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hello_server:
        hello_server(args.hello_server)
        return 0
    console = Console(width=100)

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        console.print(f"{args.agents} clients, {args.seconds:g} s each, {os.cpu_count()} CPUs")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NSO_REPO_")}
        env["NSO_REPO_DATA_DIR"] = tempfile.mkdtemp(dir=work)  # the settings' hook runs too
        hello = start(
            "hello world",
            [sys.executable, __file__, "--hello-server", str(port)],
            work / "hello.log",
            env,
        )
        cleanup.append(hello.stop)
        base = f"http://127.0.0.1:{port}"
        wait_http(hello, f"{base}/hello")
        clients = [LightAgent(base, "", f"c{i}", source_address(i)) for i in range(args.agents)]
        hello_rps = asyncio.run(throughput(clients, "/hello", 200, args.seconds))
        hello.stop()

        served = serve_repo(work, cleanup, "admin", {})

        async def agents() -> list[LightAgent]:
            enrolled = await enroll_many(
                served.base, served.token, [f"idle-{i:03d}" for i in range(args.agents)]
            )
            for agent in enrolled:  # heartbeat-free nodes: no job can hold them
                if (await agent.request("GET", "/api/v1/agent/next?wait=0")).status != 204:
                    raise BenchError(f"{agent.name}'s first poll did not answer 204")
                await agent.close()  # the measurement runs in a loop of its own
            return enrolled

        polling = asyncio.run(agents())
        poll_rps = asyncio.run(throughput(polling, "/api/v1/agent/next?wait=0", 204, args.seconds))
        served.started.stop()
        ratio = poll_rps / hello_rps
        table = Table(title="requests per second, 1 worker, nso-repo serve's gunicorn settings")
        for column in ("endpoint", "requests/s", "ratio"):
            table.add_column(column, justify="right")
        table.add_row("GET /hello (Flask hello world)", f"{hello_rps:.0f}", "1.00")
        table.add_row("GET /api/v1/agent/next?wait=0, no work", f"{poll_rps:.0f}", f"{ratio:.2f}")
        console.print(table)
        load.append(loadavg())
        return {
            "benchmark": "idle_poll",
            "clients": args.agents,
            "seconds": args.seconds,
            "hello_rps": round(hello_rps, 1),
            "idle_poll_rps": round(poll_rps, 1),
            "idle_poll_ratio": round(ratio, 3),
            "loadavg_start_end": load,
            "goals": {"idle_poll_ratio": {"at_least": GOAL_RATIO, "met": ratio >= GOAL_RATIO}},
        }

    return run_benchmark(console, "nso-bench-idle-", args.tmp_dir, body)


if __name__ == "__main__":
    sys.exit(main())
