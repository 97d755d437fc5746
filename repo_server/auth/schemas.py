"""Token and audit schemas."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from repo_server.auth.models import ROLES, TOKEN_NAME_MAX
from repo_server.db import MAX_ID


class TokenSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=TOKEN_NAME_MAX))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    created_at = fields.DateTime(dump_only=True)
    created_by = fields.String(dump_only=True)
    last_used_at = fields.DateTime(dump_only=True, allow_none=True)
    revoked_at = fields.DateTime(dump_only=True, allow_none=True)
    active = fields.Boolean(dump_only=True)


class NewTokenSchema(TokenSchema):
    token = fields.String(
        dump_only=True, metadata={"description": "The secret. Shown this once, never again."}
    )


class AuditEventSchema(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    actor = fields.String()
    action = fields.String()
    target = fields.String()
    details = fields.Dict()


class AuditQueryArgs(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    before_id = fields.Integer(
        validate=validate.Range(min=1, max=MAX_ID),
        metadata={"description": "Page backwards from this event id"},
    )
    action = fields.String()
    actor = fields.String(
        validate=validate.Length(max=128),
        metadata={"description": "Only this actor's events, e.g. operator:alice"},
    )
