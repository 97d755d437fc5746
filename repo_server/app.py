"""The application factory (the flaskr pattern): `create_app(overrides=None)`."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Optional

from flask import Flask, jsonify
from flask_smorest import Api
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

from repo_server import __version__, request_guards
from repo_server.config import Settings, load_settings
from repo_server.context import AppState, close_db_session, note_failed_authentication
from repo_server.datadir import secure_data_dir
from repo_server.db import make_engine, make_sessionmaker
from repo_server.errors import AppError
from repo_server.models import register_models
from repo_server.storage import make_storage

log = logging.getLogger(__name__)

# Werkzeug's own exceptions (404 route, 405 method, 413 too large...) mapped to stable codes.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_failed",
}


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"description": "Stable machine-readable code"})
    message = fields.String(required=True, metadata={"description": "What was wrong, what to do"})
    details = fields.Dict(metadata={"description": "Facts about this error, by code"})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


class RepoApi(Api):
    """flask-smorest's Api with the server's own error shape in the OpenAPI document."""

    ERROR_SCHEMA = ErrorSchema


HTTP_ADVICE = {
    404: "no such endpoint: see /api/openapi.json for the API's paths",
    405: "this endpoint does not take that method: see the Allow header",
    416: "the Range is outside the file: check its size with HEAD (Content-Length)",
}


def create_app(
    overrides: Optional[dict[str, Any]] = None, settings: Optional[Settings] = None
) -> Flask:
    settings = (settings or load_settings()).with_overrides(**(overrides or {}))
    secure_data_dir(settings)

    app = Flask(__name__, static_folder=None)
    app.url_map.converters["int"] = request_guards.IdConverter
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app.config.update(
        API_TITLE="NSO artifact repository",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        # Uploads enforce their own limit while streaming; see catalog/receive.py.
        MAX_CONTENT_LENGTH=None,
        MAX_FORM_MEMORY_SIZE=1 << 20,
        JSON_SORT_KEYS=False,
    )
    register_models()
    engine = make_engine(settings.resolved_database_url)
    app.extensions["nso_repo"] = AppState(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        storage=make_storage(settings),
    )
    app.teardown_appcontext(close_db_session)

    api = RepoApi(
        app,
        spec_kwargs={
            "info": {"description": "Catalog of NSO installers, packages, NEDs and patches."}
        },
    )
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})

    from repo_server.auth.views import blp as auth_blp
    from repo_server.catalog.blob_views import blp as blob_blp
    from repo_server.catalog.views import blp as catalog_blp
    from repo_server.fleet.views import blp as fleet_blp
    from repo_server.health import blp as health_blp
    from repo_server.health import probes as probes_blp
    from repo_server.patches.views import blp as patches_blp
    from repo_server.rollouts.views import blp as rollouts_blp
    from repo_server.upgrades.group_views import blp as groups_blp
    from repo_server.upgrades.ha_package_views import blp as group_packages_blp
    from repo_server.upgrades.ned_views import blp as ned_blp
    from repo_server.upgrades.views import blp as upgrades_blp

    for blueprint in (
        catalog_blp,
        blob_blp,
        upgrades_blp,
        groups_blp,
        group_packages_blp,
        ned_blp,
        patches_blp,
        rollouts_blp,
        fleet_blp,
        auth_blp,
        health_blp,
        probes_blp,
    ):
        api.register_blueprint(blueprint)

    from repo_server.console.views import bp as console_bp

    app.register_blueprint(console_bp)
    _register_error_handlers(app)
    from repo_server import observability

    observability.install(app, json_logs=settings.log_format == "json")
    request_guards.install(app, settings)
    # An agent's poll with nothing to do is answered before Flask (fleet/idle_polls.py).
    from repo_server.fleet import idle_polls

    app.wsgi_app = idle_polls.middleware(  # type: ignore[method-assign,assignment]
        app.wsgi_app, app.extensions["nso_repo"]
    )
    # Woken polls with a step, and step reports, are served in batches (fleet/agent_lane.py).
    from repo_server.fleet import agent_lane

    app.wsgi_app = agent_lane.middleware(  # type: ignore[method-assign,assignment]
        app.wsgi_app,
        app.extensions["nso_repo"],
        # The bytes the views' answers have (flask's jsonify: compact, not pretty).
        partial(app.json.dumps, indent=None, separators=(",", ":")),
    )
    app.wsgi_app = _with_ticker(app.wsgi_app, app.extensions["nso_repo"])  # type: ignore[method-assign]
    return app


def _with_ticker(wsgi_app: Any, app_state: AppState) -> Any:
    """Start the rollout driver's clock with the first request this process serves."""

    def serve(environ: Any, start_response: Any) -> Any:
        if app_state.ticker is None:
            app_state.start_ticker()
        return wsgi_app(environ, start_response)

    return serve


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(error: AppError) -> Any:
        response = jsonify(error.to_dict())
        response.status_code = error.status
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="nso-repo"'
            note_failed_authentication(error)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Any:
        status = error.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = error.description or error.name
        body: dict[str, Any] = {"code": code, "message": message}
        # flask-smorest puts schema validation messages here.
        messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
        if messages:
            body["code"] = "validation_failed"
            body["details"] = {"fields": messages}
            body["message"] = "the request did not pass validation: see details.fields"
        # werkzeug's generic text gives way to advice; a description of its own stays.
        generic = error.description == type(error).description
        if status in HTTP_ADVICE and not messages and generic:
            body["message"] = HTTP_ADVICE[status]
        response = jsonify({"error": body})
        response.status_code = status
        # Keep what werkzeug adds (Allow on 405, Content-Range on 416...), not its body type.
        for name, value in error.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Any:
        log.exception("unhandled error")
        body = {"code": "internal_error", "message": "internal error: see the server log"}
        return jsonify({"error": body}), 500
