"""Schemas of the fleet API and the agent protocol (docs/agent-protocol.md)."""

from __future__ import annotations

import json
import math
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from repo_server.fleet.models import NODE_NAME_MAX
from repo_server.pages import PageSchema
from repo_server.upgrades.results import COUNT_MAX, LIST_MAX, LOG_TAIL_MAX, MESSAGE_MAX


class NodeSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=NODE_NAME_MAX))
    hostname = fields.String(dump_only=True, allow_none=True)
    agent_version = fields.String(dump_only=True, allow_none=True)
    inventory = fields.Dict(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    enrolled_at = fields.DateTime(dump_only=True, allow_none=True)
    last_seen_at = fields.DateTime(dump_only=True, allow_none=True)
    inventory_at = fields.DateTime(dump_only=True, allow_none=True)
    running_version = fields.String(dump_only=True, allow_none=True)
    assigned_version = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "The release a fleet rollout assigned to the node"},
    )
    labels = fields.List(fields.String(), dump_only=True, allow_none=True)
    rollout = fields.Dict(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "Its target in the latest rollout that named it: states, wave, job, "
            "and why the node does not run the assigned release (a window, preflight, a failure)"
        },
    )


class NodePageSchema(PageSchema):
    items = fields.List(fields.Nested(NodeSchema))


class NodeQueryArgs(Schema):
    version = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "the NSO release nodes run, exactly; none: no running NSO"},
    )
    q = fields.String(
        validate=validate.Length(min=1, max=128),
        metadata={"description": "part of the node's name or hostname (any case)"},
    )
    label = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "only nodes that carry this label"},
    )
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class NodeLabelsSchema(Schema):
    labels = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        required=True,
        validate=validate.Length(max=50),
        metadata={"description": "The node's labels, all of them (replaces the old ones)"},
    )


class NodeLabelChangeSchema(Schema):
    add = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        load_default=list,
        validate=validate.Length(max=50),
    )
    remove = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        load_default=list,
        validate=validate.Length(max=50),
    )


class NodeNameSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=NODE_NAME_MAX))


class NodeRefSchema(Schema):
    id = fields.Integer()
    name = fields.String()


class NewNodeSchema(Schema):
    node = fields.Nested(NodeSchema)
    enrollment_token = fields.String(metadata={"description": "One-time, valid 24 h"})


class EnrollRequestSchema(Schema):
    enrollment_token = fields.String(required=True, validate=validate.Length(max=128))
    hostname = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    agent_version = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=64)
    )


class EnrollAnswerSchema(Schema):
    node = fields.Nested(NodeRefSchema)
    token = fields.String(metadata={"description": "The node's agent token. Shown once."})


# Inventory limits: far above what a real host reports, low enough that no heartbeat can
# make the nodes table (or a plan reading it) large.
INVENTORY_MAX_BYTES = 512 * 1024
EXTRA_FIELDS_MAX = 32
EXTRA_FIELD_MAX_BYTES = 16 * 1024


def _text(size: int, **kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(max=size), **kwargs)


def _count(**kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(0, COUNT_MAX), **kwargs)


class JsonBool(fields.Boolean):
    """true or false only: not 1, "yes" or "on"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def _list(item: fields.Field, size: int = LIST_MAX) -> fields.List:
    return fields.List(item, validate=validate.Length(max=size))


class _Open(Schema):
    """Fields it does not declare are kept (a newer agent's), within the inventory's size."""

    class Meta:
        unknown = INCLUDE


class InventoryPackageSchema(_Open):
    name = _text(255, required=True)
    version = _text(64, required=True)
    file = _text(255)
    target = _text(4096, metadata={"description": "Host path the load path's link points at"})
    oper_status = _text(64, allow_none=True, metadata={"description": "Absent: unknown"})


class InventoryPatchSchema(_Open):
    module = _text(255)
    file = _text(255, allow_none=True, metadata={"description": "null: loaded, no file"})
    loaded = JsonBool(metadata={"description": "Listed by NSO; absent: unknown"})
    patch_id = _text(128, allow_none=True)
    nso_version = _text(64, allow_none=True)


class InventoryHaSchema(_Open):
    enabled = JsonBool()
    mode = _text(32, allow_none=True)
    current_id = _text(255, allow_none=True)
    read_only = JsonBool()
    assigned_role = _text(32, allow_none=True)
    connected_secondaries = _list(_text(255), 64)
    primary_id = _text(255, allow_none=True)
    be_secondary_result = _text(512, allow_none=True)


class InventorySchema(_Open):
    """docs/agent-protocol.md, "Heartbeat and inventory": a fact the agent could not read is
    left out (or null where the table says so), never guessed."""

    installed_releases = _list(_text(64), 200)
    current = _text(64, allow_none=True)
    running_version = _text(64, required=True, allow_none=True)
    status = _text(32, required=True)
    packages = _list(fields.Nested(InventoryPackageSchema))
    patches = _list(fields.Nested(InventoryPatchSchema))
    ha = fields.Nested(InventoryHaSchema)
    cli_error = _text(4000, allow_none=True)
    disk_free_bytes = fields.Dict(
        keys=_text(4096), values=_count(allow_none=True), validate=validate.Length(max=32)
    )
    os = fields.Dict(keys=_text(64), values=_text(256), validate=validate.Length(max=32))
    java = _text(64, allow_none=True)
    glibc = _text(64, allow_none=True)
    ncs_conf_elements = _list(_text(256), 5000)
    crypto_keys = _list(_text(128), 100)
    crypto_keys_fingerprint = fields.String(
        allow_none=True,
        validate=validate.Regexp(r"^sha256:[0-9a-f]{64}$"),
        metadata={"description": "sha256 of the crypto keys file, never the keys"},
    )
    load_paths = _list(_text(4096), 64)
    cdb_bytes = _count()
    run_dir_bytes = _count()
    errors = _list(_text(4000), 50)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _bounded(self, _data: Any, original: Any, **_kwargs: Any) -> None:
        if not isinstance(original, dict):
            return
        extra = [key for key in original if key not in self.declared_fields]
        if len(extra) > EXTRA_FIELDS_MAX:
            raise ValidationError(
                f"{len(extra)} undeclared fields, over {EXTRA_FIELDS_MAX}: send the documented "
                "ones (docs/agent-protocol.md)",
                "_schema",
            )
        for key in extra:
            if len(str(key)) > 64 or _json_size(original[key]) > EXTRA_FIELD_MAX_BYTES:
                raise ValidationError(
                    f"an undeclared field is kept only up to {EXTRA_FIELD_MAX_BYTES} bytes of "
                    "JSON under a name of at most 64 characters",
                    str(key)[:64],
                )
        if _non_finite(original):
            # 1e999 parses as infinity: stored, it would be served as `Infinity`, which is
            # not JSON (SQLite), or refused by the database with no field named (PostgreSQL).
            raise ValidationError(
                "a number in the inventory is too large to be finite (such as 1e999): send "
                "integers from 0 to 2^63-1",
                "_schema",
            )
        size = _json_size(original)
        if size > INVENTORY_MAX_BYTES:
            raise ValidationError(
                f"the inventory is {size} bytes of JSON, over {INVENTORY_MAX_BYTES}", "_schema"
            )


def _non_finite(value: Any) -> bool:
    """Whether ``value`` holds a float that is infinite or NaN, however deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value))
    except (TypeError, ValueError, RecursionError):
        return INVENTORY_MAX_BYTES + 1


def inventory_problems(inventory: Any) -> list[str]:
    """Every field of an inventory that the schema refuses, as ``field: why``; ``[]`` when
    it fits. For inventories stored before heartbeats were checked."""
    if not isinstance(inventory, dict):
        return ["inventory: not an object"]
    return [f"{where}: {why}" for where, why in _flatten(InventorySchema().validate(inventory))]


def _flatten(errors: Any, where: str = "") -> list[tuple[str, str]]:
    if isinstance(errors, dict):
        return [
            pair
            for key, value in errors.items()
            for pair in _flatten(value, f"{where}.{key}" if where else str(key))
        ]
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return [(where, " ".join(errors))]
    return [(where, str(errors))]


class HeartbeatSchema(Schema):
    class Meta:
        unknown = INCLUDE

    agent_version = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=64)
    )
    inventory = fields.Nested(InventorySchema, required=True)


# A long-poll's `wait`, in seconds (fleet/idle_polls.py reads it by the same bounds).
POLL_WAIT_DEFAULT, POLL_WAIT_MAX = 30, 60


class NextArgs(Schema):
    wait = fields.Integer(
        load_default=POLL_WAIT_DEFAULT, validate=validate.Range(min=0, max=POLL_WAIT_MAX)
    )


class StepReportSchema(Schema):
    report_id = fields.String(required=True, validate=validate.Length(min=8, max=64))
    state = fields.String(
        required=True, validate=validate.OneOf(("running", "succeeded", "failed"))
    )
    progress = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(0, 100)
    )
    message = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=MESSAGE_MAX)
    )
    log_tail = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=LOG_TAIL_MAX)
    )
    result = fields.Dict(
        load_default=dict,
        metadata={
            "description": "Only the keys the step declares (docs/agent-protocol.md); "
            "refused whole (422 result_invalid) otherwise"
        },
    )
    nso_seconds = fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(0, 10**7),
        metadata={"description": "Seconds spent waiting on NSO's own commands in this step"},
    )
