"""Fleet rollouts and maintenance windows over HTTP: thin views over rollouts/service.py,
rollouts/driver.py and rollouts/windows.py."""

from __future__ import annotations

import logging
from typing import Any

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, may, principal, require, state
from repo_server.rollouts import windows
from repo_server.rollouts.planning import Options, Selection
from repo_server.rollouts.schemas import (
    FleetRolloutArgs,
    FleetRolloutListArgs,
    FleetRolloutPlanSchema,
    FleetRolloutSchema,
    FleetRolloutSummarySchema,
    RolloutReasonArgs,
    WindowArgs,
    WindowSchema,
)
from repo_server.rollouts.service import Rollouts, rollout_dict
from repo_server.upgrades import redaction

log = logging.getLogger(__name__)

blp = Blueprint(
    "rollouts", __name__, url_prefix="/api/v1", description="Fleet rollouts and maintenance windows"
)


def _rollouts() -> Rollouts:
    return Rollouts(db_session(), state().notifier)


def _request(body: dict[str, Any]) -> tuple[str, Selection, Options]:
    options = {k: v for k, v in body.items() if k not in ("release", "select")}
    return body["release"], Selection(**body["select"]), Options(**options)


def _shown(rollout_id: int) -> dict[str, Any]:
    """The rollout as it stands, after the driver has moved it. The operator's change is
    committed already: a driver failure here is logged and left to the ticker, never
    turned into an error answer for a change that was made."""
    state().move_rollout(rollout_id)
    session = db_session()
    session.expire_all()
    return _as_seen_by_caller(rollout_dict(_rollouts().get(rollout_id)))


def _as_seen_by_caller(shown: dict[str, Any]) -> dict[str, Any]:
    """A target's reason repeats its job's error: host paths masked for a role without
    job:details, as the job itself shows them (upgrades/redaction.py)."""
    if may("job:details"):
        return shown
    return redaction.fleet_rollout_for_viewer(shown)


@blp.route("/rollouts")
class RolloutList(MethodView):
    @require("job:read")
    @blp.doc(security=BEARER)
    @blp.arguments(FleetRolloutListArgs, location="query")
    @blp.response(200, FleetRolloutSummarySchema(many=True))
    def get(self, args: dict[str, Any]) -> Any:
        """Rollouts, newest first, with their progress per wave."""
        return _rollouts().list(args["limit"])

    @require("job:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(FleetRolloutArgs)
    @blp.response(201, FleetRolloutSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Assign a release to a selection of the fleet and roll it out: a canary, then
        waves. 404 unknown node, group or release; 409 no_targets, rollout_overlap,
        gate_not_met; 422 preflight_failed when every target is refused. Nothing is
        created when refused."""
        release, selection, options = _request(body)
        rollout = _rollouts().create(release, selection, options, principal())
        return _shown(rollout.id), 201, {"Location": f"/api/v1/rollouts/{rollout.id}"}


@blp.route("/rollouts/plan", methods=["POST"])
@require("job:read")
@blp.doc(security=BEARER)
@blp.arguments(FleetRolloutArgs)
@blp.response(200, FleetRolloutPlanSchema)
def plan(body: dict[str, Any]) -> Any:
    """What a rollout would do, with each target's preflight; changes nothing."""
    # Plain data already: a plan over 10,000 targets skips the schema's dump (it took a
    # fifth of the time); the schema documents the answer.
    return jsonify(_rollouts().plan(*_request(body)))


@blp.route("/rollouts/<int:rollout_id>")
@require("job:read")
@blp.doc(security=BEARER)
@blp.response(200, FleetRolloutSchema)
def get_rollout(rollout_id: int) -> Any:
    """One rollout: its waves, and every target's state and why it is not done yet."""
    return _as_seen_by_caller(rollout_dict(_rollouts().get(rollout_id)))


def _action(name: str, doc: str) -> None:
    @blp.route(f"/rollouts/<int:rollout_id>/{name}", methods=["POST"], endpoint=f"rollout_{name}")
    @require("job:manage")
    @blp.doc(security=BEARER, description=doc)
    @blp.arguments(RolloutReasonArgs)
    @blp.response(200, FleetRolloutSchema)
    def act(body: dict[str, Any], rollout_id: int) -> Any:
        _rollouts().act(name, rollout_id, body.get("reason"), principal())
        return _shown(rollout_id)


_action("pause", "No new target starts; running jobs finish. 409 unless running.")
_action("resume", "Start targets again; failures so far are acknowledged. 409 unless paused.")
_action("cancel", "No new target starts (a reason is required); running jobs finish or recover.")
_action("retry", "Plan the failed and refused targets again. 409 when there are none.")


@blp.route("/windows")
class WindowList(MethodView):
    @require("node:read")
    @blp.doc(security=BEARER)
    @blp.response(200, WindowSchema(many=True))
    def get(self) -> Any:
        """Every maintenance window."""
        return windows.list_windows(db_session())

    @require("node:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(WindowArgs)
    @blp.response(201, WindowSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Add a weekly maintenance window to a node or an HA group: rollouts start work
        on it only inside one of its windows, and only work that can finish before it closes."""
        session = db_session()
        window = windows.add_window(
            session,
            principal(),
            node=body.get("node"),
            group=body.get("group"),
            days=body["days"],
            start=body["start"],
            minutes=body["minutes"],
            tz=body["timezone"],
        )
        return {"id": window.id, **windows.window_dict(session, window)}


@blp.route("/windows/<int:window_id>", methods=["DELETE"])
@require("node:manage")
@blp.doc(security=BEARER)
@blp.response(204)
def delete_window(window_id: int) -> Any:
    """Remove a maintenance window."""
    windows.remove_window(db_session(), window_id, principal())
    return None
