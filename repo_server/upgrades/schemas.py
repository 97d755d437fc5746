"""Schemas of releases, plans and jobs."""

from __future__ import annotations

from typing import Any, Optional

from marshmallow import Schema, fields, validate

from repo_server.catalog.releases import signature_checks
from repo_server.fleet.groups import heartbeat_problems
from repo_server.upgrades import ha_windows


class ReleaseCreateSchema(Schema):
    nso_version = fields.String(required=True)
    installer = fields.String(required=True, metadata={"description": "Installer file name"})
    packages = fields.List(fields.String(), load_default=list)
    requirements = fields.Dict(
        load_default=dict,
        metadata={"description": "java, glibc, min_source_version, min_free_bytes"},
    )
    notes = fields.String(load_default="", metadata={"description": "CHANGES / release notes"})


class SignatureSummarySchema(Schema):
    key_id = fields.Function(lambda c: c["signature"].key_id)
    signed_at = fields.Function(lambda c: c["signature"].signed_at.isoformat())
    signed_by = fields.Function(lambda c: c["signature"].signed_by)
    valid = fields.Boolean(
        metadata={"description": "Whether it still verifies over the manifest the server has"}
    )


class SignatureSchema(SignatureSummarySchema):
    signature = fields.Function(lambda c: c["signature"].signature)
    public_key = fields.Function(lambda c: c["signature"].public_key)


class ReleaseSchema(Schema):
    id = fields.Integer()
    nso_version = fields.String()
    branch = fields.Method("_branch")
    installer = fields.Function(lambda r: r.installer.filename)
    packages = fields.Function(lambda r: [a.filename for a in r.packages])
    package_names = fields.Function(lambda r: {a.name: a.version for a in r.packages})
    requirements = fields.Dict()
    notes = fields.String()
    created_at = fields.DateTime()
    created_by = fields.String()
    signatures = fields.Function(
        lambda r: SignatureSummarySchema(many=True).dump(signature_checks(r)),
        metadata={"description": "Release managers' signatures (docs/signed-releases.md)"},
    )

    def _branch(self, release: Any) -> str:
        return ".".join(str(release.nso_version).split(".")[:2])


class ReleaseManifestSchema(Schema):
    nso_version = fields.String()
    manifest = fields.String(
        metadata={"description": "The canonical manifest: exactly the bytes that are signed"}
    )
    manifest_sha256 = fields.String()
    signatures = fields.List(fields.Nested(SignatureSchema))


class ReleaseSignArgs(Schema):
    signature = fields.String(
        required=True,
        validate=validate.Length(max=128),
        metadata={"description": "base64 Ed25519 signature over the manifest's bytes"},
    )
    public_key = fields.String(
        required=True,
        validate=validate.Length(max=1024),
        metadata={"description": "The signer's Ed25519 public key, PEM"},
    )


class UpgradeArgs(Schema):
    to = fields.String(required=True, metadata={"description": "Target NSO release"})
    allow_extra_packages = fields.Boolean(load_default=False)
    strip_removed_ncs_conf = fields.Boolean(load_default=False)


def package_removals() -> fields.List:
    """The ``remove`` argument of a package upgrade, of one node or of an HA group."""
    return fields.List(
        # The package names the agent takes (agent/trust.py): a name it refuses would fail
        # the job after its backups instead of the request now.
        fields.String(
            validate=[
                validate.Length(min=1, max=128),
                validate.Regexp(
                    r"\A(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]*\Z",
                    error="a package name is ASCII letters, digits and _ . - (starting with "
                    "a letter or digit, never '..')",
                ),
            ]
        ),
        load_default=list,
        validate=validate.Length(max=100),
        metadata={
            "description": "Names of loaded packages to deinstall in the same reload (the old "
            "NED after a major NED upgrade); at least one of packages and remove"
        },
    )


class PackageUpgradeArgs(Schema):
    packages = fields.List(
        fields.String(),
        load_default=list,
        metadata={
            "description": "Package file names in the catalog, built for the running release"
        },
    )
    remove = package_removals()
    allow_data_loss = fields.Boolean(
        load_default=False,
        metadata={"description": "Let `packages reload force` delete data NSO warns about"},
    )


class CancelArgs(Schema):
    reason = fields.String(
        required=True,
        validate=validate.Length(min=1, max=500),
        metadata={"description": "Why (kept in the job's error and the audit)"},
    )


class RollbackArgs(Schema):
    discard_writes = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Required: writes NSO took since the upgrade stopped it leave NSO "
            "(the agent keeps the replaced data on the host)"
        },
    )


class ReasonSchema(Schema):
    code = fields.String()
    message = fields.String()
    remedy = fields.String()


class PlanStepSchema(Schema):
    seq = fields.Integer()
    name = fields.String()
    title = fields.String()
    params = fields.Dict()


class PlanSchema(Schema):
    node = fields.String()
    ok = fields.Boolean()
    kind = fields.String(allow_none=True, metadata={"enum": ["maintenance", "major"]})
    source_version = fields.String(allow_none=True)
    target_version = fields.String()
    path = fields.List(fields.String())
    reasons = fields.List(fields.Nested(ReasonSchema))
    packages = fields.List(fields.String())
    remove = fields.List(
        fields.String(), metadata={"description": "A package plan's packages to take out"}
    )
    remove_ncs_conf = fields.List(fields.String())
    drops_patches = fields.List(
        fields.Dict(),
        metadata={
            "description": "Emergency patches ({module, patch_id}) the node has that a move "
            "to another release leaves behind (docs/patches.md)"
        },
    )
    steps = fields.List(fields.Nested(PlanStepSchema))


class StepSchema(Schema):
    id = fields.Integer()
    seq = fields.Integer()
    batch = fields.Integer(
        allow_none=True,
        metadata={"description": "Steps of one batch run at the same time on their nodes"},
    )
    node = fields.Function(
        lambda s: s.node.name, metadata={"description": "The node whose agent runs the step"}
    )
    name = fields.String()
    state = fields.String()
    attempt = fields.Integer()
    progress = fields.Integer()
    message = fields.String(allow_none=True)
    log_tail = fields.String(allow_none=True)
    result = fields.Dict()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    nso_seconds = fields.Float(allow_none=True)


def _group_of(job: Any) -> Optional[str]:
    group = (job.options or {}).get("group")
    return group if isinstance(group, str) else None


class JobSummarySchema(Schema):
    id = fields.Integer()
    node = fields.Function(
        lambda j: j.node_name,
        metadata={"description": "The job's node (its nodes, comma-separated, if several)"},
    )
    nodes = fields.Function(
        lambda j: j.node_names,
        metadata={"description": "Every node the job changes (and holds while it is active)"},
    )
    kind = fields.String()
    state = fields.String()
    outcome = fields.String(allow_none=True)
    source_version = fields.String(allow_none=True)
    target_version = fields.String(allow_none=True)
    options = fields.Dict()
    plan = fields.Dict()
    context = fields.Dict()
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    created_by = fields.String()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    url = fields.Function(lambda j: f"/api/v1/jobs/{j.id}")
    group = fields.Function(
        _group_of,
        allow_none=True,
        metadata={
            "description": "The HA group a group job works on (an HA upgrade, package upgrade "
            "or patch of the group), else null"
        },
    )


class JobSchema(JobSummarySchema):
    steps = fields.List(fields.Nested(StepSchema))
    windows = fields.Function(
        ha_windows.windows,
        allow_none=True,
        metadata={
            "description": "HA group upgrades: the write-unavailable window (no member takes "
            "writes) and the unprotected window (writes with no secondary connected), in "
            "seconds; null for other jobs"
        },
    )


class JobListArgs(Schema):
    node = fields.String()
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class GroupMemberSchema(Schema):
    node = fields.String(required=True, validate=validate.Length(min=1, max=128))
    ha_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    role = fields.String(required=True, validate=validate.OneOf(["primary", "secondary"]))
    failover = fields.Boolean(load_default=False)


class GroupCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    members = fields.List(
        fields.Nested(GroupMemberSchema), required=True, validate=validate.Length(min=2, max=8)
    )


class GroupSchema(Schema):
    name = fields.String()
    created_at = fields.DateTime()
    created_by = fields.String()
    members = fields.Function(
        lambda g: [
            {
                "node": m.node.name,
                "ha_id": m.ha_id,
                "role": m.nominal_role,
                "failover": m.failover_primary,
                "ha": (m.node.inventory or {}).get("ha"),
                "running_version": (m.node.inventory or {}).get("running_version"),
                "last_seen_at": m.node.last_seen_at.isoformat() if m.node.last_seen_at else None,
            }
            for m in g.members
        ]
    )
    problems = fields.Function(
        lambda g: heartbeat_problems(g),
        metadata={"description": "How the members' last heartbeats contradict the group"},
    )


class GroupUpgradeArgs(UpgradeArgs):
    write_policy = fields.String(
        load_default="safe",
        validate=validate.OneOf(["safe", "available"]),
        metadata={
            "description": "safe: no write is accepted without a secondary behind it; "
            "available: the upgraded primary takes writes as soon as it starts"
        },
    )


class GroupPlanSchema(Schema):
    group = fields.String()
    to = fields.String()
    write_policy = fields.String()
    ok = fields.Boolean()
    problems = fields.List(fields.String())
    members = fields.List(fields.Dict())
    steps = fields.List(fields.Dict())
    marks = fields.Dict()
