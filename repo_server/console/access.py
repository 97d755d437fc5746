"""Who may see a console page: the login cookie, the same roles as the API, and a CSRF
token on every request that changes something."""

from __future__ import annotations

import hmac
from functools import wraps
from typing import Any, Callable, Optional, TypeVar, cast
from urllib.parse import urlsplit

from flask import Response, g, redirect, request, url_for
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from repo_server.auth.roles import roles_for
from repo_server.auth.service import Principal
from repo_server.console import logins
from repo_server.context import db_session, state
from repo_server.errors import Forbidden, PayloadTooLarge, TruncatedBody

F = TypeVar("F", bound=Callable[..., Any])
COOKIE = "nso_repo_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfRefused(Forbidden):
    code = "csrf_failed"


def current() -> logins.Login:
    return cast(logins.Login, g.console_login)


def who() -> Principal:
    return current().principal


def can(permission: str) -> bool:
    """Whether the logged-in role holds ``permission`` (templates hide what it cannot do)."""
    login: Optional[logins.Login] = g.get("console_login")
    return login is not None and login.principal.role in roles_for(permission)


def page(permission: str) -> Callable[[F], F]:
    """Log-in, role and (for a change) CSRF checks of a console view."""
    allowed = roles_for(permission)

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = db_session()
            login = logins.resume(session, request.cookies.get(COOKIE))
            if login is None:
                return to_login()
            g.console_login = login
            session.info["actor"] = g.actor = login.principal.actor
            g.principal = login.principal
            # The role first: a role that may not upload is refused before its body is read.
            if login.principal.role not in allowed:
                raise Forbidden(
                    f"role {login.principal.role!r} may not {permission.replace(':', ' ')}; "
                    f"it needs one of: {', '.join(sorted(allowed))}",
                    required_roles=sorted(allowed),
                )
            if request.method not in SAFE_METHODS:
                check_csrf(login)
            return view(*args, **kwargs)

        wrapper.required_permission = permission  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def check_csrf(login: logins.Login) -> None:
    """The session's CSRF token, from the X-CSRF-Token header (htmx, the upload script) or
    the form's hidden field, and a same-origin Origin when the browser sends one."""
    check_origin()
    sent = request.headers.get(CSRF_HEADER) or _form_token()
    if not hmac.compare_digest(sent.encode(), login.csrf_token.encode()):
        raise CsrfRefused(
            "this form's CSRF token is missing or stale (an old tab, or a form from "
            "elsewhere): reload the page and send it again"
        )


def scheme() -> str:
    """How the browser reached the console: https directly, or through a TLS proxy that
    says so (a client's own X-Forwarded-Proto is replaced by the proxy's)."""
    proxied = request.headers.get("X-Forwarded-Proto") == "https"
    return "https" if request.is_secure or proxied else "http"


def check_origin() -> None:
    """A browser's Origin, when it sends one, is this server's own scheme, host and port ("null",
    from a sandboxed frame or a file, never is): another port of the same host is another
    origin, such as a Grafana beside it. A proxy must forward the Host header with its port
    (`proxy_set_header Host $http_host`, deploy/nginx.conf)."""
    origin = request.headers.get("Origin")
    if not origin:
        return
    try:
        parts = urlsplit(origin)
        theirs = (parts.scheme.lower(), parts.netloc.lower())
    except ValueError:
        theirs = ("", "")
    if not theirs[1] or theirs != (scheme(), request.host.lower()):
        raise CsrfRefused(
            f"a form from {origin[:100]} may not change this server ({request.host[:100]}); "
            "behind a proxy, forward the Host header with its port"
        )


def _form_token() -> str:
    """The form's CSRF field; an upload form's body is read within the upload limit."""
    if request.max_content_length is None:  # an upload route (request_guards.py)
        request.max_content_length = state().settings.max_upload_bytes + (1 << 20)
    try:
        return request.form.get(CSRF_FIELD) or ""
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the upload passed the limit of {state().settings.max_upload_bytes} bytes "
            "(NSO_REPO_MAX_UPLOAD_SIZE)"
        ) from None
    except (ClientDisconnected, ValueError):
        raise TruncatedBody("the form's body ended early: send it again") from None


def safe_next(target: Optional[str]) -> str:
    """Where to go after the login: a console path of this server, nothing else."""
    if target and target.startswith("/ui/") and target.isprintable():
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and "\\" not in target:
            return target
    return url_for("console.home")


def to_login() -> Response:
    """To the login page, back here afterwards; htmx is told to load the page whole."""
    here = request.full_path.rstrip("?") if request.method == "GET" else None
    if request.headers.get("HX-Request"):
        # A fragment's own URL is no page to come back to: the page that polled it is.
        try:
            current = urlsplit(request.headers.get("HX-Current-URL", ""))
            page_path = current.path + (f"?{current.query}" if current.query else "")
        except ValueError:
            page_path = ""
        answer = Response("log in again", status=401)
        answer.headers["HX-Redirect"] = url_for("console.login", next=safe_next(page_path))
        return answer
    return cast(Response, redirect(url_for("console.login", next=here), code=303))
