"""Schemas of the fleet API and the agent protocol (docs/agent-protocol.md)."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate


class NodeSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    hostname = fields.String(dump_only=True, allow_none=True)
    agent_version = fields.String(dump_only=True, allow_none=True)
    inventory = fields.Dict(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    enrolled_at = fields.DateTime(dump_only=True, allow_none=True)
    last_seen_at = fields.DateTime(dump_only=True, allow_none=True)
    inventory_at = fields.DateTime(dump_only=True, allow_none=True)


class NodeNameSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))


class NodeRefSchema(Schema):
    id = fields.Integer()
    name = fields.String()


class NewNodeSchema(Schema):
    node = fields.Nested(NodeSchema)
    enrollment_token = fields.String(metadata={"description": "One-time, valid 24 h"})


class EnrollRequestSchema(Schema):
    enrollment_token = fields.String(required=True)
    hostname = fields.String(load_default=None, allow_none=True)
    agent_version = fields.String(load_default=None, allow_none=True)


class EnrollAnswerSchema(Schema):
    node = fields.Nested(NodeRefSchema)
    token = fields.String(metadata={"description": "The node's agent token. Shown once."})


class HeartbeatSchema(Schema):
    class Meta:
        unknown = INCLUDE

    agent_version = fields.String(load_default=None, allow_none=True)
    inventory = fields.Dict(required=True)


class NextArgs(Schema):
    wait = fields.Integer(load_default=30, validate=validate.Range(min=0, max=60))


class StepReportSchema(Schema):
    report_id = fields.String(required=True, validate=validate.Length(min=8, max=64))
    state = fields.String(
        required=True, validate=validate.OneOf(("running", "succeeded", "failed"))
    )
    progress = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(0, 100))
    message = fields.String(load_default=None, allow_none=True)
    log_tail = fields.String(load_default=None, allow_none=True)
    result = fields.Dict(load_default=dict)
    nso_seconds = fields.Float(
        load_default=None,
        allow_none=True,
        metadata={"description": "Seconds spent waiting on NSO's own commands in this step"},
    )
