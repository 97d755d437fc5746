"""Gunicorn settings for the server; `gunicorn.conf.py` and `nso-repo serve` both use these.

Uploads of NSO installers take minutes on slow links, so the worker timeout is long, and a
threaded worker keeps one slow upload from blocking every other request.
"""

from __future__ import annotations

import gc
import os
import ssl
import sys
from typing import Any, Callable

from repo_server.config import DEFAULT_THREADS, MAX_PARKED_POLLS

# Connections a worker takes beside the waiting long-polls: operators, uploads, agents'
# reports and downloads.
CONNECTIONS_BESIDES_POLLS = 1000

bind = os.environ.get("NSO_REPO_BIND", "127.0.0.1:8420")


def default_workers(database_url: str) -> int:
    """Worker processes when NSO_REPO_WORKERS does not say. Agents long-poll and are woken
    in-process when the database is SQLite: one process only. PostgreSQL relays wake-ups
    between processes (LISTEN/NOTIFY); there, one worker per CPU the server may use, 2 to
    4 (each keeps up to 15 pooled connections and a listener's, and PostgreSQL allows 100
    by default). A fleet's claims and reports are CPU-bound and batched per process: on 2
    CPUs 4 workers cost 22% more server CPU per agent than 2, and the p99 from a patch's
    trigger to the reports was 7.8 s against 6.5 s (bench/patch_latency.py, 4 runs each)."""
    if not database_url.startswith("postgresql"):
        return 1
    # The CPUs this process may run on (a cpuset); where that is unknown, the machine's.
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 2)
    return min(4, max(2, cpus))


workers = int(
    os.environ.get("NSO_REPO_WORKERS")
    or default_workers(os.environ.get("NSO_REPO_DATABASE_URL", ""))
)


def default_threads(database_url: str) -> int:
    """Threads of a worker when NSO_REPO_THREADS does not say. A fleet's claims and reports
    are served in batches (repo_server/group_commit.py), and a request waits for its batch
    in a thread: a batch gathers at most the worker's threads, and each batch costs about
    10 ms before any agent in it. On PostgreSQL 64 threads (against 32) took a patch to
    1,000 agents in a p99 of 2.5-2.95 s against 2.8-4.4 s, at 3.1-3.65 ms of server CPU
    per agent against 3.5-5.3, and a third less PostgreSQL CPU (bench/patch_latency.py,
    2026-12-02). Threads beyond the pool's 15 connections wait for one only when the
    requests are not batched; on SQLite, where every write waits for the one writer, 32."""
    return 64 if database_url.startswith("postgresql") else DEFAULT_THREADS


# gthread whose event loop, not a thread, waits for each request to arrive: slow or idle
# clients cannot take the threads (repo_server/http_worker.py).
worker_class = "repo_server.http_worker.GuardedThreadWorker"


def _positive(name: str, default: str) -> float:
    raw = os.environ.get(name) or default
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise SystemExit(f"{name}={raw!r} is not a positive number: fix it and start again")
    return value


# What GuardedThreadWorker enforces (not gunicorn settings; gunicorn ignores these names):
# seconds a request's head, and a body up to NSO_REPO_MAX_JSON_SIZE, have to arrive;
# seconds a thread waits on a peer that sends or reads nothing; requests in the making one
# client address may have at once (a newer one closes the oldest).
request_timeout = _positive("NSO_REPO_REQUEST_TIMEOUT", "10")
io_timeout = _positive("NSO_REPO_IO_TIMEOUT", "60")
max_pending_per_address = int(_positive("NSO_REPO_MAX_PENDING_PER_ADDRESS", "64"))
# Threads serve requests that run now; an agent waiting for work holds none (its long-poll
# is parked in the event loop: repo_server/parking.py), only a connection.
threads = int(
    os.environ.get("NSO_REPO_THREADS")
    or default_threads(os.environ.get("NSO_REPO_DATABASE_URL", ""))
)
worker_connections = int(
    os.environ.get("NSO_REPO_WORKER_CONNECTIONS") or MAX_PARKED_POLLS + CONNECTIONS_BESIDES_POLLS
)
timeout = int(os.environ.get("NSO_REPO_WORKER_TIMEOUT", "900"))
graceful_timeout = 30
keepalive = 5
# Request bodies stream through the app; gunicorn must not cap header sizes below defaults.
limit_request_line = 8190
accesslog = os.environ.get("NSO_REPO_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("NSO_REPO_LOG_LEVEL", "info").lower()
wsgi_app = "repo_server.wsgi:app"
# TLS served by gunicorn itself (`nso-repo serve --tls-cert/--tls-key`): a PEM certificate
# chain and its key. Behind a proxy that terminates TLS, leave both unset
# (docs/deployment.md).
certfile = os.environ.get("NSO_REPO_TLS_CERT") or None
keyfile = os.environ.get("NSO_REPO_TLS_KEY") or None
# gunicorn 23+ opens a control socket under $HOME; the server needs none, and in the
# container $HOME is the data volume.
control_socket_disable = True


# glibc malloc (mallopt parameters). An upload streams through ~1 MiB bytes objects that
# gunicorn and the app allocate and free in a request thread, i.e. in a non-main arena.
# With the default dynamic thresholds glibc often hands the freed top of that arena back to
# the kernel (madvise) and takes it again on the next read: 200k-800k page faults and
# 2-3.5 s of extra kernel CPU per GiB uploaded, mostly in a fresh worker's first uploads
# (bench/upload_download.py; measured with /proc/<pid>/stat minflt and perf). Fixed
# thresholds keep those buffers in the heap; what is kept is bounded by what was in use.
MALLOC_MMAP_THRESHOLD = 4 << 20  # allocations above this get their own mapping
MALLOC_TRIM_THRESHOLD = 32 << 20  # free heap top kept before it is returned to the kernel


def tune_malloc() -> bool:
    """Set the thresholds above (glibc only; the workers inherit them when forked).

    Skipped when the operator sets these thresholds through the environment
    (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES). True when applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(
        os.environ.get(f"MALLOC_{name.upper()}_") or f"glibc.malloc.{name}" in tunables
        for name in ("trim_threshold", "mmap_threshold")
    ):
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(
        mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
        and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
    )


def ssl_context(config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> Any:
    """gunicorn's own context (certfile, keyfile), with TLS 1.2 as the floor whatever the
    Python's and OpenSSL's defaults."""
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def on_starting(server: Any) -> None:
    """Once, in the master, before workers fork: migrate and make the first admin token;
    tune malloc for streamed uploads."""
    from repo_server.bootstrap import prepare
    from repo_server.errors import AppError

    tune_malloc()
    from repo_server.config import load_settings
    from repo_server.observability import prepare_multiprocess

    try:
        prepare()
        # The workers' metrics meet in one folder (observability.py).
        prepare_multiprocess(load_settings().data_dir)
    except AppError as error:
        # One line that says what to do, not a traceback (`gunicorn -c gunicorn.conf.py`).
        raise SystemExit(f"error: {error.message}") from None


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: its live metrics no longer count."""
    from repo_server.observability import forget_worker

    forget_worker(worker.pid)


def post_worker_init(worker: Any) -> None:
    """In each worker, once the app is loaded: what it loaded is left out of the cyclic
    garbage collector's full passes.

    The app's modules, SQLAlchemy's compiled statements and the like are some 160,000
    objects that live as long as the worker. A full collection walked all of them: about
    0.2 s with the GIL held, in whichever request's allocation set it off, several times
    when a patch reached a fleet (bench/patch_latency.py: 0.7 s of each worker's CPU before,
    0.06-0.12 s after). Frozen, they are never walked again; what requests make is
    collected as before."""
    gc.collect()  # nothing that is already garbage is kept for the worker's life
    gc.freeze()
