"""Tokens and audit events. Services own the transaction: they commit."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.auth.models import ROLES, TOKEN_NAME_MAX, ApiToken, AuditEvent
from repo_server.db import utcnow
from repo_server.errors import AppError, NotFound, Unauthenticated, ValidationFailed

TOKEN_PREFIX = "nsr_"  # nosec B105 # a public prefix that marks our tokens, not a secret


# How stale a token's `last_used_at` may get before a request writes it again.
LAST_USED_GRANULARITY_S = 60


def hash_token(secret: str) -> str:
    # The secret is 256 random bits, so a plain digest is enough: no salt or slow hash needed.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role. `actor` is what the audit log records."""

    token_id: Optional[int]
    name: str
    role: str
    node_id: Optional[int] = None

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


def audit(session: Session, actor: str, action: str, target: str, **details: Any) -> AuditEvent:
    """Add an audit event to the caller's transaction (it commits with the change it records)."""
    event = AuditEvent(actor=actor, action=action, target=target, details=details)
    session.add(event)
    return event


def audit_refusal(
    session: Session, actor: str, action: str, target: str, refused: AppError, **details: Any
) -> None:
    """Record a request the service refused, with why, in a transaction of its own: what
    the request did before it was refused is rolled back first, so nothing but the event
    is written."""
    session.rollback()
    audit(
        session,
        actor,
        action,
        target,
        code=refused.code,
        message=refused.message[:500],
        **details,
    )
    session.commit()


def create_token(session: Session, *, name: str, role: str, actor: str) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is never stored or shown again."""
    if role not in ROLES:
        raise ValidationFailed(
            f"unknown role {role!r}: choose one of {', '.join(ROLES)}", field="role"
        )
    name = name.strip()
    if not name or len(name) > TOKEN_NAME_MAX:
        raise ValidationFailed(
            f"a token needs a name of 1 to {TOKEN_NAME_MAX} characters", field="name"
        )
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role, token_hash=hash_token(secret), created_by=actor)
    session.add(token)
    session.flush()
    audit(session, actor, "token.create", f"token:{token.id}", name=name, role=role)
    session.commit()
    return token, secret


def revoke_token(session: Session, token_id: int, *, actor: str) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token with id {token_id}: list tokens with GET /api/v1/tokens")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit(session, actor, "token.revoke", f"token:{token.id}", name=token.name)
        session.commit()
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def has_active_admin(session: Session) -> bool:
    query = select(ApiToken.id).where(ApiToken.role == "admin", ApiToken.revoked_at.is_(None))
    return session.scalar(query.limit(1)) is not None


def authenticate(session: Session, header: Optional[str]) -> Principal:
    """Resolve an `Authorization: Bearer <token>` header to a principal."""
    if not header:
        raise Unauthenticated(
            "this endpoint needs a token: send 'Authorization: Bearer <token>' "
            "(create one with 'nso-repo token create')"
        )
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthenticated("malformed Authorization header: use 'Bearer <token>'")
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None or not token.active:
        raise Unauthenticated("the token is unknown or revoked: ask an admin for a new one")
    now = utcnow()
    # Touch last_used at most once a minute so reads do not turn into writes on every call.
    if (
        token.last_used_at is None
        or (now - token.last_used_at).total_seconds() > LAST_USED_GRANULARITY_S
    ):
        token.last_used_at = now
        session.commit()
    return Principal(token_id=token.id, name=token.name, role=token.role, node_id=token.node_id)


def list_audit(
    session: Session,
    *,
    limit: int,
    before_id: Optional[int] = None,
    action: Optional[str] = None,
    actor: Optional[str] = None,
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if action:
        query = query.where(AuditEvent.action == action)
    return list(session.scalars(query))
