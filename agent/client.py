"""The agent protocol over HTTP (docs/agent-protocol.md), with the standard library only.

``urllib.request`` rather than ``requests``: the agent installs on NSO hosts with the
project's base dependencies (click, packaging, paramiko) and nothing else. Connection errors
and 5xx answers are retried with exponential backoff; 4xx answers are the server telling the
agent something and are raised at once with the server's message verbatim. Which URLs, TLS
and redirects: agent/transport.py. API calls carry the node token and follow no redirect.
"""

from __future__ import annotations

import http
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Optional

from agent import __version__
from agent.errors import ServerError, StepFinished
from agent.transport import CaFile, check_server_url, opener, redact, tls_failure

USER_AGENT = f"nso-agent/{__version__}"
# The largest answer of the server the agent reads: a step with its signed manifest (at most
# 1 MiB) fits many times over. Anything longer is not the server's answer and is not read
# into the memory of a process that runs as root (a proxy, or a server that is not ours).
MAX_ANSWER_BYTES = 16 << 20
MAX_ERROR_BYTES = 64 << 10
MAX_ID = 2**63 - 1
NOT_THE_SERVER = (
    "check that [server] url is the repository server and that no proxy in between rewrites "
    "its answers"
)
# Errors worth another try: the server restarting, a load balancer hiccup, a dropped link.
TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout)


def retry_seconds(header: Optional[str]) -> int:
    """A Retry-After of whole seconds, bounded to 1..60; 0 for none or anything else (an
    HTTP date, a negative or huge number: the agent trusts no figure it did not bound)."""
    text = (header or "").strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        return 0
    return max(1, min(60, int(text)))


@dataclass
class Backoff:
    """Exponential backoff: 1, 2, 4... seconds up to ``cap``, for ``tries`` attempts."""

    tries: int = 6
    base: float = 1.0
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delays(self) -> list[float]:
        return [min(self.cap, self.base * 2**i) for i in range(self.tries - 1)]


def status_text(status: int) -> str:
    """``HTTP 502 Bad Gateway``: our own words for a status, never a remote body or reason."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def decode_answer(raw: bytes, what: str) -> Any:
    """The JSON of a server's answer (strict: no NaN, no Infinity, bounded nesting), or a
    ServerError that says it is not an answer of the repository server."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise ServerError(
            f"{what}: the answer is longer than {MAX_ANSWER_BYTES} bytes, which no answer of "
            f"the repository server is; it was not read. {NOT_THE_SERVER}"
        )
    try:
        return json.loads(raw, parse_constant=_no_constant) if raw else None
    except (ValueError, RecursionError):
        raise ServerError(
            f"{what}: the answer is not JSON, so not an answer of the repository server; "
            + NOT_THE_SERVER
        ) from None


def answer_object(answer: Any, what: str) -> dict[str, Any]:
    """A JSON object answer (None: empty), else a ServerError naming what came instead."""
    if answer is None:
        return {}
    if not isinstance(answer, dict):
        raise ServerError(
            f"{what}: the answer is a JSON {type(answer).__name__}, not the object the "
            f"protocol says; {NOT_THE_SERVER}"
        )
    return answer


def _is_id(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_ID


def checked_step(step: Any) -> dict[str, Any]:
    """A handed-out step of the shape docs/agent-protocol.md gives, before anything of it is
    used: ids are integers, the name is text, params, context and job are objects. What
    fails is a ServerError naming each field, and nothing of the step is run."""
    if not isinstance(step, dict):
        problems = [f"the step is a JSON {type(step).__name__}, not an object"]
    else:
        problems = []
        if not _is_id(step.get("id")):
            problems.append(f"id {step.get('id')!r} is not a positive integer")
        name = step.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.isprintable():
            problems.append(f"name {name!r} is not a step name")
        for key in ("job_id", "attempt", "seq"):
            if step.get(key) is not None and not _is_id(step[key], 0):
                problems.append(f"{key} {step[key]!r} is not an integer from 0 to 2^63-1")
        for key in ("params", "context", "job"):
            if step.get(key) is not None and not isinstance(step[key], dict):
                problems.append(f"{key} is a JSON {type(step[key]).__name__}, not an object")
        job = step.get("job")
        if isinstance(job, dict) and job.get("id") is not None and not _is_id(job["id"], 0):
            problems.append(f"job.id {job['id']!r} is not an integer from 0 to 2^63-1")
    if problems:
        raise ServerError(
            f"the server handed out a step this agent cannot read ({'; '.join(problems)}): "
            f"nothing of it was run. {NOT_THE_SERVER[0].upper()}{NOT_THE_SERVER[1:]}, and that "
            f"the server's version speaks this agent's protocol (nso-agent {__version__})"
        )
    return dict(step)


def error_message(status: int, body: bytes) -> tuple[str, str]:
    """(code, message) from the server's one error shape. Anything else (a proxy's page) is
    not repeated: the status, and where to look."""
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err.get("code", ""))[:64], str(err["message"])[:2000]
    except (ValueError, RecursionError):
        pass
    return "", (
        f"{status_text(status)}, not an answer of the repository server: check [server] url "
        "and any proxy in between"
    )


class ServerClient:
    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        ca_file: CaFile = None,
        backoff: Optional[Backoff] = None,
        timeout: float = 30.0,
        allow_insecure_http: bool = False,
    ) -> None:
        if not base_url:
            raise ServerError("no server URL: set [server] url in the agent's configuration")
        check_server_url(base_url, allow_insecure_http)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.ca_file = ca_file
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self._opener = opener(ca_file)
        # Seconds the server asked for before the next poll (a 204 with Retry-After: every
        # place to wait was taken); 0 when it asked for none.
        self.retry_after = 0
        self._last_retry_after: Optional[str] = None

    def url(self, path: str) -> str:
        """A path the server gave (``/api/v1/blobs/...``) or an absolute URL."""
        return urllib.parse.urljoin(self.base_url + "/", path)

    def request(
        self,
        method: str,
        path: str,
        body: Optional[dict[str, Any]] = None,
        timeout: Optional[float] = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        """(status, decoded JSON or None). Retries transient failures; raises ServerError."""
        data = json.dumps(body).encode() if body is not None else None
        delays = self.backoff.delays()
        attempt = 0
        while True:
            req = urllib.request.Request(self.url(path), data=data, method=method)
            req.add_header("User-Agent", USER_AGENT)
            req.add_header("Accept", "application/json")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if auth and self.token:
                req.add_unredirected_header("Authorization", f"Bearer {self.token}")
            try:
                with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                    self._last_retry_after = resp.headers.get("Retry-After")
                    raw = resp.read(MAX_ANSWER_BYTES + 1)
                    return resp.status, decode_answer(raw, f"{method} {path}")
            except urllib.error.HTTPError as exc:
                raw = exc.read(MAX_ERROR_BYTES)
                if 300 <= exc.code < 400:
                    raise ServerError(
                        self._redirected(method, path, exc), status=exc.code
                    ) from None
                if exc.code < 500 or attempt >= len(delays):
                    code, message = error_message(exc.code, raw)
                    # The server finished the step otherwise, or it is not this node's step
                    # now: either way the report has nothing more to do.
                    finished = code in ("step_finished", "step_not_handed_out")
                    cls = StepFinished if finished else ServerError
                    raise cls(
                        f"{method} {path}: {exc.code} {message}", status=exc.code, code=code
                    ) from None
            except TRANSIENT as exc:
                untrusted = tls_failure(exc, self.url(path), self.ca_file)
                if untrusted:
                    raise ServerError(f"{method} {path}: {untrusted}") from None
                if attempt >= len(delays):
                    raise ServerError(
                        f"{method} {self.url(path)} failed after {attempt + 1} tries: {exc}; "
                        "check [server] url and that the server is reachable from this host"
                    ) from None
            self.backoff.sleep(delays[attempt])
            attempt += 1

    def _redirected(self, method: str, path: str, exc: urllib.error.HTTPError) -> str:
        location = exc.headers.get("Location")
        to = f" to {redact(self.url(location))}" if location else ""
        return (
            f"{method} {path}: the server answered {status_text(exc.code)}{to}; the agent "
            "follows no redirect of an API call (it carries the node token): set [server] url "
            "to the address the server answers on itself (https://...)"
        )

    # -- the protocol ---------------------------------------------------------------

    def enroll(self, enrollment_token: str, hostname: str) -> dict[str, Any]:
        _, answer = self.request(
            "POST",
            "/api/v1/agent/enroll",
            {
                "enrollment_token": enrollment_token,
                "hostname": hostname,
                "agent_version": __version__,
            },
            auth=False,
        )
        return answer_object(answer, "POST /api/v1/agent/enroll")

    def heartbeat(self, inventory: dict[str, Any]) -> dict[str, Any]:
        _, answer = self.request(
            "POST",
            "/api/v1/agent/heartbeat",
            {"agent_version": __version__, "inventory": inventory},
        )
        return answer_object(answer, "POST /api/v1/agent/heartbeat")

    def next_step(self, wait: int) -> Optional[dict[str, Any]]:
        """The next step for this node, or None after ``wait`` seconds without work."""
        # The socket must outlast the server's own wait, or every idle poll would time out.
        status, answer = self.request(
            "GET", f"/api/v1/agent/next?wait={int(wait)}", timeout=wait + self.timeout
        )
        self.retry_after = 0
        if status == 204 or not answer:
            self.retry_after = retry_seconds(self._last_retry_after) if status == 204 else 0
            return None
        step = answer_object(answer, "GET /api/v1/agent/next").get("step")
        return checked_step(step) if step is not None else None

    def report(self, step_id: int, body: dict[str, Any]) -> dict[str, Any]:
        _, answer = self.request("POST", f"/api/v1/agent/steps/{int(step_id)}", body)
        return answer_object(answer, f"POST /api/v1/agent/steps/{int(step_id)}")
