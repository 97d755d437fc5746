"""Per-app and per-request state: settings, engine, storage, the request's DB session."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable, Optional, TypeVar, cast

from flask import current_app, g, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repo_server.auth.audit_events import record_failed_authentication
from repo_server.auth.roles import roles_for
from repo_server.auth.service import Principal, authenticate
from repo_server.config import Settings
from repo_server.errors import AppError, Forbidden, Unauthenticated
from repo_server.fleet.notify import Notifier, PostgresListener
from repo_server.rollouts.driver import REQUEST_STARTS, Driver, Ticker
from repo_server.storage import Storage

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    notifier: Notifier = field(default_factory=Notifier)
    listener: Optional[PostgresListener] = None
    ticker: Optional[Ticker] = None
    _ticker_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def driver(self) -> Driver:
        return Driver(self.sessions, self.notifier)

    def after_job(self, job_id: int) -> None:
        """Move on the rollout a job that just ended belongs to; never fails the request
        that ended the job (the ticker tries again)."""
        self.after_jobs([job_id])

    def after_jobs(self, job_ids: list[int]) -> None:
        """`after_job` of several jobs at once, in one query."""
        if not job_ids:
            return
        try:
            self.driver.after_jobs(job_ids)
        except Exception:
            log.exception("jobs %s ended; their rollouts move on at the next tick", job_ids)

    def move_rollout(self, rollout_id: int) -> None:
        """Start what a rollout may start now, after an operator's change (bounded: the
        ticker starts the rest). The change is committed already: a driver failure is
        logged and left to the ticker, never turned into an error for a change made."""
        try:
            self.driver.advance(rollout_id, starts=REQUEST_STARTS)
        except Exception:
            log.exception("rollout %s: the driver failed after an operator's change", rollout_id)

    def start_ticker(self) -> None:
        """Run the rollout driver on this process's clock; started by the first request,
        so that it runs in each gunicorn worker, not in the process that forked them."""
        if self.ticker is not None or not self.settings.rollout_tick:
            return
        with self._ticker_lock:
            if self.ticker is None:
                self.ticker = Ticker(self.driver, self.settings.rollout_tick)
                self.ticker.start()

    def start_listener(self) -> None:
        """Relay NOTIFY from other processes (PostgreSQL only); started on first need."""
        if self.listener is not None or self.engine.dialect.name != "postgresql":
            return
        with self._ticker_lock:  # two first polls at once: one listener, one connection
            if self.listener is None:
                self.listener = PostgresListener(self.engine, self.notifier)
                self.listener.start()

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker.join(timeout=5)
        if self.listener is not None:
            self.listener.stop()
            self.listener.join(timeout=5)
        self.engine.dispose()


def state() -> AppState:
    return cast(AppState, current_app.extensions["nso_repo"])


def db_session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = state().sessions()
    return cast(Session, g.db_session)


def close_db_session(_exc: object = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def principal() -> Principal:
    return cast(Principal, g.principal)


def may(permission: str) -> bool:
    """Whether the authenticated caller's role holds ``permission`` (what a view shows)."""
    return principal().role in roles_for(permission)


def require(permission: str) -> Callable[[F], F]:
    """Authenticate the bearer token and check its role may `permission`."""
    allowed = roles_for(permission)

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = db_session()
            who = authenticate(session, request.headers.get("Authorization"))
            # Who changes what in this request: read by the audit of job and step states,
            # and by the request log (a refused caller included).
            session.info["actor"] = g.actor = who.actor
            if who.role not in allowed:
                raise Forbidden(
                    f"role {who.role!r} may not {permission.replace(':', ' ')}; "
                    f"it needs one of: {', '.join(sorted(allowed))}",
                    required_roles=sorted(allowed),
                )
            g.principal = who
            return view(*args, **kwargs)

        # The authorization matrix test reads this to compare its table with the code.
        wrapper.required_permission = permission  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def optional_principal() -> Optional[Principal]:
    """The caller, when the request carries a token that authenticates; else None (for
    endpoints that answer anyone but tell more to some roles)."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    try:
        return authenticate(db_session(), header)
    except Unauthenticated:
        return None


def note_failed_authentication(error: AppError) -> None:
    """Count a refused credential in the audit log: one row per source address and minute
    (repo_server/auth/audit_events.py). Behind a reverse proxy the address is the proxy's."""
    # The request is over: give its connection back first, so a flood of bad tokens needs
    # one connection per thread, not two, and cannot drain the pool.
    close_db_session()
    record_failed_authentication(
        state().sessions,
        address=request.remote_addr or "unknown",
        reason=error.code,
        path=request.path,
    )
