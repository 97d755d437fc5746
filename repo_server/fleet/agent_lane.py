"""Agents' claims and reports served together, before Flask (upgrades/batched.py).

When a patch rollout starts, every affected agent's parked long-poll is woken at once; each
claims its step, applies it and reports within a second or two. One at a time through
Flask, a claim and a report cost 5-7 ms of server CPU each, so a thousand agents queued for
twenty seconds on two cores (bench/patch_latency.py). Here:

- a woken long-poll (`GET /api/v1/agent/next` run again by the worker, repo_server/
  parking.py) whose node has a step now gets it from a batch: every poll woken at that
  moment claims in one transaction;
- a step report (`POST /api/v1/agent/steps/<id>`) whose body passes the view's own checks
  (request_guards, StepReportSchema) is applied in a batch with the reports that arrived
  with it.

The rules are the full path's (upgrades/jobs.py), and so are the answers. Anything this
lane does not serve, it hands to Flask unchanged, body included: a first poll, a poll with
no step for it now, a token that is not a live agent's, a report the view would refuse, a
report_id seen before. Errors therefore come from one place, the views.
"""

from __future__ import annotations

import io
import re
import time
from typing import Any, Callable, Optional

from marshmallow import ValidationError
from webargs.core import is_json, parse_json
from werkzeug.http import parse_options_header

from repo_server.context import AppState
from repo_server.db import MAX_ID
from repo_server.errors import AppError
from repo_server.fleet.idle_polls import bearer_digest, plain_poll
from repo_server.fleet.notify import Notifier, overtaken
from repo_server.fleet.schemas import StepReportSchema
from repo_server.group_commit import ALONE, GroupCommit
from repo_server.observability import batch_sized, note_request
from repo_server.parking import RESUMED, Parked
from repo_server.request_guards import check_json
from repo_server.upgrades.batched import Report, Served, claim_many, report_many
from repo_server.upgrades.job_states import JOB_ACTIVE

NEXT = "/api/v1/agent/next"
REPORT_ROUTE = "/api/v1/agent/steps/<int:step_id>"
REPORT_PATH = re.compile(r"/api/v1/agent/steps/([1-9][0-9]{0,15})")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def middleware(app: WsgiApp, state: AppState, dumps: Callable[[Any], str]) -> WsgiApp:
    """WSGI middleware before Flask; ``dumps`` is the app's JSON encoder."""

    def batch(
        kind: str,
        serve: Callable[[Any, list[Any]], list[object]],
        after: Callable[[list[object]], None] = lambda _answers: None,
    ) -> GroupCommit[Any]:
        def run(items: list[Any]) -> list[object]:
            with state.sessions() as session:
                return serve(session, items)

        return GroupCommit(run, sized=batch_sized(kind), after=after)

    def ended(answers: list[object]) -> None:
        # The fleet rollouts of the jobs that ended may start their next targets now: once
        # every report of the batch is answered, and the next batch is under way.
        state.after_jobs(
            [
                a.answer["job"]["id"]
                for a in answers
                if isinstance(a, Served) and a.answer["job"]["state"] not in JOB_ACTIVE
            ]
        )

    claims = batch(
        "claim", lambda session, items: claim_many(session, state.notifier, state.storage, items)
    )
    reports = batch(
        "report", lambda session, items: report_many(session, state.notifier, items), ended
    )
    report_schema = StepReportSchema()
    json_logs = state.settings.log_format == "json"

    def lane(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.monotonic()
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
        if method == "GET" and path == NEXT:
            digest = _woken_poll(environ, state.notifier)
            answer = claims.submit(digest) if digest else ALONE
            route = NEXT
        elif method == "POST" and (match := REPORT_PATH.fullmatch(path)):
            made = _report(environ, int(match[1]), state.settings.max_json_bytes, report_schema)
            answer = reports.submit(made) if made else ALONE
            route = REPORT_ROUTE
        else:
            return app(environ, start_response)
        if not isinstance(answer, Served):
            return app(environ, start_response)
        body = (dumps(answer.answer) + "\n").encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        note_request(
            str(method),
            route,
            200,
            time.monotonic() - started,
            path=path,
            remote=environ.get("REMOTE_ADDR"),
            actor=answer.actor,
            json_logs=json_logs,
        )
        return [body]

    return lane


def _woken_poll(environ: dict[str, Any], notifier: Notifier) -> Optional[str]:
    """The token digest of a parked poll run again, as the full view would take it; None
    for anything else."""
    resumed: Optional[Parked] = environ.get(RESUMED)
    if resumed is None or resumed.state.get("deadline", 0.0) <= time.monotonic():
        return None  # not woken, or its wait ended: most often nothing came (idle_polls.py)
    if overtaken(notifier, resumed.state):
        return None  # a newer poll of its node takes the step; idle_polls.py answers 204
    plain = plain_poll(environ)
    return plain[1] if plain is not None else None


def _report(
    environ: dict[str, Any], step_id: int, limit: int, schema: StepReportSchema
) -> Optional[Report]:
    """The report as the view would take it (request_guards, then StepReportSchema), or
    None. The body read here is handed on whole to Flask when the lane does not serve it."""
    length = environ.get("CONTENT_LENGTH", "")
    # As the view reads it (werkzeug): str.strip() would also take off a \xa0 or \x85,
    # which the view keeps, and so serve a report the view refuses.
    mimetype = parse_options_header(str(environ.get("CONTENT_TYPE", "")))[0].lower()
    if (
        environ.get("QUERY_STRING")
        or "HTTP_TRANSFER_ENCODING" in environ
        or "HTTP_CONTENT_ENCODING" in environ  # the view refuses what it does not decode
        or not (length.isascii() and length.isdigit() and len(length) <= 12)
        or not 0 < int(length) <= limit
        or not is_json(mimetype)
        or step_id > MAX_ID
    ):
        return None
    digest = bearer_digest(environ)
    data = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = io.BytesIO(data)
    if digest is None or len(data) != int(length):
        return None
    try:
        check_json(data)
        # As the view's parser reads it: UTF-8 only (json.loads would take UTF-16 too).
        body = schema.load(parse_json(data))
    except (AppError, ValidationError, ValueError, RecursionError, TypeError):
        return None
    return Report(digest, step_id, body)
