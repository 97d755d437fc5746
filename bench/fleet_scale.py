"""The server at the size of a large service provider's estate: 10,000 enrolled nodes.

Run from the repository root:

    python bench/fleet_scale.py                      # 10,000 nodes, 333 polls/s for 20 s
    python bench/fleet_scale.py --nodes 2000 --seconds 5   # quick try

The production shape: `nso-repo serve` with 4 gunicorn workers on a throwaway PostgreSQL 15
cluster (fsync on) with blobs in S3 (SeaweedFS, signatures checked). NODES synthetic nodes
are written straight into the database, each enrolled (an agent token of its own) with a
realistic inventory: twelve packages with their oper-status, HA facts, disk, platform;
most run 6.1, a fifth 6.2, 2% are HA groups of two members; labels for site and tier.

Measured in the same run:

* polls: NODES agents polling `GET /api/v1/agent/next?wait=0` at their interval (30 s, so
  NODES/30 polls per second: 333 for 10,000), open loop (each poll is sent at its time
  whatever the others do, on a new connection from the agent's own loopback address, as an
  agent whose keep-alive has long lapsed); latency from the poll's scheduled time to its
  answer. Baseline: the same polls at a tenth of the rate (the server nearly idle).
* plan: `POST /api/v1/rollouts/plan` over every node (`select all`, canary and waves), the
  preflight of every target included; baseline: the same plan over 100 nodes, scaled.
* fleet page: `GET /api/v1/nodes?version=6.1&label=tier:gold` (first page of 50, with its
  total and each node's rollout status); baseline: one node by name
  (`GET /api/v1/nodes/pe-00000`).

* console: the same fleet page in the console (logged in with a cookie), and the
  compatibility matrix, which reads every node's packages; baseline: one node's page.

Goals: poll p99 under 50 ms at 333 polls/s, the plan under 2 s, the fleet page and the
console's fleet page under 300 ms, the console's matrix under 2 s. The last line is one JSON object with the figures and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from benchkit import BenchError, loadavg, run_benchmark, serve_repo, upload  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.factories import make_installer, make_package  # noqa: E402
from tests.support.light_agents import LightAgent, percentile, source_address  # noqa: E402
from tests.support.postgres import start_postgres, stop_postgres  # noqa: E402
from tests.support.s3 import start_seaweedfs  # noqa: E402

GOALS = {
    "poll_p99_ms": 50.0,
    "plan_s": 2.0,
    "fleet_page_ms": 300.0,
    "console_fleet_ms": 300.0,
    "console_matrix_ms": 2000.0,
}
POLL_INTERVAL_S = 30.0
WORKERS = 4
PACKAGES = {
    "cisco-ios-cli-6.100": "6.100.2",
    "cisco-iosxr-cli-7.55": "7.55.1",
    "juniper-junos-nc-4.14": "4.14.3",
    "l3vpn": "2.1.0",
    "l2vpn": "1.4.2",
    "qos": "3.0.1",
    "acl-mgr": "1.2.0",
    "inventory": "5.3.0",
    "resource-manager": "4.2.9",
    "cfs-core": "2.8.0",
    "rfs-edge": "2.8.0",
    "lsa-utils": "1.1.4",
}
GiB = 1 << 30


def inventory(version: str, ha: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    branch = ".".join(version.split(".")[:2])
    return {
        "installed_releases": sorted({"6.1", version}),
        "current": version,
        "running_version": version,
        "status": "started",
        "packages": [
            {"name": n, "version": v, "file": f"ncs-{branch}-{n}-{v}.tar.gz", "oper_status": "up"}
            for n, v in PACKAGES.items()
        ],
        "ha": ha or {"enabled": False, "mode": "none", "current_id": None, "read_only": False},
        "disk_free_bytes": {"/opt/ncs": 40 * GiB, "/var/opt/ncs": 80 * GiB},
        "java": "17.0.8",
        "glibc": "2.34",
        "os": {"id": "rhel", "version_id": "9.2"},
        "ncs_conf_elements": ["ncs-config", "load-path", "dir", "cdb", "webui", "cli"],
        "crypto_keys": ["AESCFB128_KEY", "AES256CFB128_KEY"],
        "cdb_bytes": 900 << 20,
        "patches": [],
    }


def seed(url: str, count: int) -> list[str]:
    """NODES nodes, their agent tokens and HA groups, in a few bulk statements; the agents'
    secrets, in node order."""
    from sqlalchemy import create_engine, insert

    from repo_server.auth.models import ApiToken
    from repo_server.auth.service import TOKEN_PREFIX, hash_token
    from repo_server.fleet.group_models import HaGroup, HaGroupMember
    from repo_server.fleet.models import Node

    now = datetime.now(timezone.utc)
    group_count = count // 100  # 2% of the nodes: groups of two
    nodes, secrets_, members, groups = [], [], [], []
    for i in range(count):
        name = f"pe-{i:05d}"
        version = "6.2" if i % 5 == 4 else "6.1"
        ha = None
        g = i // 2
        if g < group_count:
            version = "6.1"
            primary = i % 2 == 0
            ha = {
                "enabled": True,
                "mode": "primary" if primary else "secondary",
                "current_id": "n1" if primary else "n2",
                "read_only": False,
                "connected_secondaries": ["n2"] if primary else [],
                "primary_id": None if primary else "n1",
            }
            members.append(
                {
                    "group_id": g + 1,
                    "node_id": i + 1,
                    "ha_id": "n1" if primary else "n2",
                    "nominal_role": "primary" if primary else "secondary",
                    "failover_primary": not primary,
                    "position": i % 2,
                }
            )
        nodes.append(
            {
                "id": i + 1,
                "name": name,
                "hostname": f"{name}.nso.example.net",
                "agent_version": "0.9.0",
                "inventory": inventory(version, ha),
                "created_at": now,
                "created_by": "admin:bench",
                "enrolled_at": now,
                "last_seen_at": now,
                "inventory_at": now,
                "inventory_checked": True,  # as a heartbeat stores it
                "running_version": version,
                "labels": [f"site=s{i % 40:02d}", "tier:gold" if i % 3 == 0 else "tier:silver"],
            }
        )
        secrets_.append(TOKEN_PREFIX + secrets.token_urlsafe(32))
    groups = [
        {"id": g + 1, "name": f"ha-{g:04d}", "created_at": now, "created_by": "admin:bench"}
        for g in range(group_count)
    ]
    tokens = [
        {
            "name": f"agent:{n['name']}",
            "role": "agent",
            "token_hash": hash_token(s),
            "created_at": now,
            "created_by": "enrollment",
            "node_id": n["id"],
        }
        for n, s in zip(nodes, secrets_)
    ]
    engine = create_engine(url)
    with engine.begin() as connection:
        for table, rows in (
            (Node, nodes),
            (HaGroup, groups),
            (HaGroupMember, members),
            (ApiToken, tokens),
        ):
            for start in range(0, len(rows), 2000):
                connection.execute(insert(table), rows[start : start + 2000])
        if connection.dialect.name == "postgresql":
            for table in ("nodes", "ha_groups", "ha_group_members", "api_tokens"):
                connection.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    return secrets_


async def publish(base: str, token: str, folder: Path) -> None:
    """Releases 6.1 and 6.2, each an installer and a build of every package."""
    admin = LightAgent(base, token, "admin")
    for version in ("6.1", "6.2"):
        sub = folder / version
        sub.mkdir()
        files = [make_installer(sub, version)]
        for name, pkg_version in PACKAGES.items():
            where = sub / name
            where.mkdir()
            files.append(make_package(where, name, pkg_version, version))
        for path in files:
            await upload(base, token, path)
        answer = await admin.request(
            "POST",
            "/api/v1/releases",
            {
                "nso_version": version,
                "installer": files[0].name,
                "packages": [p.name for p in files[1:]],
                "requirements": {},
            },
        )
        if answer.status != 201:
            raise BenchError(f"release {version} answered {answer.status}: {answer.body[:300]!r}")
    await admin.close()


async def open_loop(
    base: str, tokens: list[str], path: str, expect: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Send ``rate`` requests a second for ``seconds``, each at its scheduled time on a new
    connection, token after token; latencies from each scheduled time to its answer."""
    latencies: list[float] = []
    errors: list[str] = []
    began = time.monotonic() + 0.2
    total = int(rate * seconds)

    async def one(index: int) -> None:
        scheduled = began + index / rate
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        agent = LightAgent(base, tokens[index % len(tokens)], source=source_address(index % 10_000))
        try:
            answer = await agent.request("GET", path)
            if answer.status != expect:
                errors.append(f"{answer.status} {answer.body[:120]!r}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
        finally:
            await agent.close()
        latencies.append(time.monotonic() - scheduled)

    await asyncio.gather(*(one(i) for i in range(total)))
    if errors:
        raise BenchError(f"{len(errors)} of {total} requests to {path} failed: {errors[:3]}")
    return {
        "requests": total,
        "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
    }


async def timed(call: Callable[[], Any], times: int) -> list[float]:
    out = []
    for _ in range(times):
        began = time.monotonic()
        await call()
        out.append(time.monotonic() - began)
    return out


async def measure(
    base: str, admin_token: str, agent_tokens: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    admin = LightAgent(base, admin_token, "admin")

    async def call(method: str, path: str, body: Any = None) -> Any:
        answer = await admin.request(method, path, body)
        if answer.status != 200:
            raise BenchError(f"{method} {path} answered {answer.status}: {answer.body[:300]!r}")
        return answer.json()

    plan_body = {
        "release": "6.2",
        "select": {"all": True},
        "canary": 5,
        "waves": [10, 50, 100],
        "concurrency": 50,
    }
    some = [f"pe-{i:05d}" for i in range(args.nodes // 100 * 2 + 3, args.nodes, args.nodes // 100)]
    small_body = {**plan_body, "select": {"nodes": some[:100]}}
    planned = await call("POST", "/api/v1/rollouts/plan", plan_body)
    plan_s = await timed(lambda: call("POST", "/api/v1/rollouts/plan", plan_body), 3)
    small_s = await timed(lambda: call("POST", "/api/v1/rollouts/plan", small_body), 3)
    page_path = "/api/v1/nodes?version=6.1&label=tier:gold&page=1&per_page=50"
    page = await call("GET", page_path)
    page_s = await timed(lambda: call("GET", page_path), 20)
    health_s = await timed(lambda: call("GET", "/api/v1/nodes/pe-00000"), 20)
    await admin.close()

    rate = args.nodes / POLL_INTERVAL_S
    health = await open_loop(
        base, agent_tokens, "/api/v1/agent/next?wait=0", 204, rate / 10, args.seconds
    )
    polls = await open_loop(
        base, agent_tokens, "/api/v1/agent/next?wait=0", 204, rate, args.seconds
    )
    return {
        "planned": planned,
        "plan_s": plan_s,
        "small_plan_s": small_s,
        "small_plan_targets": len(some[:100]),
        "page": page,
        "page_s": page_s,
        "health_s": health_s,
        "rate": rate,
        "health": health,
        "polls": polls,
    }


def console_pages(base: str, token: str) -> dict[str, Any]:
    """The console as an operator's browser loads it: logged in with a cookie, the fleet's
    first filtered page, the compatibility matrix over every node's packages, and one
    node's page as the baseline."""
    browser = requests.Session()
    login = browser.post(f"{base}/ui/login", data={"token": token}, allow_redirects=False)
    if login.status_code != 303:
        raise BenchError(f"console login answered {login.status_code}")

    def load(path: str, times: int) -> list[float]:
        out = []
        for _ in range(times):
            began = time.monotonic()
            answer = browser.get(f"{base}{path}", timeout=60)
            out.append(time.monotonic() - began)
            if answer.status_code != 200:
                raise BenchError(f"console {path} answered {answer.status_code}")
        return out

    return {
        "console_fleet_s": load("/ui/fleet?version=6.1&label=tier:gold", 20),
        "console_matrix_s": load("/ui/matrix", 5),
        "console_node_s": load("/ui/nodes/pe-00000", 20),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each poll run")
    parser.add_argument("--tmp-dir", default=None)
    args = parser.parse_args(argv)
    if args.nodes < 1000:
        parser.error("--nodes: at least 1000 (the HA groups and the plan baseline need them)")
    console = Console()

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        pg = start_postgres(durable=True)
        cleanup.append(lambda: stop_postgres(pg))
        s3 = start_seaweedfs()
        cleanup.append(s3.stop)
        url = pg.create_database("fleet")
        env = {
            "NSO_REPO_DATABASE_URL": url,
            **{
                f"NSO_REPO_{k.upper()}": str(v)
                for k, v in s3.settings_overrides(s3.new_bucket()).items()
            },
        }
        served = serve_repo(work, cleanup, "admin", env, workers=WORKERS)
        began = time.monotonic()
        tokens = seed(url, args.nodes)
        seeded = time.monotonic() - began
        asyncio.run(publish(served.base, served.token, work))
        console.print(f"{args.nodes} nodes seeded in {seeded:.1f} s; measuring")
        got = asyncio.run(measure(served.base, served.token, tokens, args))
        got.update(console_pages(served.base, served.token))
        load.append(loadavg())
        return report(console, args, got, load, seeded)

    return run_benchmark(console, "nso-bench-fleet-", args.tmp_dir, body)


def report(
    console: Console,
    args: argparse.Namespace,
    got: dict[str, Any],
    load: list[float],
    seeded: float,
) -> dict[str, Any]:
    plan_s = statistics.median(got["plan_s"])
    small = statistics.median(got["small_plan_s"])
    per_target_ms = 1000 * plan_s / len(got["planned"]["targets"])
    small_per_target_ms = 1000 * small / got["small_plan_targets"]
    page_ms = 1000 * max(got["page_s"])
    health_ms = 1000 * max(got["health_s"])
    polls, health = got["polls"], got["health"]
    table = Table(title=f"{args.nodes} nodes, 4 workers on PostgreSQL 15 and S3 (SeaweedFS)")
    for column in ("measure", "figure", "baseline (same run)", "ratio", "goal"):
        table.add_column(column)
    table.add_row(
        f"poll p99 at {got['rate']:.0f}/s",
        f"{polls['p99_ms']} ms (p50 {polls['p50_ms']}, max {polls['max_ms']})",
        f"at {got['rate'] / 10:.0f}/s: p99 {health['p99_ms']} ms",
        f"{polls['p99_ms'] / max(health['p99_ms'], 0.1):.2f}",
        f"< {GOALS['poll_p99_ms']:.0f} ms",
    )
    table.add_row(
        f"plan over all ({len(got['planned']['targets'])} targets)",
        f"{plan_s:.2f} s ({per_target_ms:.3f} ms/target)",
        f"100 targets: {small:.3f} s ({small_per_target_ms:.3f} ms/target)",
        f"{per_target_ms / max(small_per_target_ms, 1e-6):.2f} per target",
        f"< {GOALS['plan_s']:.0f} s",
    )
    table.add_row(
        "fleet page (version + label filter, 50 rows)",
        f"{page_ms:.1f} ms (max of 20; total {got['page']['total']})",
        f"one node by name: {health_ms:.1f} ms",
        f"{page_ms / max(health_ms, 0.1):.2f}",
        f"< {GOALS['fleet_page_ms']:.0f} ms",
    )
    console_fleet_ms = 1000 * max(got["console_fleet_s"])
    console_matrix_ms = 1000 * max(got["console_matrix_s"])
    console_node_ms = 1000 * max(got["console_node_s"])
    table.add_row(
        "console: fleet page (same filter, logged in)",
        f"{console_fleet_ms:.1f} ms (max of 20)",
        f"one node's page: {console_node_ms:.1f} ms",
        f"{console_fleet_ms / max(console_node_ms, 0.1):.2f}",
        f"< {GOALS['console_fleet_ms']:.0f} ms",
    )
    table.add_row(
        "console: compatibility matrix (every node's packages)",
        f"{console_matrix_ms:.1f} ms (max of 5)",
        f"one node's page: {console_node_ms:.1f} ms",
        f"{console_matrix_ms / max(console_node_ms, 0.1):.2f}",
        f"< {GOALS['console_matrix_ms']:.0f} ms",
    )
    console.print(table)
    counts = got["planned"]["counts"]
    console.print(
        f"plan: {counts}; waves {[w['size'] for w in got['planned']['waves']]}; "
        f"seeding took {seeded:.1f} s; load average {load[0]:.2f} before, {load[-1]:.2f} after "
        f"on {os.cpu_count()} CPUs"
    )
    figures = {
        "nodes": args.nodes,
        "polls_per_s": round(got["rate"], 1),
        "poll_p50_ms": polls["p50_ms"],
        "poll_p99_ms": polls["p99_ms"],
        "poll_max_ms": polls["max_ms"],
        "poll_p99_ms_at_tenth_rate": health["p99_ms"],
        "plan_s": round(plan_s, 3),
        "plan_targets": len(got["planned"]["targets"]),
        "plan_100_s": round(small, 3),
        "fleet_page_ms": round(page_ms, 1),
        "one_node_ms": round(health_ms, 1),
        "console_fleet_ms": round(console_fleet_ms, 1),
        "console_matrix_ms": round(console_matrix_ms, 1),
        "console_node_ms": round(console_node_ms, 1),
        "load_before": load[0],
        "load_after": load[-1],
    }
    met = {
        "poll_p99_ms": polls["p99_ms"] < GOALS["poll_p99_ms"],
        "plan_s": plan_s < GOALS["plan_s"],
        "fleet_page_ms": page_ms < GOALS["fleet_page_ms"],
        "console_fleet_ms": console_fleet_ms < GOALS["console_fleet_ms"],
        "console_matrix_ms": console_matrix_ms < GOALS["console_matrix_ms"],
    }
    return {**figures, "goals": GOALS, "met": met}


if __name__ == "__main__":
    sys.exit(main())
