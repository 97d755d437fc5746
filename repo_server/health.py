"""Liveness and readiness: the database answers and the storage backend is reachable."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from sqlalchemy import text

from repo_server import __version__
from repo_server.auth.roles import roles_for
from repo_server.context import db_session, optional_principal, state
from repo_server.errors import AppError

blp = Blueprint("health", __name__, url_prefix="/api/v1", description="Server health")


@blp.route("/health")
@blp.response(200)
def health() -> Any:
    """Up or down; no token needed. Admins and operators also get the version and each
    check: what a probe needs is not what an attacker should learn."""
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
    body: dict[str, Any] = {"status": "up" if healthy else "down"}
    # Without a database no token can be checked: then everyone gets up or down.
    who = optional_principal() if checks["database"] == "ok" else None
    if who is not None and who.role in roles_for("health:details"):
        body.update(version=__version__, checks=checks)
    return body, 200 if healthy else 503
