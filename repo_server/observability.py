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

from repo_server.parking import PARKED_NOW

log = logging.getLogger("repo_server.requests")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
AGE_BUCKETS = ((60, "1m"), (300, "5m"), (3600, "1h"), (86400, "1d"))
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def prepare_multiprocess(data_dir: Path) -> None:
    """In the master, before workers fork: a folder of this master's own for the workers'
    counters, under ``<data>/metrics``. Another master on the same data folder (a second
    start, gunicorn's re-exec) gets its own; the folders of masters gone are removed. Any
    inherited PROMETHEUS_MULTIPROC_DIR is ignored: this folder is emptied, no other."""
    root = data_dir / "metrics"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    folder = root / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(folder)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before the variable was set: choose again
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_worker(pid: int) -> None:
    """A worker exited: its live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Metrics:
    """The process's own metrics, made on first use (after a fork, with its mode set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # Multiprocess: the values live in the folder's files, which the scrape reads; no
        # registry is needed. Otherwise this module's own registry, never the global one.
        registry = None if os.environ.get(MULTIPROC_ENV) else _REGISTRY
        self.requests = Counter(
            "nso_repo_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "nso_repo_http_request_seconds",
            "Time to answer an HTTP request (a parked long-poll counts each run)",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.idle_polls = Counter(
            "nso_repo_idle_polls", "Agent polls answered 'no work' before Flask", registry=registry
        )
        self.batch_size = Histogram(
            "nso_repo_agent_batch_size",
            "Agents' requests served together in one transaction (fleet/agent_lane.py)",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.waiting = Gauge(
            "nso_repo_long_polls_waiting",
            "Agent long-polls parked now, waiting for work",
            multiprocess_mode="livesum",
            registry=registry,
        )


_REGISTRY: Any = None  # set below, once prometheus_client is imported
_metrics: Optional[_Metrics] = None
_made = threading.Lock()
_failed = threading.Event()


def record(change: Callable[[_Metrics], Any]) -> None:
    """Apply ``change`` to the metrics, best effort: a metric never fails a request (a
    metrics folder gone, a full disk); the first failure is logged."""
    try:
        change(metrics())
    except Exception:
        if not _failed.is_set():
            _failed.set()
            log.exception("metrics could not be recorded; requests go on without them")


def batch_sized(kind: str) -> Callable[[int], None]:
    """What a GroupCommit tells of each batch: nso_repo_agent_batch_size{kind}."""

    def sized(size: int) -> None:
        record(lambda m: m.batch_size.labels(kind).observe(size))

    return sized


def metrics() -> _Metrics:
    """The process's metrics; made once, whichever of the worker's threads asks first."""
    global _metrics, _REGISTRY
    if _metrics is None:
        with _made:
            if _metrics is None:
                from prometheus_client import CollectorRegistry

                _REGISTRY = _REGISTRY or CollectorRegistry()
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
        if request.environ.get(PARKED_NOW):
            return response  # thrown away: the run that answers is counted
        note_request(
            request.method,
            request.url_rule.rule if request.url_rule is not None else "unmatched",
            response.status_code,
            time.monotonic() - started if started is not None else 0.0,
            path=request.path,
            remote=request.remote_addr,
            actor=g.get("actor"),
            json_logs=json_logs,
        )
        return response


def note_request(
    method: str,
    route: str,
    status: int,
    elapsed: float,
    *,
    path: str,
    remote: Optional[str],
    actor: Optional[str],
    json_logs: bool,
) -> None:
    """Count and time one answered request, and log it as a JSON line when the app's
    NSO_REPO_LOG_FORMAT says so: Flask's, and those answered before Flask
    (fleet/agent_lane.py)."""
    # A fixed set of labels whatever a client sends: FOO00001 is "other".
    label = method if method in METHODS else "other"

    def count(m: _Metrics) -> None:
        m.requests.labels(label, route, str(status)).inc()
        m.seconds.labels(label, route).observe(elapsed)

    record(count)
    if json_logs:
        log.info(
            json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                    "remote": remote,
                    "actor": actor,
                }
            )
        )


def exposition(sessions: Callable[[], Any], cache_seconds: float) -> bytes:
    """The text Prometheus reads: this server's processes' metrics and the database's."""
    from prometheus_client import CollectorRegistry, generate_latest

    record(lambda m: None)  # every family appears, at zero, from the first scrape
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(_REGISTRY)
    return own + _database_text(sessions, cache_seconds)


# The database's part of the last scrape, by the app's session factory: (when, text).
_cache: dict[int, tuple[float, bytes]] = {}
_cache_lock = threading.Lock()


def _database_text(sessions: Callable[[], Any], cache_seconds: float) -> bytes:
    """The database's gauges, read at most every ``cache_seconds`` per process
    (NSO_REPO_METRICS_CACHE): a scraper, or anyone with a viewer token calling in a loop,
    costs a few queries that often, whatever the size of the fleet and its history."""
    from prometheus_client import CollectorRegistry, generate_latest

    with _cache_lock:
        at, text = _cache.get(id(sessions), (float("-inf"), b""))
        if time.monotonic() - at >= cache_seconds:
            registry = CollectorRegistry()
            registry.register(_DatabaseCollector(sessions))
            text = generate_latest(registry)
            _cache[id(sessions)] = (time.monotonic(), text)
        return text


def _seconds(later: Any, earlier: Any, dialect: str) -> Any:
    """SQL for the seconds from ``earlier`` to ``later`` on this database."""
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


class _DatabaseCollector:
    """Gauges read from the database (the same from any process), each aggregated by the
    database; every known state is given, at 0 when none is in it."""

    def __init__(self, sessions: Callable[[], Any]) -> None:
        self.sessions = sessions

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily
        from sqlalchemy import case

        from repo_server.catalog.models import Artifact
        from repo_server.db import utcnow
        from repo_server.fleet.models import Node
        from repo_server.rollouts.models import ROLLOUT_STATES, Rollout
        from repo_server.upgrades.job_states import JOB_STATES
        from repo_server.upgrades.models import Job, Step

        with self.sessions() as session:
            dialect = session.get_bind().dialect.name
            jobs = GaugeMetricFamily(
                "nso_repo_jobs", "Jobs by kind and state", labels=["kind", "state"]
            )
            found = {
                (kind, state): count
                for kind, state, count in session.execute(
                    select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
                )
            }
            for kind in sorted({k for k, _ in found} | {"upgrade"}):
                for state in JOB_STATES:
                    jobs.add_metric([kind, state], found.get((kind, state), 0))
            yield jobs
            rollouts = GaugeMetricFamily(
                "nso_repo_rollouts", "Fleet rollouts by state", labels=["state"]
            )
            by_state = {
                state: count
                for state, count in session.execute(
                    select(Rollout.state, func.count()).group_by(Rollout.state)
                )
            }
            for state in ROLLOUT_STATES:
                rollouts.add_metric([state], by_state.get(state, 0))
            yield rollouts
            since = utcnow() - timedelta(days=1)
            duration = _seconds(Step.finished_at, Step.started_at, dialect)
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
                labels=["step", "state"],
            )
            for name, state, count, total, longest in session.execute(
                select(Step.name, Step.state, func.count(), func.sum(duration), func.max(duration))
                .where(Step.finished_at >= since, Step.started_at.is_not(None))
                .group_by(Step.name, Step.state)
            ):
                steps_n.add_metric([name, state], count)
                steps_s.add_metric([name, state], max(0.0, float(total or 0)))
                steps_max.add_metric([name, state], max(0.0, float(longest or 0)))
            yield from (steps_n, steps_s, steps_max)
            agents = GaugeMetricFamily(
                "nso_repo_agents_last_seen",
                "Enrolled nodes by how long ago their agent was last seen (within: at most)",
                labels=["within"],
            )
            now = utcnow()
            bucket = case(
                (Node.last_seen_at.is_(None), "never"),
                *(
                    (Node.last_seen_at >= now - timedelta(seconds=limit), label)
                    for limit, label in AGE_BUCKETS
                ),
                else_="longer",
            )
            ages = {
                label: count
                for label, count in session.execute(
                    select(bucket, func.count())
                    .where(Node.enrolled_at.is_not(None))
                    .group_by(bucket)
                )
            }
            for label in [lab for _, lab in AGE_BUCKETS] + ["longer", "never"]:
                agents.add_metric([label], ages.get(label, 0))
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
