"""Package upgrades on HA groups over HTTP: plan and start. Thin views over
upgrades/ha_package_jobs.py (docs/ha-upgrades.md, "Package upgrades on an HA group")."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, principal, require, state
from repo_server.upgrades.ha_package_jobs import GroupPackageUpgrades
from repo_server.upgrades.jobs import JobService
from repo_server.upgrades.schemas import JobSchema, package_removals

blp = Blueprint(
    "group_packages",
    __name__,
    url_prefix="/api/v1",
    description="Package upgrades on HA groups (packages ha sync)",
)


class GroupPackageArgs(Schema):
    packages = fields.List(
        fields.String(validate=validate.Length(min=1, max=255)),
        load_default=list,
        validate=validate.Length(max=100),
        metadata={
            "description": "Package file names in the catalog, built for the release the "
            "group runs (repeat the query parameter for several)"
        },
    )
    remove = package_removals()


class GroupPackagePlanSchema(Schema):
    group = fields.String()
    packages = fields.List(fields.String())
    remove = fields.List(fields.String())
    sync = fields.String(
        metadata={
            "enum": ["and-reload", "and-add"],
            "description": "The packages ha sync variant: and-add when the change only adds "
            "NED packages",
        }
    )
    ok = fields.Boolean()
    problems = fields.List(fields.String())
    members = fields.List(fields.Dict())
    steps = fields.List(fields.Dict())


def _upgrades() -> GroupPackageUpgrades:
    return GroupPackageUpgrades(JobService(db_session(), state().notifier))


@blp.route("/groups/<string:name>/package-plan")
@require("job:read")
@blp.doc(security=BEARER)
@blp.arguments(GroupPackageArgs, location="query")
@blp.response(200, GroupPackagePlanSchema)
def group_package_plan(args: dict[str, Any], name: str) -> Any:
    """Every step on every member of a package upgrade of the group, with each member's
    package preflight and the group's problems (load paths that differ among them)."""
    return _upgrades().plan(name, args["packages"], tuple(args["remove"])).as_dict()


@blp.route("/groups/<string:name>/package-upgrade", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(GroupPackageArgs)
@blp.response(202, JobSchema)
def group_package_upgrade(args: dict[str, Any], name: str) -> Any:
    """Replace, add or remove packages on every member of the group (packages ha sync on
    its primary); 422 preflight_failed with every reason, and nothing started."""
    job = _upgrades().start(name, args["packages"], principal(), tuple(args["remove"]))
    return job, 202, {"Location": f"/api/v1/jobs/{job.id}"}
