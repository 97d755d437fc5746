"""The agent's poll when there is nothing to do, answered before Flask.

Most polls of a fleet find no work: 10,000 agents ask every 30 s, and a patch rollout's
agents ask again right after each report. Through Flask such a poll cost about 2 ms of
server CPU: the token, then the node, then its hold, each an ORM query. Here a poll that
is certain to get "nothing yet" is answered from Core queries before Flask, with the
polls that arrive with it (repo_server/group_commit.py: one connection, a few statements
and one commit for the batch, each node once per batch):

- GET /api/v1/agent/next, with no query but ``wait=N`` (as NextArgs bounds it) or nothing;
- a bearer token that is known, not revoked, an agent's, whose node exists and is held by
  no job.

It writes what the full path writes, at the same granularity: the token's last use and the
node's last-seen time (auth/service.py, fleet/service.py).

It then answers 204, or parks the poll exactly as the full view does (fleet/views.py
next_step), with the same state, so a parked poll woken by work runs again (and claims
its step in fleet/agent_lane.py, or in the full view). Any
other request, and any doubt (a bad token, a revoked one, a node with a job, a body, a
query it does not read), goes to Flask unchanged: this path only ever says "no work yet" to an agent whose
token the full path would accept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from repo_server.auth.models import ApiToken
from repo_server.auth.roles import roles_for
from repo_server.auth.service import hash_token
from repo_server.context import AppState
from repo_server.db import among
from repo_server.fleet.models import Node
from repo_server.fleet.notify import notify_polls, overtaken
from repo_server.fleet.schemas import POLL_WAIT_DEFAULT, POLL_WAIT_MAX
from repo_server.fleet.service import SeenAgent, touch_many
from repo_server.fleet.views import BUSY_RETRY_SECONDS
from repo_server.group_commit import ALONE, GroupCommit
from repo_server.observability import batch_sized, record
from repo_server.parking import PARK, PARKED_NOW, RESUMED, Parked
from repo_server.upgrades.models import NodeHold

log = logging.getLogger(__name__)

PATH = "/api/v1/agent/next"
AGENT_ROLES = roles_for("agent")  # the full view's @require("agent")

_IDLE_AGENT = (
    select(
        ApiToken.token_hash,
        ApiToken.role,
        ApiToken.revoked_at,
        ApiToken.id.label("token_id"),
        ApiToken.last_used_at,
        Node.id.label("node_id"),
        Node.last_seen_at,
    )
    .join(Node, Node.id == ApiToken.node_id)
    .where(~select(NodeHold.node_id).where(NodeHold.node_id == Node.id).exists())
)
_HELD = select(NodeHold.node_id)

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


def bearer_digest(environ: dict[str, Any]) -> Optional[str]:
    """The digest of the request's bearer token, as `authenticate` reads the header; None
    without one."""
    scheme, _, secret = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
    secret = secret.strip()
    return hash_token(secret) if scheme.lower() == "bearer" and secret else None


def plain_poll(environ: dict[str, Any]) -> Optional[tuple[int, str]]:
    """``(wait, token digest)`` of a poll the paths before Flask may answer: no body, no
    query but ``wait``, a bearer token. None for anything else: Flask checks it."""
    if environ.get("CONTENT_LENGTH", "") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ:
        return None
    wait = wait_of(environ.get("QUERY_STRING", ""))
    digest = bearer_digest(environ)
    return None if wait is None or digest is None else (wait, digest)


def IDLE_POLLS() -> Any:
    from repo_server.observability import metrics

    return metrics().idle_polls


def middleware(app: WsgiApp, state: AppState) -> WsgiApp:
    """WSGI middleware before Flask: answer the idle polls it can, pass on the rest."""
    # Polls arriving together (a fleet's agents asking again after their reports) share
    # one connection, a few statements and one commit (repo_server/group_commit.py).
    together: GroupCommit[_Poll] = GroupCommit(
        lambda polls: _look(state, polls), sized=batch_sized("idle")
    )

    def idle_polls(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != PATH:
            return app(environ, start_response)
        resumed: Optional[Parked] = environ.get(RESUMED)
        if resumed is not None and overtaken(state.notifier, resumed.state):
            # Woken with a newer poll of its node, which takes the step: this one gets none.
            record(lambda m: m.idle_polls.inc())
            start_response("204 NO CONTENT", _no_work(0, busy=False))
            return [b""]
        try:
            answered = _idle(state, environ, together)
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


@dataclass(frozen=True)
class _Poll:
    digest: str  # of the bearer token
    waits: bool  # parks when there is nothing to do
    fresh: bool  # not a parked poll run again: its start is announced


@dataclass(frozen=True)
class _Idle:
    node_id: int
    seen: int  # the node's wake-up counter, read before its holds were looked at
    ticket: int  # a fresh poll's (announce_poll); 0 otherwise


def _idle(
    state: AppState, environ: dict[str, Any], together: GroupCommit[_Poll]
) -> Optional[list[tuple[str, str]]]:
    """The headers of the 204 that answers this poll, or None when Flask must answer it."""
    plain = plain_poll(environ)
    if plain is None:
        return None
    wait, digest = plain
    park = environ.get(PARK, _IDLE_AGENT)  # the sentinel: not under the server's worker
    if wait and park is _IDLE_AGENT:
        return None  # it waits in a thread: the full view counts those
    resumed: Optional[Parked] = environ.get(RESUMED)
    waits = bool(wait) and park is not None
    if waits and resumed is None:
        state.start_listener()
    poll = _Poll(digest, waits, fresh=resumed is None)
    found = together.submit(poll)
    if found is ALONE:  # a poll of a node already in the batch, or a batch that failed
        found = _look(state, [poll])[0]
    if not isinstance(found, _Idle):
        return None if found is None else _no_work(wait, busy=park is None)
    notifier, node_id, seen = state.notifier, found.node_id, found.seen
    polled: dict[str, Any] = (
        resumed.state
        if resumed is not None
        else {
            "deadline": time.monotonic() + wait,
            "ticket": found.ticket,
            "node_id": node_id,
        }
    )
    limit = state.settings.max_polls_per_node
    ticket = polled["ticket"]
    if polled["deadline"] > time.monotonic() and not notifier.superseded(node_id, ticket, limit):
        park(
            Parked(
                deadline=polled["deadline"],
                watch=lambda wake: notifier.watch(node_id, seen, wake, ticket, limit),
                unwatch=lambda wake: notifier.unwatch(node_id, wake),
                state=polled,
            )
        )
    return _no_work(wait, busy=False)


def _look(state: AppState, polls: list[_Poll]) -> list[object]:
    """Each poll's verdict: None (Flask answers it), True (no work, and it does not wait),
    an `_Idle` (no work: it waits), ALONE (its node is in the batch already: one poll of a
    node per batch, so each start is announced on its own)."""
    with state.engine.connect() as connection:
        dialect = connection.dialect.name
        digests = {poll.digest for poll in polls}
        rows = {
            row.token_hash: row
            for row in connection.execute(
                _IDLE_AGENT.where(among(ApiToken.token_hash, digests, dialect))
            )
        }
        agents: list[Any] = []  # each poll's row, None when the full path answers it
        alone: set[int] = set()  # polls of a node already in the batch
        nodes: set[int] = set()
        for index, poll in enumerate(polls):
            row = rows.get(poll.digest)
            if row is not None and (row.role not in AGENT_ROLES or row.revoked_at is not None):
                row = None
            if row is not None and row.node_id in nodes:
                alone.add(index)
                row = None
            if row is not None:
                nodes.add(row.node_id)
            agents.append(row)
        # What the full path writes, at the same granularity: an agent that polls every
        # 30 s is seen at each poll, and its token used once a minute.
        touch_many(
            connection,
            [
                SeenAgent(a.token_id, a.last_used_at, a.node_id, a.last_seen_at)
                for a in agents
                if a is not None
            ],
        )
        waiting = {a.node_id: p for a, p in zip(agents, polls) if a is not None and p.waits}
        notifier = state.notifier
        counters = {node_id: notifier.counter(node_id) for node_id in waiting}
        # Looked at again after the counters were read: work made before this line is seen
        # here, and work made after it moves the counter, which wakes the parked poll.
        held = (
            set(connection.scalars(_HELD.where(among(NodeHold.node_id, waiting, dialect))))
            if waiting
            else set()
        )
        fresh = [n for n, poll in waiting.items() if poll.fresh and n not in held]
        notify_polls(connection, notifier, fresh)
        connection.commit()
    # Counted here once committed: a batch that failed is tried again, and counts once.
    tickets = {node_id: notifier.poll_started(node_id) for node_id in fresh}
    answers: list[object] = []
    for index, (agent, poll) in enumerate(zip(agents, polls)):
        if index in alone:
            answers.append(ALONE)
        elif agent is None or agent.node_id in held:
            answers.append(None)  # the full path answers it (work came: it takes it)
        elif not poll.waits:
            answers.append(True)
        else:
            node_id = agent.node_id
            answers.append(_Idle(node_id, counters[node_id], tickets.get(node_id, 0)))
    return answers


def _no_work(wait: int, busy: bool) -> list[tuple[str, str]]:
    headers = [("Content-Type", "text/html; charset=utf-8")]
    if busy:
        headers.append(("Retry-After", str(min(wait, BUSY_RETRY_SECONDS))))
    return headers
