"""Many light agent clients in one process: asyncio, one keep-alive connection each.

Each speaks the agent protocol (docs/agent-protocol.md) as `nso-agent` does: long-polls
`GET /api/v1/agent/next?wait=N`, and for a step it downloads the blobs the step names,
checks their sha256, hands the step to a handler (which works in a throwaway folder, not on
an NSO host), and reports the result. A thousand of them cost one thread and a thousand
sockets, so tests and bench/patch_latency.py can measure the server, not the clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

# A step handler: (agent, step, blobs by filename) -> the report's result.
Handler = Callable[["LightAgent", dict[str, Any], dict[str, bytes]], Awaitable[dict[str, Any]]]


class ProtocolError(Exception):
    """The server answered something the agent protocol does not allow."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class LightAgent:
    """One node's agent: its token and its keep-alive connection to the server."""

    base: str
    token: str
    name: str = ""
    # The loopback address it connects from: agents live on hosts of their own, and the
    # server limits the requests one address may have in the making at once.
    source: str = "127.0.0.1"
    reader: Optional[asyncio.StreamReader] = None
    writer: Optional[asyncio.StreamWriter] = None
    # Each step it ran: its name, and seconds from `since` to the step's arrival, to the
    # blobs downloaded, to the report's answer.
    done: list[tuple[str, float, float, float]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)  # long-poll answers by status
    inline: int = 0  # blobs the steps carried inside them, not downloaded

    async def request(self, method: str, path: str, body: Any = None) -> Answer:
        """One request on the agent's connection; reconnects once when the server closed
        it between requests (keep-alive timeout)."""
        for attempt in (1, 2):
            if self.writer is None:
                url = urlsplit(self.base)
                self.reader, self.writer = await asyncio.open_connection(
                    url.hostname, url.port or 80, limit=1 << 22, local_addr=(self.source, 0)
                )
            try:
                return await self._exchange(method, path, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, body: Any) -> Answer:
        assert self.reader is not None and self.writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(self.base).netloc}\r\n"
            + (f"Authorization: Bearer {self.token}\r\n" if self.token else "")
            + f"Content-Length: {len(payload)}\r\n"
            + ("Content-Type: application/json\r\n" if body is not None else "")
            + "\r\n"
        )
        self.writer.write(head.encode() + payload)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                data += await self.reader.readexactly(size + 2)
                del data[-2:]
            await self.reader.readuntil(b"\r\n")
            content = bytes(data)
        else:
            content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, headers, content)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def next_step(self, wait: int) -> Optional[dict[str, Any]]:
        answer = await self.request("GET", f"/api/v1/agent/next?wait={wait}")
        self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
        if answer.status == 204:
            return None
        if answer.status != 200:
            raise ProtocolError(f"{self.name}: /agent/next answered {answer.status}")
        step: dict[str, Any] = answer.json()["step"]
        return step

    async def fetch(self, artifact: dict[str, Any]) -> bytes:
        """A blob the step names, checked against its sha256: from the step itself when it
        carries it (``content_base64``), else downloaded."""
        if "content_base64" in artifact:
            self.inline += 1
            body = base64.b64decode(artifact["content_base64"], validate=True)
        else:
            answer = await self.request("GET", urlsplit(artifact["url"]).path)
            if answer.status != 200:
                raise ProtocolError(f"{self.name}: {artifact['url']} answered {answer.status}")
            body = answer.body
        if hashlib.sha256(body).hexdigest() != artifact["sha256"]:
            raise ProtocolError(f"{self.name}: {artifact['filename']} has another sha256")
        return body

    async def report(self, step: dict[str, Any], state: str, result: dict[str, Any]) -> Answer:
        body = {"report_id": uuid.uuid4().hex, "state": state, "result": result}
        answer = await self.request("POST", f"/api/v1/agent/steps/{step['id']}", body)
        if answer.status != 200:
            raise ProtocolError(
                f"{self.name}: the report of {step['name']} answered {answer.status}: "
                f"{answer.body[:300]!r}"
            )
        return answer


def artifacts_of(step: dict[str, Any]) -> list[dict[str, Any]]:
    """Every artifact reference in a step's params (dicts with url and sha256)."""
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "url" in value and "sha256" in value:
                found.append(value)
            else:
                for item in value.values():
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(step.get("params", {}))
    return found


async def serve_steps(
    agent: LightAgent,
    handler: Handler,
    stop: asyncio.Event,
    since: Callable[[], float],
    wait: int = 30,
) -> None:
    """Long-poll until `stop`; run each step: download its blobs, `handler`, report. Each
    report's answer is timed from `since()` (the trigger) into `agent.done`."""
    while not stop.is_set():
        try:
            step = await agent.next_step(wait)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.5)
            continue
        if step is None:
            continue
        arrived = time.monotonic() - since()
        blobs = {a["filename"]: await agent.fetch(a) for a in artifacts_of(step)}
        fetched = time.monotonic() - since()
        result = await handler(agent, step, blobs)
        await agent.report(step, "succeeded", result)
        agent.done.append((step["name"], arrived, fetched, time.monotonic() - since()))


@contextlib.asynccontextmanager
async def serving(agents: list[LightAgent], handler: Handler) -> AsyncIterator[list[float]]:
    """Every agent long-polls and runs its steps (`serve_steps`) inside the block, and stops
    at its end. Yields the trigger's time, ``[time.monotonic()]``, to set before the trigger."""
    stop, began = asyncio.Event(), [0.0]
    runners = [
        asyncio.ensure_future(serve_steps(agent, handler, stop, lambda: began[0]))
        for agent in agents
    ]
    try:
        yield began
    finally:
        stop.set()
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)


async def all_reported(agents: list[LightAgent], began: list[float], within: float) -> None:
    """Wait until every agent reported a step since ``began[0]``, at most ``within`` s."""
    while sum(len(agent.done) for agent in agents) < len(agents):
        if time.monotonic() - began[0] > within:
            raise ProtocolError(f"not every agent reported within {within:g} s")
        await asyncio.sleep(0.1)


async def beat_all(agents: list[LightAgent], inventory: dict[str, Any]) -> None:
    """Each agent sends its heartbeat with ``inventory``."""
    for agent in agents:
        beat = await agent.request("POST", "/api/v1/agent/heartbeat", {"inventory": inventory})
        if beat.status != 200:
            raise ProtocolError(f"heartbeat of {agent.name} answered {beat.status}")


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (0 < fraction <= 1) of `values`."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


async def enroll_many(
    base: str, admin_token: str, names: list[str], at_once: int = 50
) -> list[LightAgent]:
    """Register each node (an admin's POST /api/v1/nodes), enroll its agent with the
    one-time token, `at_once` nodes at a time: the agents, each with its own token."""
    gate = asyncio.Semaphore(at_once)

    async def one(name: str) -> LightAgent:
        async with gate:
            admin = LightAgent(base, admin_token, name)
            made = await admin.request("POST", "/api/v1/nodes", {"name": name})
            await admin.close()
            if made.status != 201:
                raise ProtocolError(f"adding node {name} answered {made.status}: {made.body!r}")
            newcomer = LightAgent(base, "", name)
            enrolled = await newcomer.request(
                "POST",
                "/api/v1/agent/enroll",
                {"enrollment_token": made.json()["enrollment_token"]},
            )
            await newcomer.close()
            if enrolled.status != 201:
                raise ProtocolError(f"enrolling {name} answered {enrolled.status}")
            return LightAgent(base, enrolled.json()["token"], name)

    agents = list(await asyncio.gather(*(one(name) for name in names)))
    for i, agent in enumerate(agents):
        agent.source = source_address(i)
    return agents


def source_address(index: int) -> str:
    """A loopback address of its own for agent `index` (127.0.2.1, 127.0.2.2, ...)."""
    return f"127.0.{2 + index // 250}.{1 + index % 250}"
