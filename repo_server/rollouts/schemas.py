"""Schemas of fleet rollouts and maintenance windows (docs/rollouts.md)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from repo_server.rollouts.models import ROLLOUT_STATES, TARGET_STATES

MAX_NAMES = 10_000
_name = fields.String(validate=validate.Length(min=1, max=128))


class SelectionSchema(Schema):
    nodes = fields.List(
        _name,
        load_default=list,
        validate=validate.Length(max=MAX_NAMES),
        metadata={"description": "Standalone nodes, by name (the first is the canary)"},
    )
    groups = fields.List(
        _name,
        load_default=list,
        validate=validate.Length(max=MAX_NAMES),
        metadata={"description": "HA groups, each one target"},
    )
    labels = fields.List(
        _name,
        load_default=list,
        validate=validate.Length(max=100),
        metadata={"description": "Nodes with any of these labels (their groups whole)"},
    )
    versions = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        load_default=list,
        validate=validate.Length(max=100),
        metadata={"description": "Nodes running one of these releases now"},
    )
    all = fields.Boolean(load_default=False, metadata={"description": "Every node of the fleet"})


class FleetRolloutArgs(Schema):
    release = fields.String(required=True, validate=validate.Length(min=1, max=64))
    select = fields.Nested(SelectionSchema, required=True)
    canary = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_NAMES),
        metadata={"description": "Targets in the first wave, alone"},
    )
    waves = fields.List(
        fields.Integer(validate=validate.Range(min=1, max=100)),
        load_default=lambda: [100],
        validate=validate.Length(min=1, max=20),
        metadata={"description": "Cumulative percentages of the other targets, e.g. [10, 50, 100]"},
    )
    success_threshold = fields.Integer(
        validate=validate.Range(min=0, max=100),
        load_default=100,
        metadata={"description": "Percent of a wave that must succeed before the next one opens"},
    )
    error_threshold = fields.Integer(
        validate=validate.Range(min=0, max=100),
        load_default=0,
        metadata={"description": "Percent of a wave that may fail; more pauses the rollout"},
    )
    concurrency = fields.Integer(
        validate=validate.Range(min=1, max=1000),
        load_default=1,
        metadata={"description": "Targets upgraded at once"},
    )
    job_minutes = fields.Integer(
        validate=validate.Range(min=1, max=1440),
        load_default=60,
        metadata={
            "description": "How long one target's job may take: none starts in a window that closes sooner"
        },
    )
    write_policy = fields.String(
        load_default="safe", metadata={"description": "For HA groups: safe or available"}
    )
    gates = fields.List(
        _name,
        load_default=list,
        validate=validate.Length(max=50),
        metadata={"description": "Nodes or groups that must run the release already"},
    )
    allow_extra_packages = fields.Boolean(load_default=False)
    strip_removed_ncs_conf = fields.Boolean(load_default=False)


class RolloutReasonArgs(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))


class FleetRolloutListArgs(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class RolloutWaveSchema(Schema):
    wave = fields.Integer()
    canary = fields.Boolean()
    size = fields.Integer()
    open = fields.Boolean(metadata={"description": "Its targets may start"})
    pending = fields.Integer()
    running = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    refused = fields.Integer()
    cancelled = fields.Integer()


class RolloutTargetSchema(Schema):
    name = fields.String()
    kind = fields.String(metadata={"enum": ["node", "group"]})
    wave = fields.Integer()
    state = fields.String(metadata={"enum": list(TARGET_STATES)})
    job_id = fields.Integer(allow_none=True)
    attempts = fields.Integer()
    reason = fields.String(
        allow_none=True, metadata={"description": "Why it is not on the release (yet)"}
    )
    reasons = fields.List(fields.String())
    updated_at = fields.DateTime()


class FleetRolloutSummarySchema(Schema):
    id = fields.Integer()
    url = fields.String()
    release = fields.String()
    state = fields.String(metadata={"enum": list(ROLLOUT_STATES)})
    reason = fields.String(allow_none=True)
    created_at = fields.DateTime()
    created_by = fields.String()
    finished_at = fields.DateTime(allow_none=True)
    canary = fields.Integer()
    waves = fields.List(fields.Integer())
    success_threshold = fields.Integer()
    error_threshold = fields.Integer()
    concurrency = fields.Integer()
    job_minutes = fields.Integer()
    write_policy = fields.String()
    gates = fields.List(fields.String())
    selection = fields.Dict()
    open_wave = fields.Integer()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    wave_progress = fields.List(fields.Nested(RolloutWaveSchema))


class FleetRolloutSchema(FleetRolloutSummarySchema):
    targets = fields.List(fields.Nested(RolloutTargetSchema))


class PlannedTargetSchema(Schema):
    kind = fields.String()
    name = fields.String()
    nodes = fields.List(fields.String())
    wave = fields.Integer()
    state = fields.String(metadata={"enum": ["pending", "refused", "succeeded"]})
    reason = fields.String(allow_none=True)
    reasons = fields.List(fields.String())
    drops_patches = fields.List(
        fields.Dict(),
        metadata={
            "description": "The loaded patches the move to the release leaves behind, by "
            "their nodes' last heartbeats: {node, module, patch_id}; and those a patch job "
            "holding the node applies now: {node, module, patch_id, job}"
        },
    )


class FleetRolloutPlanSchema(Schema):
    release = fields.String()
    selection = fields.Dict()
    options = fields.Dict()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    waves = fields.List(fields.Dict())
    targets = fields.List(fields.Nested(PlannedTargetSchema))


class WindowArgs(Schema):
    node = _name
    group = _name
    days = fields.String(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "mon-fri, sat,sun or daily"},
    )
    start = fields.String(required=True, metadata={"description": "HH:MM, local time, 24-hour"})
    minutes = fields.Integer(required=True, metadata={"description": "How long it stays open"})
    timezone = fields.String(
        load_default="UTC",
        validate=validate.Length(min=1, max=64),
        metadata={"description": "IANA name: UTC, Europe/Oslo"},
    )


class WindowSchema(Schema):
    id = fields.Integer()
    node = fields.String(allow_none=True)
    group = fields.String(allow_none=True)
    days = fields.String()
    start = fields.String()
    minutes = fields.Integer()
    timezone = fields.String()
