"""The floor under bench/patch_latency.py: what HTTP alone costs a fleet's wake-up.

Run from the repository root:

    python bench/http_floor.py                # 1,000 clients
    python bench/http_floor.py --clients 200  # quick try

When a patch rollout wakes 1,000 agents, each makes three requests before it waits again:
the long-poll that brings its step, its report, and the next long-poll. This benchmark
asks what those 3,000 requests cost when the server does nothing else: 1,000 light clients
(tests/support/light_agents.py: asyncio, one keep-alive connection each, each from a
loopback address of its own) each send three `GET /healthz` one after the other, all at
once, three times, against three servers, one after the other:

* `nso-repo serve` as deployed for a fleet, with the workers it runs on PostgreSQL (one per
  CPU, 2 to 4): GuardedThreadWorker, the app's middleware, its access log. `/healthz`
  touches neither the database nor the storage;
* the baseline: gunicorn's own `gthread` worker, as many processes, serving a bare Flask
  app (the `app` below) with gunicorn's defaults (no configuration file, no access log):
  the least a threaded WSGI worker costs;
* an asyncio event loop answering from one thread of one process (`--serve-asyncio`, the
  standard library only): what an event-loop server costs.

For each: the server's CPU per request, and the seconds until each client had its three
answers (p50, p99: the median of the three bursts). The question it answers for
patch_latency.py's goal (p99 under 2 s with 1,000 agents on 2 CPUs): can that worker model
meet it at all? A model whose burst p99 is over 2 s with no work behind the requests
cannot. The last line printed is one JSON object with the figures and that goal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchkit import (  # noqa: E402
    BenchError,
    cpu_seconds,
    free_port,
    loadavg,
    process_tree,
    run_benchmark,
    serve_repo,
    start,
    wait_http,
)
from flask import Flask  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from repo_server.gunicorn_settings import default_workers  # noqa: E402
from tests.support.light_agents import LightAgent, percentile, source_address  # noqa: E402

REQUESTS = 3  # per client and burst: the step's long-poll, the report, the next long-poll
BURSTS = 3
GOAL_P99_S = 2.0  # bench/patch_latency.py's goal, which this floor must leave room for
ALIVE = b'{"status":"alive"}\n'
# Worker processes of both gunicorn servers: as `nso-repo serve` runs on PostgreSQL, one per
# CPU (2 to 4), so the floor is that of the fleet's deployed shape.
WORKERS = default_workers("postgresql")

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> Any:
    return {"status": "alive"}


class _AsyncioHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET without a body only: every request gets ALIVE."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        while (end := self.data.find(b"\r\n\r\n")) >= 0:
            self.data = self.data[end + 4 :]
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(ALIVE), ALIVE)
            )


def serve_asyncio(port: int) -> None:
    async def forever() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_AsyncioHttp, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(forever())


async def _bursts(base: str, pid: int, clients: int) -> dict[str, Any]:
    agents = [LightAgent(base, "", f"c{i}", source=source_address(i)) for i in range(clients)]

    async def one(agent: LightAgent, requests: int, began: float, done: list[float]) -> None:
        for _ in range(requests):
            answer = await agent.request("GET", "/healthz")
            if answer.status != 200:
                raise BenchError(f"/healthz answered {answer.status}: {answer.body[:200]!r}")
        done.append(time.monotonic() - began)

    try:
        await asyncio.gather(*(one(a, 1, time.monotonic(), []) for a in agents))  # connect
        runs = []
        for _ in range(BURSTS):
            pids = process_tree(pid)
            cpu = cpu_seconds(pids)
            done: list[float] = []
            began = time.monotonic()
            await asyncio.gather(*(one(a, REQUESTS, began, done) for a in agents))
            used = cpu_seconds(process_tree(pid)) - cpu
            runs.append(
                {
                    "cpu_ms_per_request": 1000 * used / (clients * REQUESTS),
                    "p50_s": percentile(done, 0.5),
                    "p99_s": percentile(done, 0.99),
                }
            )
    finally:
        for agent in agents:
            await agent.close()
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def _baseline(name: str, port: int, work: Path) -> list[str]:
    """The command that serves baseline ``name`` on ``port``."""
    if name == "asyncio event loop":
        return [sys.executable, __file__, "--serve-asyncio", str(port)]
    empty = work / "gunicorn.conf.py"
    empty.write_text("")
    return [
        *[sys.executable, "-m", "gunicorn", "--chdir", str(Path(__file__).parent)],
        # A configuration file of its own: gunicorn would read ./gunicorn.conf.py, the product's.
        *["--config", str(empty), "--workers", str(WORKERS), "--worker-class", "gthread"],
        *["--threads", "32"],
        *["--worker-connections", "5000", "--bind", f"127.0.0.1:{port}", "http_floor:app"],
    ]


SERVERS = ("nso-repo serve", "gthread + bare Flask", "asyncio event loop")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="light clients (default 1000)")
    parser.add_argument("--tmp-dir", default=None, help="where the throwaway folder goes")
    parser.add_argument("--serve-asyncio", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_asyncio:
        serve_asyncio(args.serve_asyncio)
        return 0
    console = Console(width=120)

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        figures: dict[str, dict[str, Any]] = {}
        for name in SERVERS:
            if name == "nso-repo serve":
                served = serve_repo(work, cleanup, "admin", {}, workers=WORKERS)
                base, server = served.base, served.started
            else:
                port = free_port()
                server = start(name, _baseline(name, port, work), work / f"{name.split()[0]}.log")
                cleanup.append(server.stop)
                base = f"http://127.0.0.1:{port}"
                wait_http(server, f"{base}/healthz")
            figures[name] = asyncio.run(_bursts(base, server.proc.pid, args.clients))
            server.stop()
        load.append(loadavg())
        return _report(console, args.clients, figures, load)

    return run_benchmark(console, "nso-bench-floor-", args.tmp_dir, body)


def _report(
    console: Console, clients: int, figures: dict[str, dict[str, Any]], load: list[float]
) -> dict[str, Any]:
    ours = figures["nso-repo serve"]["cpu_ms_per_request"]
    table = Table(
        title=f"{clients} clients x {REQUESTS} GET /healthz at once, {os.cpu_count()} CPUs "
        f"(the median of {BURSTS} bursts)"
    )
    for column in (
        "server",
        "CPU ms/request",
        "vs nso-repo",
        "p50 s",
        "p99 s",
        f"p99 < {GOAL_P99_S:g} s",
    ):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, fig in figures.items():
        table.add_row(
            name,
            f"{fig['cpu_ms_per_request']:.2f}",
            f"{fig['cpu_ms_per_request'] / ours:.2f}",
            f"{fig['p50_s']:.2f}",
            f"{fig['p99_s']:.2f}",
            "yes" if fig["p99_s"] < GOAL_P99_S else "no",
        )
    console.print(table)
    return {
        "benchmark": "http_floor",
        "clients": clients,
        "requests_per_client": REQUESTS,
        "servers": figures,
        "loadavg_start_end": load,
        "goals": {
            f"{name}_p99_s": {"below": GOAL_P99_S, "met": fig["p99_s"] < GOAL_P99_S}
            for name, fig in figures.items()
        },
    }


if __name__ == "__main__":
    sys.exit(main())
