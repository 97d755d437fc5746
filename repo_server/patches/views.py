"""Patch rollouts over HTTP: thin views over patches/rollouts.py."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.exc import SQLAlchemyError

from repo_server.auth.service import audit_refusal
from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, may, principal, require, state
from repo_server.errors import AppError, Forbidden, ValidationFailed
from repo_server.patches import signing
from repo_server.patches.rollouts import PatchRollouts
from repo_server.patches.schemas import (
    PatchManifestSchema,
    RolloutArgs,
    RolloutListArgs,
    RolloutSchema,
    RolloutSummarySchema,
)
from repo_server.upgrades import redaction
from repo_server.upgrades.schemas import ReleaseSignArgs

log = logging.getLogger(__name__)

blp = Blueprint("patches", __name__, url_prefix="/api/v1", description="Emergency patch rollouts")


def rollouts() -> PatchRollouts:
    return PatchRollouts(db_session(), state().notifier)


@blp.route("/patch-rollouts")
class Rollouts(MethodView):
    @require("job:read")
    @blp.doc(security=BEARER)
    @blp.arguments(RolloutListArgs, location="query")
    @blp.response(200, RolloutSummarySchema(many=True))
    def get(self, args: dict[str, Any]) -> Any:
        """Patch rollouts, newest first, with how many nodes are in each state."""
        return rollouts().list(args["limit"])

    @require("job:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(RolloutArgs)
    @blp.response(201, RolloutSchema)
    @blp.alt_response(404, response="DEFAULT_ERROR", description="Unknown bundle, node or group")
    @blp.alt_response(
        409,
        response="DEFAULT_ERROR",
        description="release_mismatch, node_busy, no_heartbeat, no_targets, inventory_stale, "
        "inventory_behind, rollout_pending, group_member: nothing was started",
    )
    def post(self, body: dict[str, Any]) -> Any:
        """Apply (or remove) a patch bundle on every node that runs its release
        (all_affected) or on the named nodes and groups; the agents get it at once. 404 for
        an unknown bundle, node or group; 409 release_mismatch, node_busy, no_heartbeat,
        no_targets, inventory_stale, inventory_behind; nothing is created when refused. all_affected leaves out
        (and lists) nodes whose inventory is stale and HA groups not all on the release."""
        try:
            started = rollouts().start(
                body["patch"],
                principal(),
                action=body["action"],
                nodes=body["nodes"],
                groups=body["groups"],
                all_affected=body["all_affected"],
            )
        except AppError:
            g.refusal_audited = True  # the service audits every refusal it makes
            raise
        return started, 201, {"Location": started["url"]}


@blp.after_request
def audit_refused_trigger(response: Response) -> Response:
    """A trigger refused before the service saw it is audited too, with who sent it: a role
    that may not start rollouts (403), a body the schema refuses (422), one that is not
    JSON or cut short (400), one too large (413): any refusal once the caller is known. An
    emergency change that was refused is part of the incident's story (PatchRollouts.start
    audits the rest). Without a token there is no one to name: failed authentication is
    counted elsewhere."""
    if (
        request.method != "POST"
        or request.endpoint != "patches.Rollouts"
        or not 400 <= response.status_code < 500
        or g.get("refusal_audited")
        or not g.get("actor")
    ):
        return response
    body = request.get_json(silent=True) if response.status_code != 413 else None
    body = body if isinstance(body, dict) else {}
    error = (response.get_json(silent=True) or {}).get("error") or {}
    refused = _refusal(response.status_code, error)
    patch = body.get("patch")
    session = db_session()
    try:
        audit_refusal(
            session,
            str(g.actor),
            "patch.rollout_refused",
            f"patch:{patch[:255]}" if isinstance(patch, str) else "patch:?",
            refused,
            fields=sorted(str(k)[:64] for k in body)[:20],
        )
    except SQLAlchemyError:
        # The refusal stands, audited or not: the caller gets it, never a 500 instead.
        session.rollback()
        log.exception("could not audit a refused patch rollout of %s", g.actor)
    return response


@blp.route("/patch-rollouts/<int:rollout_id>")
@require("job:read")
@blp.doc(security=BEARER)
@blp.response(200, RolloutSchema)
def get_rollout(rollout_id: int) -> Any:
    """One rollout: every node's state (queued, running, succeeded, failed, skipped) and
    what its agent reported (the modules NSO lists with the patch id); the agents' results
    only to roles with job:details, as for jobs."""
    found = rollouts().get(rollout_id)
    if may("job:details"):
        return found
    return jsonify(
        redaction.rollout_for_viewer(RolloutSchema(exclude=("nodes.result",)).dump(found))
    )


@blp.route("/patches/<string:filename>/manifest")
@require("release:read")
@blp.doc(security=BEARER)
@blp.response(200, PatchManifestSchema)
def patch_manifest(filename: str) -> Any:
    """The patch bundle's canonical manifest (the bytes a release manager signs for agents
    that install only signed files) and its signatures, each checked again over it."""
    return signing.manifest_answer(rollouts().bundle(filename))


@blp.route("/patches/<string:filename>/signature", methods=["PUT"])
@require("release:manage")
@blp.doc(security=BEARER)
@blp.arguments(ReleaseSignArgs)
@blp.response(200, PatchManifestSchema)
def sign_patch(body: dict[str, Any], filename: str) -> Any:
    """Store a release manager's signature over the bundle's manifest (made off the server
    with `nso-repo patch sign`); 422 signature_invalid when it does not verify."""
    return signing.sign_patch(
        db_session(),
        rollouts().bundle(filename),
        trusted=state().settings.release_public_keys,
        who=principal(),
        **body,
    )


def _refusal(status: int, error: dict[str, Any]) -> AppError:
    """The refusal a response carries, as an AppError whose code is the one the caller got."""
    base = Forbidden if status == 403 else ValidationFailed if status == 422 else AppError
    refused = base(str(error.get("message") or "refused"))
    code = error.get("code")
    if isinstance(code, str) and code.isascii() and code.replace("_", "").isalnum():
        refused.code = code[:64]  # type: ignore[misc]
    return refused
