"""Token management and the audit log over HTTP."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.auth import service
from repo_server.auth.schemas import AuditEventSchema, AuditQueryArgs, NewTokenSchema, TokenSchema
from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, principal, require

blp = Blueprint("auth", __name__, url_prefix="/api/v1", description="Tokens and audit log")


@blp.route("/tokens")
class Tokens(MethodView):
    @require("token:manage")
    @blp.doc(security=BEARER)
    @blp.response(200, TokenSchema(many=True))
    def get(self) -> Any:
        """All tokens (secrets are never shown again)."""
        return service.list_tokens(db_session())

    @require("token:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(TokenSchema)
    @blp.response(201, NewTokenSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a token; the response carries its secret once."""
        token, secret = service.create_token(
            db_session(), name=body["name"], role=body["role"], actor=principal().actor
        )
        shown = {name: getattr(token, name) for name in TokenSchema().fields}
        return SimpleNamespace(**shown, token=secret)


@blp.route("/tokens/<int:token_id>")
class TokenItem(MethodView):
    @require("token:manage")
    @blp.doc(security=BEARER)
    @blp.response(200, TokenSchema)
    def delete(self, token_id: int) -> Any:
        """Revoke a token. It stops working at once; the row stays for the audit trail."""
        return service.revoke_token(db_session(), token_id, actor=principal().actor)


@blp.route("/audit")
class Audit(MethodView):
    @require("audit:read")
    @blp.doc(security=BEARER)
    @blp.arguments(AuditQueryArgs, location="query", as_kwargs=True)
    @blp.response(200, AuditEventSchema(many=True))
    def get(self, **args: Any) -> Any:
        """Audit events, newest first."""
        return service.list_audit(db_session(), **args)
