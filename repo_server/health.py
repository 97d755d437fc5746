"""Health, liveness and readiness (the database answers, the storage is reachable), and
the Prometheus metrics (repo_server/observability.py)."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_smorest import Blueprint
from sqlalchemy import text

from repo_server import __version__
from repo_server.auth.roles import roles_for
from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, optional_principal, require, state
from repo_server.errors import AppError
from repo_server.observability import exposition

blp = Blueprint("health", __name__, url_prefix="/api/v1", description="Server health")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
probes = Blueprint("probes", __name__, url_prefix="", description="Probes and metrics")


@probes.route("/healthz")
@probes.response(200)
def healthz() -> Any:
    """Liveness: the process answers. Touches neither the database nor the storage."""
    return {"status": "alive"}


@probes.route("/readyz")
@probes.response(200)
def readyz() -> Any:
    """Readiness: the database answers and the storage is reachable; 503 otherwise."""
    checks = _checks()
    ready = all(v == "ok" for v in checks.values())
    return {"status": "ready" if ready else "not ready"}, 200 if ready else 503


@probes.route("/metrics")
@require("metrics:read")
@probes.doc(
    security=BEARER,
    responses={"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
def metrics() -> Any:
    """Prometheus metrics (observability.py): requests, long-polls waiting, jobs by state,
    step durations, agent last-seen ages, catalogued bytes."""
    db_session().close()  # the scrape reads with sessions of its own
    app = state()
    return Response(
        exposition(app.sessions, app.settings.metrics_cache),
        mimetype="text/plain",
        content_type=CONTENT_TYPE,
    )


def _checks() -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        db_session().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        state().storage.check()
        checks["storage"] = "ok"
    except AppError as exc:
        checks["storage"] = f"error: {exc.message}"
    return checks


@blp.route("/health")
@blp.response(200)
def health() -> Any:
    """Up or down; no token needed. Admins and operators also get the version and each
    check: what a probe needs is not what an attacker should learn."""
    checks = _checks()
    healthy = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "up" if healthy else "down"}
    # Without a database no token can be checked: then everyone gets up or down.
    who = optional_principal() if checks["database"] == "ok" else None
    if who is not None and who.role in roles_for("health:details"):
        body.update(version=__version__, checks=checks)
    return body, 200 if healthy else 503
