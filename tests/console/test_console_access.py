"""Who may open which console page, over real HTTP: every /ui route x every role that can
log in x anonymous, against one table of decisions that is also checked against the
permission each view declares. Then the login itself: the cookie, refused tokens, revoked
tokens, CSRF, redirects and headers."""

from __future__ import annotations

import re
from typing import Any, Optional

import pytest
import requests
from sqlalchemy import select

from repo_server.auth.models import AuditEvent
from repo_server.auth.roles import PERMISSIONS
from repo_server.upgrades.models import Job
from tests.console.helpers import Browser, alert, logged_in
from tests.upgrades.builders import enroll_node, healthy_inventory, publish_release

OPEN = "open"
LOGIN_ROLES = ("admin", "uploader", "operator", "viewer")

DECISIONS: dict[tuple[str, str], str] = {
    ("GET", "/ui/"): "console",
    ("GET", "/ui/login"): OPEN,
    ("POST", "/ui/login"): OPEN,
    ("POST", "/ui/logout"): "console",
    ("GET", "/ui/static/<path:filename>"): OPEN,
    ("GET", "/ui/fleet"): "node:read",
    ("GET", "/ui/nodes/<string:name>"): "node:read",
    ("GET", "/ui/nodes/<string:name>/plan"): "job:read",
    ("POST", "/ui/nodes/<string:name>/upgrade"): "job:manage",
    ("GET", "/ui/groups/<string:name>"): "node:read",
    ("GET", "/ui/groups/<string:name>/plan"): "job:read",
    ("POST", "/ui/groups/<string:name>/upgrade"): "job:manage",
    ("GET", "/ui/jobs"): "job:read",
    ("GET", "/ui/jobs/<int:job_id>"): "job:read",
    ("GET", "/ui/jobs/<int:job_id>/live"): "job:read",
    ("POST", "/ui/jobs/<int:job_id>/cancel"): "job:manage",
    ("GET", "/ui/rollouts"): "job:read",
    ("GET", "/ui/rollouts/<int:rollout_id>"): "job:read",
    ("GET", "/ui/rollouts/<int:rollout_id>/live"): "job:read",
    ("POST", "/ui/rollouts/<int:rollout_id>/<string:action>"): "job:manage",
    ("GET", "/ui/catalog"): "artifact:read",
    ("POST", "/ui/catalog/upload"): "artifact:upload",
    ("GET", "/ui/matrix"): "node:read",
    ("GET", "/ui/audit"): "audit:read",
}
PATH_VALUES = {
    "name": "no-such-node",
    "job_id": "987654",
    "rollout_id": "987654",
    "action": "pause",
    "filename": "console.css",
}


def _console_routes(app: Any) -> list[tuple[str, str, Any]]:
    served = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/ui"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            served.append((method, rule.rule, view))
    return served


def _url(rule: str) -> str:
    path = rule
    for part in rule.split("<")[1:]:
        spec = part.split(">", 1)[0]
        path = path.replace(f"<{spec}>", PATH_VALUES[spec.rpartition(":")[2]], 1)
    return path


def test_every_console_route_has_a_decision_and_it_matches_the_code(app) -> None:
    served = _console_routes(app)
    undecided = sorted(f"{m} {r}" for m, r, _ in served if (m, r) not in DECISIONS)
    assert not undecided, f"console routes without a decision in DECISIONS: {undecided}"
    stale = sorted(set(DECISIONS) - {(m, r) for m, r, _ in served})
    assert not stale, f"DECISIONS names routes the console no longer serves: {stale}"
    for method, rule, view in served:
        declared = getattr(view, "required_permission", OPEN)
        assert declared == DECISIONS[(method, rule)], f"{method} {rule} requires {declared!r}"
        assert declared == OPEN or declared in PERMISSIONS


def _outcome(answer: requests.Response) -> str:
    logged_out = "nso_repo_console=;" in answer.headers.get("Set-Cookie", "")
    if answer.status_code == 303 and "/ui/login" in answer.headers.get("Location", ""):
        return "allowed" if logged_out else "login"
    return "403" if answer.status_code == 403 else "allowed"


def _expected(decision: str, role: Optional[str]) -> str:
    if decision == OPEN:
        return "allowed"
    if role is None:
        return "login"
    return "allowed" if role in PERMISSIONS[decision] else "403"


def test_console_authorization_matrix_over_http(app, live) -> None:
    browsers: dict[Optional[str], Browser] = {None: Browser(live.url)}
    for role in LOGIN_ROLES:
        browsers[role] = logged_in(live.url, live.tokens[role])
    wrong = []
    # Log-out last: it ends the session the other requests use.
    routes = sorted(_console_routes(app), key=lambda r: r[1] == "/ui/logout")
    for method, rule, _ in routes:
        decision = DECISIONS[(method, rule)]
        for role, browser in browsers.items():
            if method == "GET":
                answer = browser.get(_url(rule), allow_redirects=False)
            else:
                answer = browser.post(_url(rule))
            got, expected = _outcome(answer), _expected(decision, role)
            if got != expected and not (rule == "/ui/login" and method == "POST"):
                wrong.append(
                    f"{method} {rule} as {role or 'anonymous'}: expected {expected}, "
                    f"got {answer.status_code} {alert(answer.text)[:120]}"
                )
    assert not wrong, "\n".join(wrong)


def test_the_login_cookie_holds_a_session_not_the_token(live, app_state) -> None:
    browser = Browser(live.url)
    answer = browser.login(live.tokens["operator"])
    assert answer.status_code == 303
    cookie = answer.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/ui/"):
        assert flag in cookie, cookie
    assert live.tokens["operator"] not in cookie
    secret = browser.http.cookies.get("nso_repo_console", path="/ui/")
    assert secret and secret != live.tokens["operator"]
    # The server keeps only a digest: the cookie's value appears in no row.
    with app_state.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT secret_hash FROM console_sessions").all()
    assert rows and all(secret not in row[0] for row in rows)
    with app_state.sessions() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "console.login" in actions


def test_a_login_form_from_another_origin_opens_nothing(live) -> None:
    """Login CSRF: a page on another port of the same host (a Grafana beside the server)
    may not log the operator's browser into a session of its own token."""
    for origin in ("http://127.0.0.1:3000", "null", "https://evil.example"):
        answer = requests.post(
            f"{live.url}/ui/login",
            data={"token": live.tokens["viewer"]},
            headers={"Origin": origin},
            allow_redirects=False,
            timeout=30,
        )
        assert answer.status_code == 403, origin
        assert "Set-Cookie" not in answer.headers


def test_a_role_is_refused_before_its_upload_is_read(live) -> None:
    """A viewer's multipart upload is refused for its role, not read to find a CSRF field."""
    viewer = logged_in(live.url, live.tokens["viewer"])
    answer = viewer.http.post(
        f"{live.url}/ui/catalog/upload",
        files={"file": ("nso-6.9.linux.x86_64.installer.bin", b"x" * (1 << 20))},
        timeout=60,
    )
    assert answer.status_code == 403
    assert "may not artifact upload" in alert(answer.text)


def test_refused_logins_say_why_and_open_nothing(live, app_state) -> None:
    browser = Browser(live.url)
    bad = browser.login("nsr_not-a-token")
    assert bad.status_code == 401
    assert "unknown or revoked" in alert(bad.text)
    assert "Set-Cookie" not in bad.headers
    agent = enroll_node(live, "console-agent")
    refused = browser.login(agent.token)
    assert refused.status_code == 403
    assert "agent token" in alert(refused.text)
    assert browser.get("/ui/fleet", allow_redirects=False).status_code == 303
    with app_state.sessions() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.failed")).all()
    assert failed, "a wrong token typed into the console is counted like a wrong API token"


def test_a_revoked_token_ends_its_console_session(live) -> None:
    admin = live.session("admin")
    made = admin.post(f"{live.url}/api/v1/tokens", json={"name": "night", "role": "operator"})
    browser = logged_in(live.url, made.json()["token"])
    assert browser.get("/ui/fleet").status_code == 200
    admin.delete(f"{live.url}/api/v1/tokens/{made.json()['id']}")
    answer = browser.get("/ui/fleet", allow_redirects=False)
    assert answer.status_code == 303 and "/ui/login" in answer.headers["Location"]


def test_log_out_ends_the_session_for_a_copied_cookie_too(live) -> None:
    browser = logged_in(live.url, live.tokens["viewer"])
    copied = browser.http.cookies.get("nso_repo_console", path="/ui/")
    assert browser.post("/ui/logout").status_code == 303
    thief = requests.Session()
    thief.cookies.set("nso_repo_console", copied, path="/ui/")
    answer = thief.get(f"{live.url}/ui/fleet", allow_redirects=False)
    assert answer.status_code == 303 and "/ui/login" in answer.headers["Location"]


def _node_ready_to_upgrade(live: Any, tmp_path: Any) -> None:
    publish_release(live, tmp_path, "6.1", {"router-nc": "1.0.2", "l3vpn": "2.1"})
    publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2", "l3vpn": "2.1"})
    agent = enroll_node(live, "edge-1")
    assert agent.heartbeat(healthy_inventory("6.1")).status_code == 200


def test_a_change_without_the_csrf_token_or_from_elsewhere_changes_nothing(
    live, app_state, tmp_path
) -> None:
    _node_ready_to_upgrade(live, tmp_path)
    browser = logged_in(live.url, live.tokens["operator"])
    attempts = {
        "no token": browser.post("/ui/nodes/edge-1/upgrade", {"to": "6.2"}, csrf=False),
        "wrong token": browser.post(
            "/ui/nodes/edge-1/upgrade", {"to": "6.2", "csrf_token": "x" * 43}, csrf=False
        ),
        "other origin": browser.post(
            "/ui/nodes/edge-1/upgrade", {"to": "6.2"}, headers={"Origin": "https://evil.example"}
        ),
        "sandboxed origin": browser.post(
            "/ui/nodes/edge-1/upgrade", {"to": "6.2"}, headers={"Origin": "null"}
        ),
        "same host and port, another scheme": browser.post(
            "/ui/nodes/edge-1/upgrade",
            {"to": "6.2"},
            headers={"Origin": live.url.replace("http://", "https://")},
        ),
        "same host, another port": browser.post(
            "/ui/nodes/edge-1/upgrade", {"to": "6.2"}, headers={"Origin": "http://127.0.0.1:3000"}
        ),
    }
    for what, answer in attempts.items():
        assert answer.status_code == 403, what
        assert "csrf" in answer.text.lower() or "may not change" in alert(answer.text), what
    with app_state.sessions() as session:
        assert session.scalars(select(Job)).all() == []
    # The same form with the session's token, from the console's own origin, starts the job.
    started = browser.post(
        "/ui/nodes/edge-1/upgrade", {"to": "6.2"}, headers={"Origin": live.url.upper()}
    )
    assert started.status_code == 303 and "/ui/jobs/" in started.headers["Location"]


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/ui/",
        "https://evil.example/ui/fleet",
        "/ui/\\\\evil.example",
        "/api/v1/tokens",
    ],
)
def test_the_page_after_login_is_never_elsewhere(live, target: str) -> None:
    answer = requests.post(
        f"{live.url}/ui/login",
        data={"token": live.tokens["viewer"], "next": target},
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/ui/"


def test_htmx_is_sent_to_the_login_page_whole_and_pages_carry_strict_headers(live) -> None:
    answer = requests.get(
        f"{live.url}/ui/jobs/1/live",
        headers={"HX-Request": "true", "HX-Current-URL": f"{live.url}/ui/jobs/1"},
        allow_redirects=False,
    )
    assert answer.status_code == 401
    # Back to the page that polled, not to the fragment it polled.
    assert answer.headers["HX-Redirect"] == "/ui/login?next=/ui/jobs/1"
    crafted = requests.get(
        f"{live.url}/ui/jobs/1/live",
        headers={"HX-Request": "true", "HX-Current-URL": "http://[x"},
        allow_redirects=False,
    )
    assert crafted.status_code == 401 and crafted.headers["HX-Redirect"] == "/ui/login?next=/ui/"
    page = logged_in(live.url, live.tokens["viewer"]).get("/ui/fleet")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    # No CDN: every script and style sheet the page loads is this server's own.
    loaded = re.findall(r'<script src="([^"]+)"', page.text) + re.findall(
        r'<link rel="stylesheet" href="([^"]+)"', page.text
    )
    assert len(loaded) == 4 and all(u.startswith("/ui/static/") for u in loaded), loaded
    for url in loaded:
        asset = requests.get(f"{live.url}{url}", timeout=30)
        assert asset.status_code == 200 and len(asset.content) > 500, url
