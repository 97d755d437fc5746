"""Major NED upgrades over HTTP: a thin view over upgrades/ned_migrations.py."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, principal, require, state
from repo_server.upgrades.ned_migrations import (
    MAX_DEVICES,
    MAX_GROUPS,
    MigrationRequest,
    NedMigrationService,
)
from repo_server.upgrades.schemas import JobSchema

blp = Blueprint("ned_migrations", __name__, url_prefix="/api/v1", description="Major NED upgrades")


class NedMigrationArgs(Schema):
    new_ned_id = fields.String(
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "The ned-id to migrate to; its NED package must be loaded"},
    )
    devices = fields.List(
        fields.String(validate=validate.Length(min=1, max=128)),
        load_default=list,
        validate=validate.Length(max=MAX_DEVICES),
        metadata={"description": "Device names in NSO"},
    )
    device_groups = fields.List(
        fields.String(validate=validate.Length(min=1, max=128)),
        load_default=list,
        validate=validate.Length(max=MAX_GROUPS),
        metadata={"description": "Device group names in NSO (every device of each)"},
    )
    dry_run = fields.Boolean(
        required=True,
        metadata={"description": "true: NSO only reports what it would change"},
    )
    confirm = fields.Integer(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1, max=2**31 - 1),
        metadata={
            "description": "With dry_run false: the id of the succeeded dry-run job of "
            "exactly this node, these devices and groups and this ned-id"
        },
    )


@blp.route("/nodes/<string:name>/ned-migrations", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(NedMigrationArgs)
@blp.response(202, JobSchema)
def ned_migration(args: dict[str, Any], name: str) -> Any:
    """Migrate devices to a new ned-id (NSO's migrate action), dry-run first: 409
    dry_run_required for a real migration that does not confirm a succeeded dry-run of the
    same node, devices, groups and ned-id."""
    request = MigrationRequest(
        node=name,
        new_ned_id=args["new_ned_id"],
        devices=tuple(args["devices"]),
        device_groups=tuple(args["device_groups"]),
        dry_run=args["dry_run"],
        confirm=args["confirm"],
    )
    app = state()
    migrations = NedMigrationService(db_session(), app.notifier, app.settings.ned_dry_run_max_age)
    job = migrations.start(request, principal())
    return job, 202, {"Location": f"/api/v1/jobs/{job.id}"}
