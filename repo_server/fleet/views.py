"""Fleet API (operators) and the agent protocol endpoints (node agents)."""

from __future__ import annotations

import time
from typing import Any, Optional

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.catalog.schemas import BEARER
from repo_server.context import db_session, may, principal, require, state
from repo_server.fleet import service
from repo_server.fleet.notify import announce_poll, overtaken
from repo_server.fleet.schemas import (
    EnrollAnswerSchema,
    EnrollRequestSchema,
    HeartbeatSchema,
    NewNodeSchema,
    NextArgs,
    NodeLabelChangeSchema,
    NodeLabelsSchema,
    NodeNameSchema,
    NodePageSchema,
    NodeQueryArgs,
    NodeSchema,
    StepReportSchema,
)
from repo_server.parking import PARK, RESUMED, Parked
from repo_server.rollouts.status import node_statuses
from repo_server.upgrades import redaction
from repo_server.upgrades.inline_blobs import with_inline_blobs
from repo_server.upgrades.job_states import JOB_ACTIVE
from repo_server.upgrades.jobs import JobService
from repo_server.upgrades.models import Step
from repo_server.upgrades.step_payloads import step_payload

# Retry-After of a long-poll that found every place to wait taken.
BUSY_RETRY_SECONDS = 10
NOT_PARKABLE = object()  # no PARK in the environ: not served by the server's own worker
# Polls that may wait in a thread at once where they cannot park: a thread pool's worth.
THREAD_WAITING_POLLS = 24

blp = Blueprint("fleet", __name__, url_prefix="/api/v1", description="Nodes and the agent protocol")


@blp.route("/nodes")
class Nodes(MethodView):
    @require("node:read")
    @blp.doc(security=BEARER)
    @blp.arguments(NodeQueryArgs, location="query")
    @blp.response(200, NodePageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """The fleet, a page at a time by name, each node with its last inventory, its
        assigned release and why it does not run it yet."""
        session = db_session()
        page = service.list_nodes(session, **args)
        _with_rollout_status(session, page.items)
        return page

    @require("node:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(NodeNameSchema)
    @blp.response(201, NewNodeSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Register a node; the answer carries a one-time enrollment token for its agent."""
        node, secret = service.add_node(db_session(), body["name"], principal())
        return {"node": node, "enrollment_token": secret}


@blp.route("/nodes/<string:name>")
class NodeItem(MethodView):
    @require("node:read")
    @blp.doc(security=BEARER)
    @blp.response(200, NodeSchema)
    def get(self, name: str) -> Any:
        """One node."""
        session = db_session()
        node = service.get_node(session, name)
        _with_rollout_status(session, [node])
        return node


def _with_rollout_status(session: Any, nodes: list[Any]) -> None:
    # Why a node is not on its release may repeat its job's error: host paths masked for a
    # role without job:details, as the job shows them (upgrades/redaction.py).
    details = may("job:details")
    for node_id, status in node_statuses(session, nodes).items():
        shown = (
            status
            if details or status is None
            else {**status, "why": redaction.masked(status["why"])}
        )
        next(n for n in nodes if n.id == node_id).rollout = shown


@blp.route("/nodes/<string:name>/labels")
class NodeLabels(MethodView):
    @require("node:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(NodeLabelsSchema)
    @blp.response(200, NodeSchema)
    def put(self, body: dict[str, Any], name: str) -> Any:
        """Set the node's labels, all of them (rollouts select nodes by label); audited."""
        return service.set_labels(db_session(), name, principal(), labels=body["labels"])

    @require("node:manage")
    @blp.doc(security=BEARER)
    @blp.arguments(NodeLabelChangeSchema)
    @blp.response(200, NodeSchema)
    def patch(self, body: dict[str, Any], name: str) -> Any:
        """Add and remove some of the node's labels; audited."""
        return service.set_labels(
            db_session(), name, principal(), add=tuple(body["add"]), remove=tuple(body["remove"])
        )


@blp.route("/nodes/<string:name>/enrollment-token", methods=["POST"])
@require("node:manage")
@blp.doc(security=BEARER)
@blp.response(201, NewNodeSchema)
def enrollment_token(name: str) -> Any:
    """A new one-time enrollment token for a node (a rebuilt host)."""
    session = db_session()
    secret = service.new_enrollment_token(session, name, principal())
    return {"node": service.get_node(session, name), "enrollment_token": secret}


@blp.route("/agent/enroll", methods=["POST"])
@blp.arguments(EnrollRequestSchema)
@blp.response(201, EnrollAnswerSchema)
def enroll(body: dict[str, Any]) -> Any:
    """Exchange a one-time enrollment token for the node's agent token. No bearer token."""
    node, token = service.enroll(
        db_session(),
        body["enrollment_token"],
        hostname=body.get("hostname"),
        agent_version=body.get("agent_version"),
    )
    return {"node": node, "token": token}


@blp.route("/agent/heartbeat", methods=["POST"])
@require("agent")
@blp.doc(security=BEARER)
@blp.arguments(HeartbeatSchema)
@blp.response(200, NodeSchema)
def heartbeat(body: dict[str, Any]) -> Any:
    """Report the node's inventory."""
    session = db_session()
    node = service.node_of(session, principal())
    return service.heartbeat(session, node, body["inventory"], body.get("agent_version"))


@blp.route("/agent/next")
@require("agent")
@blp.doc(
    security=BEARER,
    responses={"200": {"description": "A step to run"}, "204": {"description": "No work yet"}},
)
@blp.arguments(NextArgs, location="query")
def next_step(args: dict[str, Any]) -> Any:
    """Long-poll for the next step of this node's job (see docs/agent-protocol.md)."""
    app = state()
    session = db_session()
    node = service.node_of(session, principal())
    if request.method == "HEAD":
        # A HEAD would take a step whose body it never reads: it takes nothing, waits never.
        return _no_work(0, busy=False)
    app.start_listener()
    service.touch(session, node)
    node_id = node.id  # read now: the row is expired once a transaction ends
    park = request.environ.get(PARK, NOT_PARKABLE)
    if park is NOT_PARKABLE:
        return _wait_in_thread(args["wait"], node)
    resumed: Optional[Parked] = request.environ.get(RESUMED)
    if resumed is not None:  # the worker runs a parked poll again: it started before
        poll = resumed.state
        if overtaken(app.notifier, poll):
            session.rollback()
            return _no_work(args["wait"], busy=False)
    elif not args["wait"] or park is None:
        poll = {"deadline": 0.0, "ticket": 0}
    else:
        ticket = announce_poll(session, app.notifier, node_id)
        poll = {"deadline": time.monotonic() + args["wait"], "ticket": ticket, "node_id": node_id}
    session.commit()
    limit = app.settings.max_polls_per_node
    seen = app.notifier.counter(node_id)
    step = JobService(session, app.notifier).claim_next(node)
    if step is not None:
        return _handed(step)
    session.rollback()  # nothing of this request is kept while it is parked
    ticket = poll["ticket"]
    if (
        park is not None
        and poll["deadline"] > time.monotonic()
        and not app.notifier.superseded(node_id, ticket, limit)
    ):
        # Nothing yet: the worker keeps the connection, without this thread, until the node
        # is woken, a newer poll of the node supersedes this one, or the deadline passes.
        park(
            Parked(
                deadline=poll["deadline"],
                watch=lambda wake: app.notifier.watch(node_id, seen, wake, ticket, limit),
                unwatch=lambda wake: app.notifier.unwatch(node_id, wake),
                state=poll,
            )
        )
    return _no_work(args["wait"], busy=park is None)


def _wait_in_thread(wait: int, node: Any) -> Any:
    """The long-poll under a server that cannot park it (the test client, werkzeug): it
    waits in its thread, and only so many may wait at once (NSO_REPO_MAX_WAITING_POLLS, at
    most THREAD_WAITING_POLLS), so threads remain for the rest."""
    app = state()
    session = db_session()
    cap = min(app.settings.max_waiting_polls, THREAD_WAITING_POLLS)
    waits = bool(wait) and app.notifier.hold(cap)
    try:
        limit = app.settings.max_polls_per_node
        ticket = announce_poll(session, app.notifier, node.id) if waits else 0
        session.commit()
        jobs = JobService(session, app.notifier)
        deadline = time.monotonic() + (wait if waits else 0)
        node_id = node.id
        seen = app.notifier.counter(node_id)
        step = jobs.claim_next(node)
        # Sleep on the notifier, not on the database: one query per wake-up, none while idle,
        # and no transaction (nor the pooled connection it holds) kept across a wait.
        while step is None:
            session.rollback()
            if not app.notifier.wait(node_id, seen, deadline - time.monotonic(), ticket, limit):
                break
            if app.notifier.superseded(node_id, ticket, 1):
                break  # a newer poll of the node takes what woke it (notify.overtaken)
            seen = app.notifier.counter(node_id)
            service.still_active(session, principal())
            step = jobs.claim_next(node)
    finally:
        if waits:
            app.notifier.release()
    if step is not None:
        return _handed(step)
    return _no_work(wait, busy=bool(wait) and not waits)


def _handed(step: Step) -> dict[str, Any]:
    """The answer that hands the agent its step, with the small blobs it names inside."""
    return {"step": with_inline_blobs(step_payload(step), state().storage, db_session())}


def _no_work(wait: int, busy: bool) -> Response:
    answer = Response(status=204)
    if busy:
        # Every place to wait is taken: come back later rather than at once.
        answer.headers["Retry-After"] = str(min(wait, BUSY_RETRY_SECONDS))
    return answer


@blp.route("/agent/steps/<int:step_id>", methods=["POST"])
@require("agent")
@blp.doc(security=BEARER)
@blp.arguments(StepReportSchema)
@blp.response(200)
def report_step(body: dict[str, Any], step_id: int) -> Any:
    """Report a step's progress or result. Idempotent by report_id."""
    app = state()
    session = db_session()
    node = service.node_of(session, principal())
    service.touch(session, node)
    answer = JobService(session, app.notifier).report(node, step_id, body)
    if answer["job"]["state"] not in JOB_ACTIVE:
        # A fleet rollout waits for this job: its next targets may start now.
        app.after_job(answer["job"]["id"])
    return answer
