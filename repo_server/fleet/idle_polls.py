"""The agent's poll when there is nothing to do, answered before Flask.

Most polls of a fleet find no work: 10,000 agents ask every 30 s, and a patch rollout's
agents ask again right after each report. Through Flask such a poll cost about 2 ms of
server CPU: the token, then the node, then its hold, each an ORM query. Here a poll that
is certain to get "nothing yet" is answered from one Core query, before Flask:

- GET /api/v1/agent/next, with no query but ``wait=N`` (as NextArgs bounds it) or nothing;
- a bearer token that is known, not revoked, an agent's, whose node exists and is held by
  no job.

It writes what the full path writes, at the same granularity: the token's last use and the
node's last-seen time (auth/service.py, fleet/service.py).

It then answers 204, or parks the poll exactly as the full view does (fleet/views.py
next_step), with the same state, so a parked poll woken by work runs the full view. Any
other request, and any doubt (a bad token, a revoked one, a node with a job, a body, a
query it does not read), goes to Flask unchanged: this path only ever says "no work yet" to an agent whose
token the full path would accept.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from repo_server.auth.models import ApiToken
from repo_server.auth.roles import roles_for
from repo_server.auth.service import LAST_USED_GRANULARITY_S, hash_token
from repo_server.context import AppState
from repo_server.db import utcnow
from repo_server.fleet.models import Node
from repo_server.fleet.notify import announce_poll
from repo_server.fleet.schemas import POLL_WAIT_DEFAULT, POLL_WAIT_MAX
from repo_server.fleet.service import SEEN_GRANULARITY_S
from repo_server.fleet.views import BUSY_RETRY_SECONDS
from repo_server.observability import record
from repo_server.parking import PARK, PARKED_NOW, RESUMED, Parked
from repo_server.upgrades.models import NodeHold

log = logging.getLogger(__name__)

PATH = "/api/v1/agent/next"
AGENT_ROLES = roles_for("agent")  # the full view's @require("agent")

_IDLE_AGENT = (
    select(ApiToken.role, ApiToken.revoked_at, ApiToken.last_used_at, Node.id, Node.last_seen_at)
    .join(Node, Node.id == ApiToken.node_id)
    .where(~select(NodeHold.node_id).where(NodeHold.node_id == Node.id).exists())
)
_HELD = select(NodeHold.job_id).limit(1)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def wait_of(query: str) -> Optional[int]:
    """``wait`` of a poll's query string, when it is all the query says and is valid."""
    if not query:
        return POLL_WAIT_DEFAULT
    if query.count("&") + query.count(";") > 1:
        return None  # parse_qsl would refuse more fields with an exception
    pairs = parse_qsl(query, keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "wait":
        return None
    value = pairs[0][1]
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 2 or int(value) > POLL_WAIT_MAX:
        return None
    return int(value)


def _age(when: Optional[datetime], now: datetime) -> float:
    return float("inf") if when is None else (now - when).total_seconds()


def IDLE_POLLS() -> Any:
    from repo_server.observability import metrics

    return metrics().idle_polls


def middleware(app: WsgiApp, state: AppState) -> WsgiApp:
    """WSGI middleware before Flask: answer the idle polls it can, pass on the rest."""

    def idle_polls(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != PATH:
            return app(environ, start_response)
        try:
            answered = _idle(state, environ)
        except SQLAlchemyError:
            # The full path meets the same database and answers as the app does (a JSON
            # 500, logged). At worst this poll counted one ticket more (max polls per node).
            log.warning("an idle poll failed on the database: the full path answers it")
            answered = None
        if answered is None:
            return app(environ, start_response)
        if not environ.get(PARKED_NOW):  # a parked poll is counted when it is answered
            record(lambda m: m.idle_polls.inc())
        start_response("204 NO CONTENT", answered)
        return [b""]

    return idle_polls


def _idle(state: AppState, environ: dict[str, Any]) -> Optional[list[tuple[str, str]]]:
    """The headers of the 204 that answers this poll, or None when Flask must answer it."""
    if environ.get("CONTENT_LENGTH", "") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ:
        return None  # a body: Flask checks it
    wait = wait_of(environ.get("QUERY_STRING", ""))
    scheme, _, secret = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
    secret = secret.strip()
    if wait is None or scheme.lower() != "bearer" or not secret:
        return None
    park = environ.get(PARK, _IDLE_AGENT)  # the sentinel: not under the server's worker
    if wait and park is _IDLE_AGENT:
        return None  # it waits in a thread: the full view counts those
    resumed: Optional[Parked] = environ.get(RESUMED)
    waits = bool(wait) and park is not None
    with state.engine.connect() as connection:
        digest = hash_token(secret)
        row = connection.execute(_IDLE_AGENT.where(ApiToken.token_hash == digest)).first()
        if row is None:
            return None
        role, revoked_at, last_used_at, node_id, last_seen_at = row
        if role not in AGENT_ROLES or revoked_at is not None:
            return None
        # What the full path writes, at the same granularity: an agent that polls every
        # 30 s is seen at each poll, and its token used once a minute.
        now = utcnow()
        if _age(last_used_at, now) > LAST_USED_GRANULARITY_S:  # as authenticate()
            connection.execute(
                update(ApiToken).where(ApiToken.token_hash == digest).values(last_used_at=now)
            )
        if _age(last_seen_at, now) >= SEEN_GRANULARITY_S:  # as touch()
            connection.execute(update(Node).where(Node.id == node_id).values(last_seen_at=now))
        if not waits:
            connection.commit()
            return _no_work(wait, busy=park is None)
        notifier = state.notifier
        if resumed is not None:
            poll = resumed.state
        else:
            state.start_listener()
            poll = {"deadline": time.monotonic() + wait, "ticket": 0}
        seen = notifier.counter(node_id)
        # Looked at again after the counter was read: work made before this line is seen
        # here, and work made after it moves the counter, which wakes the parked poll.
        if connection.execute(_HELD.where(NodeHold.node_id == node_id)).first() is not None:
            connection.rollback()  # the full path writes the times again
            return None
        if resumed is None:
            poll["ticket"] = announce_poll(connection, notifier, node_id)
        connection.commit()
    limit = state.settings.max_polls_per_node
    ticket = poll["ticket"]
    if poll["deadline"] > time.monotonic() and not notifier.superseded(node_id, ticket, limit):
        park(
            Parked(
                deadline=poll["deadline"],
                watch=lambda wake: notifier.watch(node_id, seen, wake, ticket, limit),
                unwatch=lambda wake: notifier.unwatch(node_id, wake),
                state=poll,
            )
        )
    return _no_work(wait, busy=False)


def _no_work(wait: int, busy: bool) -> list[tuple[str, str]]:
    headers = [("Content-Type", "text/html; charset=utf-8")]
    if busy:
        headers.append(("Retry-After", str(min(wait, BUSY_RETRY_SECONDS))))
    return headers
