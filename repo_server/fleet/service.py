"""Nodes: registration, one-time enrollment, heartbeat with inventory."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, Union

from sqlalchemy import Connection, String, cast, delete, or_, select, update
from sqlalchemy.orm import Session, defer

from repo_server.auth.models import ApiToken
from repo_server.auth.service import (
    LAST_USED_GRANULARITY_S,
    TOKEN_PREFIX,
    Principal,
    audit,
    hash_token,
)
from repo_server.db import among, dialect_of, utcnow
from repo_server.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    Unauthenticated,
    ValidationFailed,
)
from repo_server.fleet.models import AGENT_NAME_FORMAT, NODE_NAME_MAX, EnrollmentToken, Node
from repo_server.pages import Page, paginate
from repo_server.upgrades.results import one_line, printable_tree

ENROLLMENT_PREFIX = "nse_"
ENROLLMENT_VALID = timedelta(hours=24)
NODE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class EnrollmentRefused(AppError):
    status = 401
    code = "enrollment_refused"


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NODE_NAME_MAX or not set(name) <= NODE_NAME_CHARS:
        raise ValidationFailed(
            f"node name {name!r} is not valid: use 1 to {NODE_NAME_MAX} letters, digits, "
            "'-', '_' or '.'",
            field="name",
        )
    return name


def get_node(session: Session, name: str) -> Node:
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        raise NotFound(f"no node named {name!r}: list nodes with 'nso-repo node ls'")
    return node


LABEL_CHARS = NODE_NAME_CHARS | set(":=/")
MAX_LABELS = 50


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def check_labels(labels: list[str]) -> list[str]:
    """Labels as stored: checked characters, lower case (they match the same on every
    database), each once."""
    cleaned = list(dict.fromkeys(label.strip().lower() for label in labels))
    bad = [label for label in cleaned if not 0 < len(label) <= 64 or not set(label) <= LABEL_CHARS]
    if bad or len(cleaned) > MAX_LABELS:
        raise ValidationFailed(
            f"labels {bad[:5] if bad else cleaned[MAX_LABELS:][:5]} are not valid: at most "
            f"{MAX_LABELS} labels of 1 to 64 letters, digits, '-', '_', '.', ':', '=' or '/'",
            field="labels",
        )
    return cleaned


def set_labels(
    session: Session,
    name: str,
    who: Principal,
    labels: Optional[list[str]] = None,
    add: tuple[str, ...] = (),
    remove: tuple[str, ...] = (),
) -> Node:
    """Replace the node's labels with ``labels``, or add and remove some, under the
    node's lock (two operators labelling at once both keep their change)."""
    node = get_node(session, name)
    lock_node(session, node.id)
    session.refresh(node)
    if labels is None:
        dropped = set(check_labels(list(remove)))
        labels = [x for x in (node.labels or []) if x not in dropped] + check_labels(list(add))
    cleaned = sorted(check_labels(labels))
    before = list(node.labels or [])
    node.labels = cleaned
    audit(session, who.actor, "node.labels", f"node:{node.name}", before=before, after=cleaned)
    session.commit()
    return node


def list_nodes(
    session: Session,
    page: int = 1,
    per_page: int = 50,
    version: Optional[str] = None,
    q: Optional[str] = None,
    label: Optional[str] = None,
) -> Page[Node]:
    """One page of the fleet by name: the nodes running ``version`` (exactly; "none" for
    those that reported no running NSO), whose name or hostname contains ``q``, that carry
    ``label``."""
    query = select(Node)
    if label:
        # Labels are stored as a JSON list of checked characters (no quote): the list's text
        # holds the label in quotes exactly when the node carries it.
        (checked,) = check_labels([label])
        query = query.where(cast(Node.labels, String).like(_like(f'"{checked}"'), escape="\\"))
    if version == "none":
        query = query.where(Node.running_version.is_(None))
    elif version:
        query = query.where(Node.running_version == version)
    if q:
        pattern = _like(q)
        query = query.where(
            or_(Node.name.ilike(pattern, escape="\\"), Node.hostname.ilike(pattern, escape="\\"))
        )
    return paginate(session, query, page, per_page, Node.name)


def lock_node(session: Session, node_id: int) -> None:
    """Serialise changes to one node: an UPDATE takes its row lock (PostgreSQL) or the
    write lock (SQLite) until the transaction ends."""
    session.execute(update(Node).where(Node.id == node_id).values(id=Node.id))


def _revoke_enrollments(session: Session, node_id: int, keep: Optional[int] = None) -> int:
    """Every enrollment token of the node but ``keep`` stops working: one way in at a time,
    so a token handed out earlier cannot enroll later and take the node over."""
    query = delete(EnrollmentToken).where(EnrollmentToken.node_id == node_id)
    if keep is not None:
        query = query.where(EnrollmentToken.id != keep)
    return int(session.execute(query).rowcount)  # type: ignore[attr-defined]


def _new_enrollment(session: Session, node: Node) -> str:
    lock_node(session, node.id)
    _revoke_enrollments(session, node.id)
    secret = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
    session.add(
        EnrollmentToken(
            node_id=node.id,
            token_hash=hash_token(secret),
            expires_at=utcnow() + ENROLLMENT_VALID,
        )
    )
    return secret


def add_node(session: Session, name: str, who: Principal) -> tuple[Node, str]:
    """Register a node and return it with a one-time enrollment token for its agent."""
    name = _check_name(name)
    if session.scalar(select(Node.id).where(Node.name == name)):
        raise Conflict(
            f"node {name!r} exists: to enroll its agent again run 'nso-repo node enroll-token {name}'"
        )
    node = Node(name=name, created_by=who.actor)
    session.add(node)
    session.flush()
    secret = _new_enrollment(session, node)
    audit(session, who.actor, "node.add", f"node:{name}")
    session.commit()
    return node, secret


def new_enrollment_token(session: Session, name: str, who: Principal) -> str:
    """A new one-time enrollment token for a node; its older ones stop working."""
    node = get_node(session, name)
    secret = _new_enrollment(session, node)
    audit(session, who.actor, "node.enrollment_token", f"node:{name}")
    session.commit()
    return secret


def enroll(
    session: Session, secret: str, *, hostname: Optional[str], agent_version: Optional[str]
) -> tuple[Node, str]:
    """Exchange a one-time enrollment token for the node's own agent token."""
    now = utcnow()
    enrollment = session.scalar(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(secret or ""))
    )
    if enrollment is None or enrollment.used_at is not None or enrollment.expires_at < now:
        raise EnrollmentRefused(
            "the enrollment token is unknown, used or expired: ask an operator for a new one "
            "('nso-repo node enroll-token NODE')"
        )
    # One enrollment of a node at a time: the one that waits finds its token revoked below.
    lock_node(session, enrollment.node_id)
    # Spend the token with a guarded UPDATE so two racing enrollments cannot both win.
    spent = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == enrollment.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise EnrollmentRefused("the enrollment token was just used: ask for a new one")
    node = session.get(Node, enrollment.node_id)
    assert node is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
    revoked = _revoke_enrollments(session, node.id, keep=enrollment.id)
    # A re-enrolled node (rebuilt host) must not leave its old agent token working.
    session.execute(
        update(ApiToken)
        .where(ApiToken.node_id == node.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    node_secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            name=AGENT_NAME_FORMAT.format(node.name),
            role="agent",
            token_hash=hash_token(node_secret),
            created_by="enrollment",
            node_id=node.id,
        )
    )
    node.enrolled_at = now
    node.last_seen_at = now
    node.hostname = one_line(hostname) if hostname else hostname
    node.agent_version = one_line(agent_version) if agent_version else agent_version
    audit(
        session,
        f"agent:{node.name}",
        "node.enroll",
        f"node:{node.name}",
        hostname=node.hostname,
        revoked_enrollment_tokens=revoked,
    )
    session.commit()
    return node, node_secret


def node_of(session: Session, who: Principal) -> Node:
    """The node an agent token speaks for."""
    if who.node_id is None:
        raise Forbidden(
            "this endpoint is for node agents: use the token the agent got at enrollment"
        )
    # The inventory (the largest column, JSON) is loaded only when it is read: a poll or a
    # report does not.
    node = session.get(Node, who.node_id, options=[defer(Node.inventory)])
    if node is None:
        raise Forbidden("the node of this token no longer exists: enroll the agent again")
    return node


def still_active(session: Session, who: Principal) -> None:
    """Refuse a token revoked since the request authenticated it: a long-poll waits up to
    60 s, and enrolling the node again (or an admin) may revoke the token it began with in
    the meantime. That poll must not take the node's next step."""
    active = session.scalar(
        select(ApiToken.id).where(ApiToken.id == who.token_id, ApiToken.revoked_at.is_(None))
    )
    if active is None:
        session.rollback()
        raise Unauthenticated(
            "this agent token was revoked while the request waited (the node was enrolled "
            "again, or an admin revoked it): enroll the agent again with a new enrollment "
            "token ('nso-repo node enroll-token NODE')"
        )


# How stale `last_seen_at` may get before an agent's request writes it again. Every poll and
# report used to write the node's row: a write (and a commit) per request, and a row lock on
# `nodes` that a waiting migration queued behind.
SEEN_GRANULARITY_S = 10


def touch(session: Session, node: Node) -> None:
    now, seen = utcnow(), node.last_seen_at  # UTCDateTime: aware on every backend
    if seen is None or (now - seen).total_seconds() >= SEEN_GRANULARITY_S:
        node.last_seen_at = now


@dataclass(frozen=True)
class SeenAgent:
    """What `touch_many` needs of an agent's request: its token and node, and when each
    was last written."""

    token_id: int
    token_used: Optional[datetime]
    node_id: int
    node_seen: Optional[datetime]


def touch_many(executor: Union[Session, Connection], agents: Iterable[SeenAgent]) -> None:
    """`touch` and `authenticate`'s last-use write for many agents' requests (batches:
    fleet/idle_polls.py, upgrades/batched.py), at the same granularity: at most two
    statements. On PostgreSQL the rows are locked in id order, as a patch rollout's
    targets are (patches/rollouts.py): two transactions that both lock nodes wait for each
    other, never deadlock."""
    now = utcnow()

    def age(when: Optional[datetime]) -> float:
        return float("inf") if when is None else (now - when).total_seconds()

    agents = list(agents)
    nodes = {a.node_id for a in agents if age(a.node_seen) >= SEEN_GRANULARITY_S}
    tokens = {a.token_id for a in agents if age(a.token_used) > LAST_USED_GRANULARITY_S}
    dialect = dialect_of(executor)
    # Nodes first, as a report's full path: touch, then the job's lock.
    for model, ids, values in (
        (Node, nodes, {"last_seen_at": now}),
        (ApiToken, tokens, {"last_used_at": now}),
    ):
        if not ids:
            continue
        chosen: Any = among(model.id, ids, dialect)
        if dialect == "postgresql":
            chosen = model.id.in_(
                select(model.id).where(chosen).order_by(model.id).with_for_update(key_share=True)
            )
        executor.execute(update(model).where(chosen).values(values))


# The inventory's text of several lines (NSO's words); every other string in it is a value
# shown within a line (`nso-repo node ls`, plan reasons), and keeps no line break.
MULTI_LINE = frozenset({"cli_error", "errors", "be_secondary_result"})


def heartbeat(
    session: Session, node: Node, inventory: dict[str, Any], agent_version: Optional[str]
) -> Node:
    now = utcnow()
    # Operators read inventories in a terminal (`nso-repo node ls`, preflight reasons).
    node.inventory = printable_tree(inventory, MULTI_LINE)
    node.inventory_checked = True  # the view's HeartbeatSchema checked it
    running = node.inventory.get("running_version")
    node.running_version = running[:64] if isinstance(running, str) and running else None
    node.inventory_at = now
    node.last_seen_at = now
    if agent_version:
        node.agent_version = one_line(agent_version)
    session.commit()
    return node
