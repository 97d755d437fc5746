"""How long `/health` takes while clients abuse the server, against an idle baseline; and
what a huge JSON body costs the worker that refuses it.

Run from the repository root:

    python bench/abuse.py                # 15 s of each abuse
    python bench/abuse.py --seconds 5    # quick try

Everything is measured in this one run, against `nso-repo serve --workers 1` (its defaults:
SQLite, local storage, one gunicorn worker, 32 threads) on a free port:

* `/health` latency (a new connection each time, every --pause seconds) with the server idle:
  the baseline; then the same while each abuse goes on, from 127.0.0.1 like the probe
  unless said otherwise: 50 idle connections, 50 slowloris heads, 50 slow JSON bodies, 50
  slow chunked JSON bodies, 50 clients that keep sending after a `Connection: close`
  answer (more than the threads, fewer than the per-address limit),
  1200 slowloris heads from 127.0.0.2, one node token holding 40 long-polls, 24 node
  tokens holding 2 long-polls each (48 polls for 32 threads);
* a 300 MiB JSON body without a token, by Content-Length and chunked: the answer, how long
  it took, and how much the worker's peak RSS (VmHWM) grew.

The abusive clients are tests/support/abuse.py's, as the tests use them. The bound is the
tests' (tests/api/test_starvation.py): every probe under 5 s; the ratios (median and worst
probe against the idle median) are for information. A probe that gets no answer counts as
--timeout seconds. It stops what it started and removes its temporary files on exit, on
error and on Ctrl-C. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, Callable, Optional

from benchkit import BenchError, loadavg, run_benchmark, serve_repo
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.abuse import (  # noqa: E402
    MIB,
    LongPollers,
    SlowClients,
    children,
    chunked,
    health_seconds,
    json_string_body,
    send_request,
    status_kib,
)

BOUND_S = 5.0
MEMORY_GOAL_MIB = 64
HUGE = 300 * MIB

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def probe(url: str, seconds: float, pause: float, timeout: float) -> list[float]:
    """`/health` latencies, one probe every ``pause`` seconds for ``seconds``."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    while time.monotonic() < deadline or not latencies:
        latencies.append(health_seconds(url, timeout))
        time.sleep(pause)
    return latencies


def api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def node_token(base: str, admin: str, name: str = "bench-node") -> str:
    added = api(base, admin, "POST", "/nodes", {"name": name})
    enrolled = api(
        base, "", "POST", "/agent/enroll", {"enrollment_token": added["enrollment_token"]}
    )
    return str(enrolled["token"])


def huge_body(port: int, worker: int, framing: str) -> dict[str, Any]:
    """POST 300 MiB of JSON to /api/v1/agent/enroll without a token."""
    headers = {"Content-Type": "application/json"}
    body: Iterator[bytes] = json_string_body("enrollment_token", HUGE)
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        body = chunked(body)
    else:
        headers["Content-Length"] = str(HUGE)
    hwm_before = status_kib(worker, "VmHWM")
    start_time = time.monotonic()
    answer = send_request(port, "POST", "/api/v1/agent/enroll", body, headers, timeout=300)
    seconds = time.monotonic() - start_time
    growth = (status_kib(worker, "VmHWM") - hwm_before) / 1024
    code = ""
    with suppress(ValueError, KeyError, TypeError):
        code = answer.json()["error"]["code"]
    return {
        "status": answer.status,
        "code": code,
        "seconds": round(seconds, 3),
        "sent_MiB": round(answer.sent / MIB, 1),
        "worker_peak_rss_growth_MiB": round(growth, 1),
    }


def measure(
    args: argparse.Namespace, work: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    # Its defaults (SQLite, local storage, 32 threads): what the bounds are for.
    env = {"NSO_REPO_ACCESS_LOG": str(work / "access.log"), "PYTHONPATH": str(REPO)}
    with console.status("starting nso-repo serve"):
        served = serve_repo(work, cleanup, "admin", env)
    server, port, base, admin = served.started, served.port, served.base, served.token
    (worker,) = children(server.proc.pid) or (0,)
    if not worker:
        raise BenchError("the server has no worker process")
    console.print(f"nso-repo serve on {base}: master {server.proc.pid}, worker {worker}")

    def slow(
        kind: str, count: int, source: str = "127.0.0.1"
    ) -> Callable[[], AbstractContextManager[Any]]:
        return lambda: SlowClients(port, count, kind=kind, source=source)

    def polls() -> AbstractContextManager[Any]:
        return LongPollers(base, node_token(base, admin), 40, wait=60)

    fleet_tokens: list[str] = []

    @contextmanager
    def fleet() -> Iterator[None]:
        # More nodes than threads, each holding its 2 places: 48 polls for 32 threads.
        if not fleet_tokens:
            fleet_tokens.extend(node_token(base, admin, f"fleet-{i}") for i in range(24))
        with ExitStack() as stack:
            for token in fleet_tokens:
                stack.enter_context(LongPollers(base, token, 2, wait=60))
            yield

    scenarios: list[tuple[str, str, Callable[[], AbstractContextManager[Any]]]] = [
        ("idle", "nothing else (baseline)", nullcontext),
        ("idle_connections", "50 connections that send nothing", slow("idle", 50)),
        ("slowloris", "50 half heads, a line a second", slow("slow_head", 50)),
        ("slow_body", "50 JSON bodies, a byte a second", slow("slow_body", 50)),
        ("slow_chunked", "50 chunked JSON bodies, a chunk a second", slow("slow_chunked", 50)),
        ("after_close", "50 closed requests, a byte a second after", slow("after_close", 50)),
        (
            "slowloris_one_address",
            "1200 half heads from 127.0.0.2",
            slow("slow_head", 1200, "127.0.0.2"),
        ),
        ("long_polls", "one node token holding 40 long-polls", polls),
        ("fleet_polls", "24 node tokens holding 2 long-polls each", fleet),
    ]
    latency: dict[str, dict[str, Any]] = {}
    for key, label, abuse in scenarios:
        with console.status(f"{label}: /health for {args.seconds:g} s"):
            with abuse():
                time.sleep(1)  # the abuse is in place before the first probe
                seconds = probe(base, args.seconds, args.pause, args.timeout)
            time.sleep(2)  # let the server drop what is left before the next one
        latency[key] = {
            "label": label,
            "probes": len(seconds),
            "median_ms": round(statistics.median(seconds) * 1000, 1),
            "max_ms": round(max(seconds) * 1000, 1),
            "no_answer": sum(s >= args.timeout for s in seconds),
        }
        console.print(
            f"{label}: {len(seconds)} probes, median {latency[key]['median_ms']} ms, worst {latency[key]['max_ms']} ms"
        )
    idle = latency["idle"]["median_ms"] or 0.1
    for row in latency.values():
        row["median_ratio"] = round(row["median_ms"] / idle, 2)
        row["max_ratio"] = round(row["max_ms"] / idle, 2)
        row["pass"] = row["max_ms"] < BOUND_S * 1000
    memory = {}
    for framing in ("content-length", "chunked"):
        with console.status(f"300 MiB of JSON without a token, {framing}"):
            memory[framing] = huge_body(port, worker, framing)
        memory[framing]["pass"] = (
            memory[framing]["status"] == 413
            and memory[framing]["worker_peak_rss_growth_MiB"] < MEMORY_GOAL_MIB
        )
        console.print(f"300 MiB JSON, {framing}: {memory[framing]}")
    return {"latency": latency, "huge_json": memory}


def report(r: dict[str, Any], args: argparse.Namespace, load: list[float]) -> dict[str, Any]:
    def verdict(ok: bool) -> str:
        return "[green]pass[/]" if ok else "[red]MISS[/]"

    table = Table(
        title="/health under abuse, nso-repo serve --workers 1 (defaults)",
        caption=(
            f"probes on a new connection every {args.pause:g} s for {args.seconds:g} s each; "
            f"ratios against the idle median ({r['latency']['idle']['median_ms']} ms); "
            f"no answer within {args.timeout:g} s counts as {args.timeout:g} s"
        ),
    )
    for column in ("abuse", "probes", "median", "worst", "ratio median / worst", "bound", "result"):
        table.add_column(column, justify="left" if column == "abuse" else "right")
    for row in r["latency"].values():
        table.add_row(
            row["label"],
            str(row["probes"]),
            f"{row['median_ms']:.1f} ms",
            f"{row['max_ms']:.1f} ms",
            f"{row['median_ratio']:.1f} / {row['max_ratio']:.1f}",
            f"< {BOUND_S:g} s",
            verdict(row["pass"]),
        )
    for framing, row in r["huge_json"].items():
        table.add_row(
            f"300 MiB JSON without a token, {framing}",
            "1",
            f"{row['status']} {row['code']}",
            f"{row['seconds'] * 1000:.0f} ms",
            f"worker VmHWM +{row['worker_peak_rss_growth_MiB']:.1f} MiB",
            f"413, < {MEMORY_GOAL_MIB} MiB",
            verdict(row["pass"]),
        )
    console.print(table)
    return {
        "benchmark": "abuse",
        "seconds_per_abuse": args.seconds,
        "probe_pause_s": args.pause,
        "probe_timeout_s": args.timeout,
        "bound_s": BOUND_S,
        "memory_goal_MiB": MEMORY_GOAL_MIB,
        "latency": r["latency"],
        "huge_json": r["huge_json"],
        "loadavg_start_end": load,
        "pass": all(row["pass"] for row in r["latency"].values())
        and all(row["pass"] for row in r["huge_json"].values()),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="probing per abuse (default 15)")
    parser.add_argument("--pause", type=float, default=0.2, help="between probes (default 0.2 s)")
    parser.add_argument(
        "--timeout", type=float, default=30, help="a probe's timeout (default 30 s)"
    )
    parser.add_argument("--tmp-dir", help="where to make the temporary folder")
    args = parser.parse_args(argv)

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        results = measure(args, work, cleanup)
        load.append(loadavg())
        return report(results, args, load)

    return run_benchmark(console, "nso-bench-abuse-", args.tmp_dir, body)


if __name__ == "__main__":
    sys.exit(main())
