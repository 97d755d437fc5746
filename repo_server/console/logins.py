"""Console logins: a token typed once becomes a session the browser holds in an HttpOnly,
SameSite=Strict cookie. The token itself is never stored in the browser or on the server:
the cookie holds a random secret, the server its sha256, the token's id and the session's
CSRF token. A revoked token ends its sessions at their next request."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit, authenticate, hash_token
from repo_server.console.models import ConsoleSession
from repo_server.db import utcnow
from repo_server.errors import Forbidden, Unauthenticated

# A login lasts a working night at most, and ends after two hours without a page.
LIFETIME = timedelta(hours=12)
IDLE = timedelta(hours=2)
TOUCH_EVERY = timedelta(minutes=1)
SECRET_MAX = 200


@dataclass(frozen=True)
class Login:
    principal: Principal
    csrf_token: str


def log_in(session: Session, typed: str) -> tuple[Login, str]:
    """Check the typed token and open a session for it: (the login, the cookie's secret).
    Agent tokens are refused: they speak for a node, not for a person."""
    typed = typed.strip()
    if not typed or len(typed) > SECRET_MAX:
        raise Unauthenticated("paste an API token ('nso-repo token create --role operator ...')")
    who = authenticate(session, f"Bearer {typed}")
    if who.role == "agent":
        raise Forbidden(
            "an agent token speaks for its node and cannot open the console: "
            "log in with an admin, operator, uploader or viewer token"
        )
    now = utcnow()
    # Expired sessions go as new ones come: the table holds live logins only.
    session.execute(
        delete(ConsoleSession).where(
            or_(ConsoleSession.expires_at < now, ConsoleSession.last_seen_at < now - IDLE)
        )
    )
    secret = secrets.token_urlsafe(32)
    row = ConsoleSession(
        secret_hash=hash_token(secret),
        csrf_token=secrets.token_urlsafe(32),
        token_id=who.token_id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + LIFETIME,
    )
    session.add(row)
    audit(session, who.actor, "console.login", f"token:{who.token_id}")
    session.commit()
    return Login(who, row.csrf_token), secret


def resume(session: Session, secret: Optional[str]) -> Optional[Login]:
    """The login a cookie stands for, or None: unknown, expired, idle too long, or its
    token revoked."""
    if not secret or len(secret) > SECRET_MAX:
        return None
    row = session.scalar(
        select(ConsoleSession).where(ConsoleSession.secret_hash == hash_token(secret))
    )
    now = utcnow()
    if row is None or row.expires_at <= now or row.last_seen_at <= now - IDLE:
        return None
    token = row.token
    if not token.active or token.role == "agent":
        return None
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
        session.commit()
    who = Principal(token_id=token.id, name=token.name, role=token.role, node_id=token.node_id)
    return Login(who, row.csrf_token)


def log_out(session: Session, secret: Optional[str], who: Principal) -> None:
    if not secret:
        return
    session.execute(delete(ConsoleSession).where(ConsoleSession.secret_hash == hash_token(secret)))
    audit(session, who.actor, "console.logout", f"token:{who.token_id}")
    session.commit()
