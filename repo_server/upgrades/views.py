"""Releases, plans, upgrades and jobs over HTTP: thin views over the services."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.catalog import release_manifest as signing
from repo_server.catalog import releases
from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, may, principal, require, state
from repo_server.upgrades import redaction
from repo_server.upgrades.jobs import JobService, verdict_dict
from repo_server.upgrades.plans import StepSpec
from repo_server.upgrades.preflight import UpgradeOptions
from repo_server.upgrades.schemas import (
    CancelArgs,
    JobListArgs,
    JobSchema,
    JobSummarySchema,
    PackageUpgradeArgs,
    PlanSchema,
    ReleaseCreateSchema,
    ReleaseManifestSchema,
    ReleaseSchema,
    ReleaseSignArgs,
    RollbackArgs,
    UpgradeArgs,
)

blp = Blueprint("upgrades", __name__, url_prefix="/api/v1", description="Releases and upgrades")


def jobs() -> JobService:
    return JobService(db_session(), state().notifier)


# What a role without job:details does not see of a job (README, "Roles").
JOB_DETAILS = ("context", "steps.result", "steps.log_tail")


def _as_seen_by_caller(found: Any, schema: type[JobSummarySchema], many: bool = False) -> Any:
    """The job(s) as the caller may see them: without their operational details (context,
    step results, log tails) unless the caller's role has job:details."""
    if may("job:details"):
        return found
    hidden = [f for f in JOB_DETAILS if schema is JobSchema or "." not in f]
    dumped = schema(many=many, exclude=hidden).dump(found)
    if many:
        return jsonify([redaction.job_for_viewer(j) for j in dumped])
    return jsonify(redaction.job_for_viewer(dumped))


def upgrade_options(args: dict[str, Any]) -> UpgradeOptions:
    """The preflight options of a node's or a group's upgrade request."""
    return UpgradeOptions(
        allow_extra_packages=args["allow_extra_packages"],
        strip_removed_ncs_conf=args["strip_removed_ncs_conf"],
    )


@blp.route("/releases")
class Releases(MethodView):
    @require("release:read")
    @blp.doc(security=BEARER)
    @blp.response(200, ReleaseSchema(many=True))
    def get(self) -> Any:
        """Every release manifest, oldest first."""
        return releases.list_releases(db_session())

    @require("release:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(ReleaseCreateSchema)
    @blp.response(201, ReleaseSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Define a release: NSO version, installer and the exact package set."""
        return releases.create_release(db_session(), who=principal(), **body)


@blp.route("/releases/<string:nso_version>")
class ReleaseItem(MethodView):
    @require("release:read")
    @blp.doc(security=BEARER)
    @blp.response(200, ReleaseSchema)
    def get(self, nso_version: str) -> Any:
        """One release manifest."""
        return releases.get_release(db_session(), nso_version)


@blp.route("/releases/<string:nso_version>/manifest")
@require("release:read")
@blp.doc(security=BEARER)
@blp.response(200, ReleaseManifestSchema)
def release_manifest(nso_version: str) -> Any:
    """The release's canonical manifest (the bytes a release manager signs) and its
    signatures, each checked again over it."""
    release = releases.get_release(db_session(), nso_version)
    text = signing.manifest_text(release)
    return {
        "nso_version": release.nso_version,
        "manifest": text,
        "manifest_sha256": hashlib.sha256(text.encode("ascii")).hexdigest(),
        "signatures": releases.signature_checks(release),
    }


@blp.route("/releases/<string:nso_version>/signature", methods=["PUT"])
@require("release:manage")
@blp.doc(security=BEARER)
@blp.arguments(ReleaseSignArgs)
@blp.response(200, ReleaseSchema)
def sign_release(body: dict[str, Any], nso_version: str) -> Any:
    """Store a release manager's signature over the manifest (made off the server with
    `nso-repo release sign`); 422 signature_invalid when it does not verify."""
    return releases.sign_release(
        db_session(),
        nso_version,
        trusted=state().settings.release_public_keys,
        who=principal(),
        **body,
    )


@blp.route("/nodes/<string:name>/plan")
@require("job:read")
@blp.doc(security=BEARER)
@blp.arguments(UpgradeArgs, location="query")
@blp.response(200, PlanSchema)
def plan(args: dict[str, Any], name: str) -> Any:
    """What an upgrade of this node would do: the preflight verdict and the ordered steps."""
    verdict, steps = jobs().plan(name, args["to"], upgrade_options(args))
    return _planned(verdict_dict(verdict), steps)


@blp.route("/nodes/<string:name>/package-plan")
@require("job:read")
@blp.doc(security=BEARER)
@blp.arguments(PackageUpgradeArgs, location="query")
@blp.response(200, PlanSchema)
def package_plan(args: dict[str, Any], name: str) -> Any:
    """What a package upgrade of this node would do, without starting it: the preflight
    verdict (every reason `POST .../package-upgrade` would refuse with) and the steps."""
    remove = tuple(args["remove"])
    verdict, steps = jobs().plan_package_upgrade(
        name, args["packages"], args["allow_data_loss"], remove
    )
    return _planned({**verdict_dict(verdict), "remove": list(remove)}, steps)


def _planned(answer: dict[str, Any], steps: list[StepSpec]) -> dict[str, Any]:
    """A plan's answer with its ordered steps."""
    answer["steps"] = [
        {"seq": i, "name": s.name, "title": s.title, "params": s.params}
        for i, s in enumerate(steps, start=1)
    ]
    return answer


@blp.route("/nodes/<string:name>/upgrade", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(UpgradeArgs)
@blp.response(202, JobSchema)
def upgrade(args: dict[str, Any], name: str) -> Any:
    """Start an upgrade; 422 preflight_failed with every reason when it may not."""
    job = jobs().start_upgrade(name, args["to"], upgrade_options(args), principal())
    return job, 202, {"Location": f"/api/v1/jobs/{job.id}"}


@blp.route("/nodes/<string:name>/package-upgrade", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(PackageUpgradeArgs)
@blp.response(202, JobSchema)
def package_upgrade(args: dict[str, Any], name: str) -> Any:
    """Replace, add or remove packages on a running node without an NSO upgrade."""
    job = jobs().start_package_upgrade(
        name, args["packages"], args["allow_data_loss"], principal(), tuple(args["remove"])
    )
    return job, 202, {"Location": f"/api/v1/jobs/{job.id}"}


@blp.route("/jobs")
@require("job:read")
@blp.doc(security=BEARER)
@blp.arguments(JobListArgs, location="query")
@blp.response(200, JobSummarySchema(many=True))
def list_jobs(args: dict[str, Any]) -> Any:
    """Jobs, newest first (without their context for viewers)."""
    return _as_seen_by_caller(jobs().list(args.get("node"), args["limit"]), JobSummarySchema, True)


@blp.route("/jobs/<int:job_id>")
@require("job:read")
@blp.doc(security=BEARER)
@blp.response(200, JobSchema)
def get_job(job_id: int) -> Any:
    """One job with its steps and their progress; the context, step results and log tails
    only for roles with job:details (admin, operator)."""
    return _as_seen_by_caller(jobs().get(job_id), JobSchema)


@blp.route("/jobs/<int:job_id>/rollback", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(RollbackArgs)
@blp.response(202, JobSchema)
def rollback(args: dict[str, Any], job_id: int) -> Any:
    """Undo a finished job: an upgrade goes back to the release and data it started from (its
    restore point; 409 confirm_discard_writes unless `discard_writes` is true); an HA group's
    package upgrade puts back the package links its backups saved and syncs them to every
    member."""
    job = jobs().rollback(job_id, principal(), discard_writes=args["discard_writes"])
    return job, 202, {"Location": f"/api/v1/jobs/{job.id}"}


@blp.route("/jobs/<int:job_id>/cancel", methods=["POST"])
@require("job:manage")
@blp.doc(security=BEARER)
@blp.arguments(CancelArgs)
@blp.response(200, JobSchema)
def cancel(args: dict[str, Any], job_id: int) -> Any:
    """End an active job without its agents (a host that died): the step handed out ends
    failed, the rest skipped, the nodes are let go; nothing on a host is changed or undone,
    and the job says what it had changed. 409 when the job has ended already."""
    job = jobs().cancel(job_id, args["reason"], principal())
    state().after_job(job.id)  # a rollout waiting for it moves on
    return job
