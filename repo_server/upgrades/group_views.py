"""HA groups over HTTP: register, list, remove, plan and upgrade. Thin views over
fleet/groups.py and upgrades/ha_jobs.py."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, principal, require, state
from repo_server.fleet import groups
from repo_server.upgrades.ha_jobs import GroupUpgrades
from repo_server.upgrades.jobs import JobService
from repo_server.upgrades.schemas import (
    GroupCreateSchema,
    GroupPlanSchema,
    GroupSchema,
    GroupUpgradeArgs,
    JobSchema,
)
from repo_server.upgrades.views import upgrade_options

blp = Blueprint(
    "groups", __name__, url_prefix="/api/v1", description="HA groups and their upgrades"
)


def _group_upgrades() -> GroupUpgrades:
    return GroupUpgrades(JobService(db_session(), state().notifier))


@blp.route("/groups")
class Groups(MethodView):
    @require("node:read")
    @blp.doc(security=BEARER)
    @blp.response(200, GroupSchema(many=True))
    def get(self) -> Any:
        """Every HA group with its members and how their heartbeats contradict it."""
        return groups.list_groups(db_session())

    @require("node:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(GroupCreateSchema)
    @blp.response(201, GroupSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Register an HA group; 422 group_contradicts_nodes when a member's last heartbeat
        says otherwise (mode, HA id, connected secondaries, release, crypto keys, load paths)."""
        members = [
            groups.MemberSpec(m["node"], m["ha_id"], m["role"], m["failover"])
            for m in body["members"]
        ]
        return groups.add_group(db_session(), body["name"], members, principal())


@blp.route("/groups/<string:name>")
class GroupItem(MethodView):
    @require("node:read")
    @blp.doc(security=BEARER)
    @blp.response(200, GroupSchema)
    def get(self, name: str) -> Any:
        """One HA group."""
        return groups.get_group(db_session(), name)

    @require("node:manage")
    @blp.doc(security=BEARER)
    @blp.response(204)
    def delete(self, name: str) -> Any:
        """Forget an HA group (its nodes stay registered; NSO is not touched)."""
        groups.remove_group(db_session(), name, principal())
        return None


@blp.route("/groups/<string:name>/plan")
@require("job:read")
@blp.doc(security=BEARER)
@blp.arguments(GroupUpgradeArgs, location="query")
@blp.response(200, GroupPlanSchema)
def group_plan(args: dict[str, Any], name: str) -> Any:
    """Every stage on every member of the group's upgrade, with each member's preflight."""
    planned = _group_upgrades().plan(name, args["to"], args["write_policy"], upgrade_options(args))
    return planned.as_dict()


@blp.route("/groups/<string:name>/upgrade", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(GroupUpgradeArgs)
@blp.response(202, JobSchema)
def group_upgrade(args: dict[str, Any], name: str) -> Any:
    """Start the HA-coordinated upgrade of the group; 422 preflight_failed with every reason."""
    job = _group_upgrades().start(
        name, args["to"], args["write_policy"], upgrade_options(args), principal()
    )
    return job, 202, {"Location": f"/api/v1/jobs/{job.id}"}
