"""What operators scrape and probe: Prometheus metrics, liveness and readiness, and one
JSON log line per request.

`GET /metrics` (a token with `metrics:read`) answers in Prometheus' text format:

* per request, from every server process: `nso_repo_http_requests_total{method, route,
  status}` and `nso_repo_http_request_seconds{method, route}` (the route is Flask's rule,
  never the raw path, so label values stay few), `nso_repo_idle_polls_total` (the polls the
  fast path answered before Flask), `nso_repo_long_polls_waiting` (parked now);
* from the database, read at each scrape so that any process answers for the whole
  server: jobs by kind and state, rollouts by state, finished steps' durations over the last
  day by step name, agents by how long ago they were last seen, catalogued bytes by kind.

Several gunicorn workers share their counters through prometheus_client's multiprocess mode:
the master points `PROMETHEUS_MULTIPROC_DIR` at `<data>/metrics` (emptied at each start)
before the workers fork (`prepare_multiprocess`), and forgets a worker that exits.

`GET /healthz` says the process answers (no database touched); `GET /readyz` says it can
serve: the database answers and the storage backend is reachable (503 otherwise). Neither
needs a token nor says more than that.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

from flask import Flask, Response, g, request
from sqlalchemy import func, select

log = logging.getLogger("repo_server.requests")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
AGE_BUCKETS = ((60, "1m"), (300, "5m"), (3600, "1h"), (86400, "1d"))


def prepare_multiprocess(data_dir: Path) -> None:
    """In the master, before workers fork: an empty folder for the workers' counters."""
    folder = Path(os.environ.get(MULTIPROC_ENV) or data_dir / "metrics")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before the variable was set: choose again
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def forget_worker(pid: int) -> None:
    """A worker exited: its live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Metrics:
    """The process's own metrics, made on first use (after a fork, with its mode set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "nso_repo_http_requests", "HTTP requests answered", ["method", "route", "status"]
        )
        self.seconds = Histogram(
            "nso_repo_http_request_seconds",
            "Time to answer an HTTP request (a parked long-poll counts each run)",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.idle_polls = Counter(
            "nso_repo_idle_polls", "Agent polls answered 'no work' before Flask"
        )
        self.waiting = Gauge(
            "nso_repo_long_polls_waiting",
            "Agent long-polls parked now, waiting for work",
            multiprocess_mode="livesum",
        )


_metrics: Optional[_Metrics] = None
_made = threading.Lock()


def metrics() -> _Metrics:
    """The process's metrics; made once, whichever of the worker's threads asks first."""
    global _metrics
    if _metrics is None:
        with _made:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def install(app: Flask, json_logs: bool) -> None:
    """Count and time every request Flask serves; log one JSON line each when asked."""
    if json_logs and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))  # the line is the JSON
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.pop("started", None)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.monotonic() - started if started is not None else 0.0
        m = metrics()
        m.requests.labels(request.method, route, str(response.status_code)).inc()
        m.seconds.labels(request.method, route).observe(elapsed)
        if json_logs:
            log.info(
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "method": request.method,
                        "path": request.path,
                        "route": route,
                        "status": response.status_code,
                        "ms": round(elapsed * 1000, 1),
                        "remote": request.remote_addr,
                        "actor": getattr(g.get("principal"), "actor", None),
                    }
                )
            )
        return response


def exposition(sessions: Callable[[], Any]) -> bytes:
    """The text Prometheus reads: this server's processes' metrics and the database's."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    metrics()  # every family appears, at zero, from the first scrape
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    database = CollectorRegistry()
    database.register(_DatabaseCollector(sessions))
    return own + generate_latest(database)


class _DatabaseCollector:
    """Gauges read from the database at scrape time (the same from any process)."""

    def __init__(self, sessions: Callable[[], Any]) -> None:
        self.sessions = sessions

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from repo_server.catalog.models import Artifact
        from repo_server.db import utcnow
        from repo_server.fleet.models import Node
        from repo_server.rollouts.models import Rollout
        from repo_server.upgrades.models import Job, Step

        with self.sessions() as session:
            jobs = GaugeMetricFamily(
                "nso_repo_jobs", "Jobs by kind and state", labels=["kind", "state"]
            )
            for kind, state, count in session.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ):
                jobs.add_metric([kind, state], count)
            yield jobs
            rollouts = GaugeMetricFamily(
                "nso_repo_rollouts", "Fleet rollouts by state", labels=["state"]
            )
            for state, count in session.execute(
                select(Rollout.state, func.count()).group_by(Rollout.state)
            ):
                rollouts.add_metric([state], count)
            yield rollouts
            since = utcnow() - timedelta(days=1)
            steps_n = GaugeMetricFamily(
                "nso_repo_steps_finished_last_day",
                "Steps finished in the last 24 h",
                labels=["step", "state"],
            )
            steps_s = GaugeMetricFamily(
                "nso_repo_step_seconds_last_day",
                "Total seconds of the steps finished in the last 24 h (divide by the count)",
                labels=["step", "state"],
            )
            steps_max = GaugeMetricFamily(
                "nso_repo_step_seconds_max_last_day",
                "Longest step finished in the last 24 h",
                labels=["step"],
            )
            ended: dict[tuple[str, str], float] = {}
            total: dict[tuple[str, str], float] = {}
            longest: dict[str, float] = {}
            for name, state, started, done_at in session.execute(
                select(Step.name, Step.state, Step.started_at, Step.finished_at).where(
                    Step.finished_at >= since, Step.started_at.is_not(None)
                )
            ):
                seconds = max(0.0, (done_at - started).total_seconds())
                ended[(name, state)] = ended.get((name, state), 0.0) + 1
                total[(name, state)] = total.get((name, state), 0.0) + seconds
                longest[name] = max(longest.get(name, 0.0), seconds)
            for key in sorted(ended):
                steps_n.add_metric(list(key), ended[key])
                steps_s.add_metric(list(key), total[key])
            for name, seconds in sorted(longest.items()):
                steps_max.add_metric([name], seconds)
            yield from (steps_n, steps_s, steps_max)
            agents = GaugeMetricFamily(
                "nso_repo_agents_last_seen",
                "Enrolled nodes by how long ago their agent was last seen (within: at most)",
                labels=["within"],
            )
            now = utcnow()
            tally = {label: 0 for _, label in AGE_BUCKETS} | {"longer": 0, "never": 0}
            for (seen,) in session.execute(
                select(Node.last_seen_at).where(Node.enrolled_at.is_not(None))
            ):
                if seen is None:
                    tally["never"] += 1
                    continue
                age = (now - seen).total_seconds()
                label = next((lab for limit, lab in AGE_BUCKETS if age <= limit), "longer")
                tally[label] += 1
            for label, count in tally.items():
                agents.add_metric([label], count)
            yield agents
            stored = GaugeMetricFamily(
                "nso_repo_catalog_bytes",
                "Bytes of live artifacts in the catalog, by kind",
                labels=["kind"],
            )
            for kind, size_sum in session.execute(
                select(Artifact.kind, func.coalesce(func.sum(Artifact.size), 0))
                .where(Artifact.deleted_at.is_(None))
                .group_by(Artifact.kind)
            ):
                stored.add_metric([kind], float(size_sum))
            yield stored
