"""Every endpoint x every role x anonymous, over real HTTP, against one table of decisions.

DECISIONS names, for every (method, route) the app serves, either the permission its view
requires (``repo_server/auth/roles.py`` PERMISSIONS says which roles hold it) or OPEN (no
token needed). A route the table does not name fails the test: a new endpoint must come
with a decision. The table is also checked against the ``require(...)`` each view declares,
so the table and the code cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import requests

from repo_server.auth.models import ROLES
from repo_server.auth.roles import PERMISSIONS
from tests.upgrades.builders import enroll_node

OPEN = "open: no token needed"

DECISIONS: dict[tuple[str, str], str] = {
    ("GET", "/api/openapi.json"): OPEN,
    ("GET", "/api/v1/health"): OPEN,
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): "metrics:read",
    ("POST", "/api/v1/agent/enroll"): OPEN,  # the one-time enrollment token is the credential
    ("GET", "/api/v1/artifacts"): "artifact:read",
    ("POST", "/api/v1/artifacts"): "artifact:upload",
    ("GET", "/api/v1/artifacts/<string:filename>"): "artifact:read",
    ("PUT", "/api/v1/artifacts/<string:filename>"): "artifact:upload",
    ("DELETE", "/api/v1/artifacts/<string:filename>"): "artifact:delete",
    ("POST", "/api/v1/artifacts/<string:filename>/release-name"): "artifact:delete",
    ("GET", "/api/v1/blobs/<string:sha256>"): "blob:read",
    ("GET", "/api/v1/releases"): "release:read",
    ("POST", "/api/v1/releases"): "release:manage",
    ("GET", "/api/v1/releases/<string:nso_version>"): "release:read",
    ("GET", "/api/v1/releases/<string:nso_version>/manifest"): "release:read",
    ("PUT", "/api/v1/releases/<string:nso_version>/signature"): "release:manage",
    ("GET", "/api/v1/nodes"): "node:read",
    ("POST", "/api/v1/nodes"): "node:manage",
    ("GET", "/api/v1/nodes/<string:name>"): "node:read",
    ("POST", "/api/v1/nodes/<string:name>/enrollment-token"): "node:manage",
    ("GET", "/api/v1/nodes/<string:name>/plan"): "job:read",
    ("POST", "/api/v1/nodes/<string:name>/upgrade"): "job:manage",
    ("GET", "/api/v1/nodes/<string:name>/package-plan"): "job:read",
    ("POST", "/api/v1/nodes/<string:name>/package-upgrade"): "job:manage",
    ("POST", "/api/v1/nodes/<string:name>/ned-migrations"): "job:manage",
    ("GET", "/api/v1/jobs"): "job:read",
    ("GET", "/api/v1/jobs/<int:job_id>"): "job:read",
    ("POST", "/api/v1/jobs/<int:job_id>/rollback"): "job:manage",
    ("POST", "/api/v1/jobs/<int:job_id>/cancel"): "job:manage",
    ("POST", "/api/v1/agent/heartbeat"): "agent",
    ("GET", "/api/v1/agent/next"): "agent",
    ("POST", "/api/v1/agent/steps/<int:step_id>"): "agent",
    ("GET", "/api/v1/tokens"): "token:manage",
    ("POST", "/api/v1/tokens"): "token:manage",
    ("DELETE", "/api/v1/tokens/<int:token_id>"): "token:manage",
    ("GET", "/api/v1/audit"): "audit:read",
    ("GET", "/api/v1/groups"): "node:read",
    ("POST", "/api/v1/groups"): "node:manage",
    ("GET", "/api/v1/groups/<string:name>"): "node:read",
    ("DELETE", "/api/v1/groups/<string:name>"): "node:manage",
    ("GET", "/api/v1/groups/<string:name>/plan"): "job:read",
    ("POST", "/api/v1/groups/<string:name>/upgrade"): "job:manage",
    ("GET", "/api/v1/groups/<string:name>/package-plan"): "job:read",
    ("POST", "/api/v1/groups/<string:name>/package-upgrade"): "job:manage",
    ("GET", "/api/v1/patch-rollouts"): "job:read",
    ("POST", "/api/v1/patch-rollouts"): "job:manage",
    ("GET", "/api/v1/patch-rollouts/<int:rollout_id>"): "job:read",
    ("GET", "/api/v1/patches/<string:filename>/manifest"): "release:read",
    ("PUT", "/api/v1/patches/<string:filename>/signature"): "release:manage",
    ("PUT", "/api/v1/nodes/<string:name>/labels"): "node:manage",
    ("PATCH", "/api/v1/nodes/<string:name>/labels"): "node:manage",
    ("GET", "/api/v1/rollouts"): "job:read",
    ("POST", "/api/v1/rollouts"): "job:manage",
    ("POST", "/api/v1/rollouts/plan"): "job:read",
    ("GET", "/api/v1/rollouts/<int:rollout_id>"): "job:read",
    ("POST", "/api/v1/rollouts/<int:rollout_id>/pause"): "job:manage",
    ("POST", "/api/v1/rollouts/<int:rollout_id>/resume"): "job:manage",
    ("POST", "/api/v1/rollouts/<int:rollout_id>/cancel"): "job:manage",
    ("POST", "/api/v1/rollouts/<int:rollout_id>/retry"): "job:manage",
    ("GET", "/api/v1/windows"): "node:read",
    ("POST", "/api/v1/windows"): "node:manage",
    ("DELETE", "/api/v1/windows/<int:window_id>"): "node:manage",
}

# Values for path parameters that name nothing: an allowed role gets a 404 or a 422, never a
# change (an id that exists could revoke the admin's own token in the middle of the test).
PATH_VALUES = {
    "int": "987654",
    "sha256": "0" * 64,
    "filename": "ncs-6.2-nothing-1.0.tar.gz",
    "nso_version": "9.9",
    "name": "no-such-node",
}
# Query strings that keep a request short: an agent's long-poll would otherwise wait 30 s.
QUERIES = {"/api/v1/agent/next": {"wait": "0"}}


def _routes(app: Any) -> list[tuple[str, str, Any]]:
    """(method, rule, view method) for every route; HEAD follows GET and OPTIONS is Flask's
    automatic answer (the Allow header), which never reaches a view."""
    served = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/ui"):
            continue  # the console's pages: tests/console/test_console_access.py
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            view_class = getattr(view, "view_class", None)
            handler = getattr(view_class, method.lower()) if view_class else view
            served.append((method, rule.rule, handler))
    return served


def _url(base: str, rule: str) -> str:
    path = rule
    for part in rule.split("<")[1:]:
        spec = part.split(">", 1)[0]
        converter, _, name = spec.rpartition(":")
        path = path.replace(f"<{spec}>", PATH_VALUES.get(name) or PATH_VALUES[converter], 1)
    return base + path


def _expected(decision: str, role: Optional[str]) -> str:
    if decision == OPEN:
        return "allowed"
    if role is None:
        return "401"
    return "allowed" if role in PERMISSIONS[decision] else "403"


def _outcome(status: int) -> str:
    return str(status) if status in (401, 403) else "allowed"


def test_every_route_has_a_decision_and_it_matches_the_code(app) -> None:
    served = _routes(app)
    undecided = sorted(
        f"{method} {rule}" for method, rule, _ in served if (method, rule) not in DECISIONS
    )
    assert not undecided, (
        "routes without an authorization decision: add each to DECISIONS in "
        f"tests/api/test_authz_matrix.py: {undecided}"
    )
    stale = sorted(set(DECISIONS) - {(m, r) for m, r, _ in served})
    assert not stale, f"DECISIONS names routes the app no longer serves: {stale}"
    for method, rule, handler in served:
        declared = getattr(handler, "required_permission", OPEN)
        assert declared == DECISIONS[(method, rule)], f"{method} {rule} requires {declared!r}"
        assert declared == OPEN or declared in PERMISSIONS, f"{method} {rule}: {declared!r}"


@pytest.fixture
def callers(live) -> dict[Optional[str], dict[str, str]]:
    """Headers per caller: anonymous, and a token per role. The agent is a real enrolled
    node: agent endpoints answer 403 to an agent-role token that speaks for no node."""
    tokens = {**live.tokens, "agent": enroll_node(live, "matrix-node").token}
    made: dict[Optional[str], dict[str, str]] = {None: {}}
    for role in ROLES:
        made[role] = {"Authorization": f"Bearer {tokens[role]}"}
    return made


def test_authorization_matrix_over_http(app, live, callers) -> None:
    wrong = []
    checked = 0
    for method, rule, _ in _routes(app):
        decision = DECISIONS.get((method, rule))
        if decision is None:
            wrong.append(f"{method} {rule}: no decision in DECISIONS")
            continue
        url = _url(live.url, rule)
        methods = [method, "HEAD"] if method == "GET" else [method]
        for sent in methods:
            for role, headers in callers.items():
                body = {} if sent in ("POST", "PUT") else None
                answer = requests.request(
                    sent,
                    url,
                    headers=headers,
                    json=body,
                    params=QUERIES.get(rule),
                    timeout=30,
                    allow_redirects=False,
                )
                checked += 1
                got, expected = _outcome(answer.status_code), _expected(decision, role)
                if got != expected:
                    wrong.append(
                        f"{sent} {rule} as {role or 'anonymous'}: expected {expected}, "
                        f"got {answer.status_code} {answer.text[:160]}"
                    )
    assert not wrong, "\n".join(wrong)
    assert checked >= len(DECISIONS) * len(callers)
