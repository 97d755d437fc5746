"""No input gives a 5xx: schemathesis runs every operation of `/api/openapi.json` against a
real server on a real port (SQLite and PostgreSQL), with the token of every role that may
call it, on data that fits the schema and data that does not, and no answer may be a
server error.

Run time is bounded by MAX_EXAMPLES per operation, role and generation mode (about a minute
per database on one core). The figures (operations, requests, server errors) are printed;
`pytest -s` shows them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode

from repo_server.auth.roles import roles_for
from tests.upgrades.builders import enroll_node, healthy_inventory, publish_release

MAX_EXAMPLES = 15
ANONYMOUS = "anonymous"
# Path parameters that must not take these values: revoking the test's own tokens would
# turn every later request into a 401, which proves nothing.
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _roles(app: Any, method: str, path: str) -> list[str]:
    """The roles whose token may call this operation (its view's `require`), or anonymous."""
    concrete = path.replace("{", "").replace("}", "")  # any value matches a string part
    for part in ("job_id", "step_id", "token_id", "rollout_id", "window_id"):
        concrete = concrete.replace(part, "1")
    endpoint, _args = app.url_map.bind("localhost").match(concrete, method=method)
    view = app.view_functions[endpoint]
    view_class = getattr(view, "view_class", None)
    handler = getattr(view_class, method.lower()) if view_class else view
    permission: Optional[str] = getattr(handler, "required_permission", None)
    return sorted(roles_for(permission)) if permission else [ANONYMOUS]


def _seed(live: Any, tmp_path: Path) -> dict[str, str]:
    """Releases, a node with an inventory and a job: operations on ids that exist reach
    deeper code than 404s do. Returns each role's token."""
    publish_release(live, tmp_path, "6.1", {"router-nc": "1.0.2"})
    publish_release(live, tmp_path, "6.2", {"router-nc": "1.0.2"})
    agent = enroll_node(live, "edge-1")
    assert agent.heartbeat(healthy_inventory("6.1", {"router-nc": "1.0.2"})).status_code == 200
    started = live.session("operator").post(
        f"{live.url}/api/v1/nodes/edge-1/upgrade", json={"to": "6.2"}
    )
    assert started.status_code == 202, started.text
    return {**live.tokens, "agent": agent.token}


def test_no_input_gives_a_server_error(live, app, tmp_path: Path) -> None:
    tokens = _seed(live, tmp_path)
    spec = requests.get(f"{live.url}/api/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    own_tokens = {t["id"] for t in live.session("admin").get(f"{live.url}/api/v1/tokens").json()}
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    unsatisfiable: list[str] = []
    operations = 0
    http = requests.Session()

    def fuzz(operation: Any, mode: GenerationMode, role: str) -> None:
        headers = {} if role == ANONYMOUS else {"Authorization": f"Bearer {tokens[role]}"}
        strategy = operation.as_strategy(generation_mode=mode)
        if "{token_id}" in operation.path:
            strategy = strategy.filter(
                lambda case: case.path_parameters.get("token_id") not in own_tokens
            )

        @SETTINGS
        @given(case=strategy)
        def run(case: Any) -> None:
            if operation.path.endswith("/agent/next") or (case.query and "wait" in case.query):
                # A long-poll would wait 30 s for nothing (and without a step to hand out,
                # once an operation cancelled the seeded job, every call would).
                case.query = {**(case.query or {}), "wait": 0}
            response = case.call(base_url=live.url, session=http, headers=headers, timeout=60)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                errors.append(
                    f"{role}: {case.as_curl_command()} -> {response.status_code} "
                    f"{response.text[:300]}"
                )

        try:
            run()
        except hypothesis.errors.Unsatisfiable:  # e.g. no invalid value for a bare GET
            unsatisfiable.append(f"{operation.method.upper()} {operation.path} {mode}")

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        roles = _roles(app, operation.method.upper(), operation.path)
        # Data that fits the schema, with every role that may call the operation (what a
        # role may see differs); data that does not, with one of them (it is refused
        # before the role matters).
        for role in roles:
            fuzz(operation, GenerationMode.POSITIVE, role)
        fuzz(operation, GenerationMode.NEGATIVE, "admin" if "admin" in roles else roles[0])
    requests_sent = sum(statuses.values())
    print(
        f"\nschemathesis: {operations} operations, {requests_sent} requests, "
        f"{len(errors)} server errors; statuses {dict(sorted(statuses.items()))}; "
        f"nothing to generate for {unsatisfiable}"
    )
    assert operations >= 25
    assert not errors, "\n".join(errors)
