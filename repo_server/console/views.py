"""The console's pages: thin views over the same services as the API, rendered on the
server (Jinja and htmx, docs/console.md). Every view names the permission it needs, the
same as its API twin; changes need the session's CSRF token."""

from __future__ import annotations

from typing import Any, Optional

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from marshmallow import ValidationError

from repo_server.auth import service as auth
from repo_server.catalog.form_upload import form_file
from repo_server.catalog.releases import list_releases
from repo_server.catalog.service import KIND_ALIASES, ArtifactQuery, CatalogService
from repo_server.console import access, logins
from repo_server.console.matrix import build_matrix
from repo_server.console.shapes import age, node_row, timeline
from repo_server.context import db_session, note_failed_authentication, state
from repo_server.db import MAX_ID
from repo_server.errors import AppError, BadRequest, Unauthenticated
from repo_server.fleet import groups
from repo_server.fleet import service as nodes_service
from repo_server.fleet.schemas import NodeQueryArgs
from repo_server.rollouts.service import Rollouts, rollout_dict
from repo_server.rollouts.status import node_statuses
from repo_server.upgrades import redaction
from repo_server.upgrades.ha_jobs import GroupUpgrades
from repo_server.upgrades.ha_plan import WRITE_POLICIES
from repo_server.upgrades.jobs import JobService, verdict_dict
from repo_server.upgrades.preflight import UpgradeOptions

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
page = access.page
ROLLOUT_ACTIONS = ("pause", "resume", "cancel", "retry")
AUDIT_PAGE = 100
SHOWN_GROUPS = 100


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    login = g.get("console_login")
    return {
        "can": access.can,
        "me": login.principal if login else None,
        "csrf_token": login.csrf_token if login else "",
        "age": age,
        "job_words": _job_words,
    }


def _job_words(text: Any) -> Any:
    """A job's error or a step's message as the caller may read it: host paths masked for
    a role without job:details, as the API masks them (upgrades/redaction.py)."""
    return text if access.can("job:details") else redaction.masked(text)


@bp.after_request
def _headers(response: Response) -> Response:
    # Pages and fragments are the caller's own view of the fleet: never cached, never
    # framed, scripts only from this server.
    if request.endpoint != "console.static":
        response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    return response


@bp.errorhandler(AppError)
def _error(error: AppError) -> Any:
    if error.status == 401:
        return access.to_login()
    return render_template("error.html", error=error), error.status


def _jobs() -> JobService:
    return JobService(db_session(), state().notifier)


def _options(form: Any) -> UpgradeOptions:
    return UpgradeOptions(
        allow_extra_packages=form.get("allow_extra_packages") == "on",
        strip_removed_ncs_conf=form.get("strip_removed_ncs_conf") == "on",
    )


def _to(args: Any) -> str:
    to = (args.get("to") or "").strip()
    if not to or len(to) > 64:
        raise BadRequest("choose the release to upgrade to")
    return to


# -- login ---------------------------------------------------------------------------------


@bp.route("/")
@page("console")
def home() -> Any:
    # An uploader reads no fleet: the catalog is its page.
    first = "console.fleet" if access.can("node:read") else "console.catalog"
    return redirect(url_for(first), code=303)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = access.safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next=target, problem=None)
    access.check_origin()
    try:
        _, secret = logins.log_in(db_session(), request.form.get("token", ""))
    except AppError as refused:
        if isinstance(refused, Unauthenticated):
            note_failed_authentication(refused)
        page_ = render_template("login.html", next=target, problem=refused.message)
        return page_, refused.status
    answer = redirect(target, code=303)
    answer.set_cookie(
        access.COOKIE,
        secret,
        max_age=int(logins.LIFETIME.total_seconds()),
        path="/ui/",
        # Behind a TLS proxy the request arrives as http: the proxy's header says https.
        # Trusting it can only add Secure, never take it away.
        secure=access.scheme() == "https",
        httponly=True,
        samesite="Strict",
    )
    return answer


@bp.route("/logout", methods=["POST"])
@page("console")
def logout() -> Any:
    logins.log_out(db_session(), request.cookies.get(access.COOKIE), access.who())
    answer = redirect(url_for("console.login"), code=303)
    answer.delete_cookie(access.COOKIE, path="/ui/")
    return answer


# -- fleet ---------------------------------------------------------------------------------


@bp.route("/fleet")
@page("node:read")
def fleet() -> Any:
    try:
        args = NodeQueryArgs().load({k: v for k, v in request.args.items() if v})
    except ValidationError as invalid:
        raise BadRequest(f"the filter is not valid: {invalid.messages}") from None
    session = db_session()
    found = nodes_service.list_nodes(session, **args)
    statuses = node_statuses(session, found.items)
    return render_template(
        "fleet.html",
        page=found,
        rows=[node_row(n, statuses.get(n.id)) for n in found.items],
        groups=groups.group_sizes(session, SHOWN_GROUPS),
        filters=args,
    )


@bp.route("/nodes/<string:name>")
@page("node:read")
def node(name: str) -> Any:
    session = db_session()
    found = nodes_service.get_node(session, name)
    jobs = _jobs().list(name, 20) if access.can("job:read") else []
    return render_template(
        "node.html",
        node=found,
        row=node_row(found, node_statuses(session, [found]).get(found.id)),
        group=groups.group_of(session, found),
        jobs=jobs,
        releases=list_releases(session),
    )


@bp.route("/nodes/<string:name>/plan")
@page("job:read")
def node_plan(name: str) -> Any:
    to = _to(request.args)
    verdict, steps = _jobs().plan(name, to, _options(request.args))
    return render_template(
        "plan.html",
        subject=("node", name),
        to=to,
        options=request.args,
        verdicts=[verdict_dict(verdict)],
        ok=verdict.ok,
        problems=[],
        steps=[{"seq": i, "node": name, "title": s.title} for i, s in enumerate(steps, 1)],
    )


@bp.route("/nodes/<string:name>/upgrade", methods=["POST"])
@page("job:manage")
def node_upgrade(name: str) -> Any:
    job = _jobs().start_upgrade(name, _to(request.form), _options(request.form), access.who())
    return redirect(url_for("console.job", job_id=job.id), code=303)


@bp.route("/groups/<string:name>")
@page("node:read")
def group(name: str) -> Any:
    session = db_session()
    found = groups.get_group(session, name)
    return render_template(
        "group.html",
        group=found,
        rows=[node_row(m.node) for m in found.members],
        problems=groups.heartbeat_problems(found),
        releases=list_releases(session),
        policies=WRITE_POLICIES,
    )


def _policy(args: Any) -> str:
    policy = args.get("write_policy") or "safe"
    if policy not in WRITE_POLICIES:
        raise BadRequest(f"write policy {policy[:20]!r}: choose {', '.join(WRITE_POLICIES)}")
    return str(policy)


@bp.route("/groups/<string:name>/plan")
@page("job:read")
def group_plan(name: str) -> Any:
    to, policy = _to(request.args), _policy(request.args)
    planned = GroupUpgrades(_jobs()).plan(name, to, policy, _options(request.args)).as_dict()
    return render_template(
        "plan.html",
        subject=("group", name),
        to=to,
        options=request.args,
        policy=policy,
        verdicts=planned["members"],
        ok=planned["ok"],
        problems=planned["problems"],
        steps=planned["steps"],
    )


@bp.route("/groups/<string:name>/upgrade", methods=["POST"])
@page("job:manage")
def group_upgrade(name: str) -> Any:
    form = request.form
    job = GroupUpgrades(_jobs()).start(name, _to(form), _policy(form), _options(form), access.who())
    return redirect(url_for("console.job", job_id=job.id), code=303)


# -- jobs and rollouts ---------------------------------------------------------------------


@bp.route("/jobs")
@page("job:read")
def jobs() -> Any:
    return render_template("jobs.html", jobs=_jobs().list(None, 100))


def _job_context(job_id: int) -> dict[str, Any]:
    job = _jobs().get(job_id)
    nodes: dict[str, list[Any]] = {}
    for step in job.steps:
        nodes.setdefault(step.node.name, []).append(step)
    return {"job": job, "nodes": nodes, "timeline": timeline(job)}


@bp.route("/jobs/<int:job_id>")
@page("job:read")
def job(job_id: int) -> Any:
    return render_template("job.html", **_job_context(job_id))


@bp.route("/jobs/<int:job_id>/live")
@page("job:read")
def job_live(job_id: int) -> Any:
    return render_template("_job_live.html", **_job_context(job_id))


@bp.route("/jobs/<int:job_id>/cancel", methods=["POST"])
@page("job:manage")
def job_cancel(job_id: int) -> Any:
    reason = (request.form.get("reason") or "").strip()[:500]
    if not reason:
        raise BadRequest("say why the job is cancelled: it is kept in the job and the audit")
    _jobs().cancel(job_id, reason, access.who())
    state().after_job(job_id)
    return redirect(url_for("console.job", job_id=job_id), code=303)


def _rollouts() -> Rollouts:
    return Rollouts(db_session(), state().notifier)


@bp.route("/rollouts")
@page("job:read")
def rollouts() -> Any:
    return render_template("rollouts.html", rollouts=_rollouts().list(100))


@bp.route("/rollouts/<int:rollout_id>")
@page("job:read")
def rollout(rollout_id: int) -> Any:
    return render_template("rollout.html", r=rollout_dict(_rollouts().get(rollout_id)))


@bp.route("/rollouts/<int:rollout_id>/live")
@page("job:read")
def rollout_live(rollout_id: int) -> Any:
    return render_template("_rollout_live.html", r=rollout_dict(_rollouts().get(rollout_id)))


@bp.route("/rollouts/<int:rollout_id>/<string:action>", methods=["POST"])
@page("job:manage")
def rollout_action(rollout_id: int, action: str) -> Any:
    if action not in ROLLOUT_ACTIONS:
        raise BadRequest(f"no rollout action {action[:20]!r}: {', '.join(ROLLOUT_ACTIONS)}")
    reason = (request.form.get("reason") or "")[:500]
    _rollouts().act(action, rollout_id, reason, access.who())
    state().move_rollout(rollout_id)
    return redirect(url_for("console.rollout", rollout_id=rollout_id), code=303)


# -- catalog, matrix, audit ----------------------------------------------------------------


def _catalog() -> CatalogService:
    app = state()
    return CatalogService(db_session(), app.storage, app.settings)


def _number(text: Optional[str], name: str = "page", top: int = 1_000_000) -> int:
    try:
        number = int(text or 1)
    except ValueError:
        raise BadRequest(f"{name}: a number from 1 to {top}") from None
    if not 1 <= number <= top:
        raise BadRequest(f"{name}: a number from 1 to {top}")
    return number


@bp.route("/catalog")
@page("artifact:read")
def catalog() -> Any:
    kind = request.args.get("kind") or ""
    if kind and kind not in KIND_ALIASES:
        raise BadRequest(f"kind {kind[:20]!r}: choose {', '.join(KIND_ALIASES)}")
    query = ArtifactQuery(
        kinds=KIND_ALIASES.get(kind, ()), page=_number(request.args.get("page")), per_page=50
    )
    return render_template(
        "catalog.html", page=_catalog().list(query), kind=kind, kinds=tuple(KIND_ALIASES)
    )


@bp.route("/catalog/upload", methods=["POST"])
@page("artifact:upload")
def upload() -> Any:
    filename, stream, sha256 = form_file(state().settings)
    result = _catalog().ingest(filename, stream, who=access.who(), expected_sha256=sha256)
    if request.headers.get("X-Requested-With") == "console-upload":
        # The drag-and-drop script: a line for its list, not a page.
        verb = "stored" if result.created else "already stored (same bytes)"
        return {"filename": result.artifact.filename, "kind": result.artifact.kind, "did": verb}
    return redirect(url_for("console.catalog"), code=303)


@bp.route("/matrix")
@page("node:read")
def matrix() -> Any:
    return render_template("matrix.html", matrix=build_matrix(db_session()))


@bp.route("/audit")
@page("audit:read")
def audit() -> Any:
    action = (request.args.get("action") or "").strip()[:64] or None
    actor = (request.args.get("actor") or "").strip()[:128] or None
    before = request.args.get("before")
    events = auth.list_audit(
        db_session(),
        limit=AUDIT_PAGE,
        before_id=_number(before, "before", MAX_ID) if before else None,
        action=action,
        actor=actor,
    )
    return render_template(
        "audit.html",
        events=events,
        action=action or "",
        actor=actor or "",
        more=len(events) == AUDIT_PAGE,
    )
