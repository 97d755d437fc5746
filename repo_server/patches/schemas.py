"""Schemas of patch rollouts (docs/patches.md)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from repo_server.fleet.schemas import JsonBool
from repo_server.patches.models import ACTIONS

# Far above a real fleet; a bound keeps one request's IN lists and messages finite.
MAX_TARGETS = 5000


class RolloutArgs(Schema):
    patch = fields.String(
        required=True,
        validate=validate.Length(min=1, max=255),
        metadata={
            "description": "The bundle's file name in the catalog: nso-<VSN>-patch-<ID>.tar.gz"
        },
    )
    action = fields.String(
        load_default="apply",
        validate=validate.OneOf(ACTIONS),
        metadata={"description": "apply (default) or remove"},
    )
    nodes = fields.List(
        fields.String(validate=validate.Length(min=1, max=128)),
        load_default=list,
        validate=validate.Length(max=MAX_TARGETS),
        metadata={"description": "Nodes to patch"},
    )
    groups = fields.List(
        fields.String(validate=validate.Length(min=1, max=128)),
        load_default=list,
        validate=validate.Length(max=MAX_TARGETS),
        metadata={"description": "HA groups whose every member is patched, secondaries first"},
    )
    all_affected = JsonBool(
        load_default=False,
        metadata={
            "description": "Every node whose last heartbeat says it runs the bundle's NSO "
            "version exactly (alone: not with nodes or groups)"
        },
    )


class RolloutListArgs(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class RolloutNodeSchema(Schema):
    node = fields.String()
    group = fields.String(allow_none=True, metadata={"description": "Its HA group, if any"})
    job_id = fields.Integer()
    state = fields.String(
        metadata={"enum": ["queued", "running", "succeeded", "failed", "skipped"]}
    )
    result = fields.Dict(
        allow_none=True,
        metadata={"description": "The agent's result: modules, changed (and kept, on removal)"},
    )
    message = fields.String(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class RolloutSummarySchema(Schema):
    id = fields.Integer()
    patch = fields.String(metadata={"description": "The bundle's file name"})
    patch_id = fields.String()
    nso_version = fields.String(metadata={"description": "The release the bundle is built for"})
    action = fields.String(metadata={"enum": list(ACTIONS)})
    request = fields.Dict(metadata={"description": "nodes, groups, all_affected as asked"})
    created_by = fields.String()
    created_at = fields.DateTime()
    url = fields.String()
    state = fields.String(
        metadata={
            "enum": ["running", "succeeded", "failed"],
            "description": "running while a node waits or works; succeeded when every one did",
        }
    )
    counts = fields.Dict(metadata={"description": "How many nodes are in each state"})


class LeftOutSchema(Schema):
    node = fields.String()
    reason = fields.String()


class RolloutSchema(RolloutSummarySchema):
    nodes = fields.List(fields.Nested(RolloutNodeSchema))
    left_out = fields.List(
        fields.Nested(LeftOutSchema),
        metadata={
            "description": "In the answer to all_affected: the nodes on the release that got "
            "no job, and why (an inventory older than 5 minutes; an HA group not all on the "
            "release)"
        },
    )


class PatchSignatureSchema(Schema):
    key_id = fields.String(metadata={"description": "sha256 of the raw public key, hex"})
    signed_at = fields.String()
    signed_by = fields.String()
    signature = fields.String()
    public_key = fields.String()
    valid = fields.Boolean(
        metadata={"description": "Whether it still verifies over today's manifest"}
    )


class PatchManifestSchema(Schema):
    patch = fields.String()
    manifest = fields.String(
        metadata={"description": "The canonical manifest: exactly the bytes that are signed"}
    )
    manifest_sha256 = fields.String()
    signatures = fields.List(fields.Nested(PatchSignatureSchema))
