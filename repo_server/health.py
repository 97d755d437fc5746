"""Liveness and readiness: the database answers and the storage backend is reachable."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from sqlalchemy import text

from repo_server import __version__
from repo_server.context import db_session, state
from repo_server.errors import AppError

blp = Blueprint("health", __name__, url_prefix="/api/v1", description="Server health")


@blp.route("/health")
@blp.response(200)
def health() -> Any:
    """Database and storage reachable. No token needed."""
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
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "degraded", "version": __version__, "checks": checks}
    return body, 200 if healthy else 503
