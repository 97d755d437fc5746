"""Gunicorn settings for the server; `gunicorn.conf.py` and `nso-repo serve` both use these.

Uploads of NSO installers take minutes on slow links, so the worker timeout is long, and a
threaded worker keeps one slow upload from blocking every other request.
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("NSO_REPO_BIND", "127.0.0.1:8420")
workers = int(os.environ.get("NSO_REPO_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("NSO_REPO_THREADS", "8"))
timeout = int(os.environ.get("NSO_REPO_WORKER_TIMEOUT", "900"))
graceful_timeout = 30
keepalive = 5
# Request bodies stream through the app; gunicorn must not cap header sizes below defaults.
limit_request_line = 8190
accesslog = os.environ.get("NSO_REPO_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("NSO_REPO_LOG_LEVEL", "info").lower()
wsgi_app = "repo_server.wsgi:app"


def on_starting(server: Any) -> None:
    """Once, in the master, before workers fork: migrate and make the first admin token."""
    from repo_server.bootstrap import prepare

    prepare()
