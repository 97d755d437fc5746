"""A waiting long-poll holds no thread, no database connection and no transaction: it is
parked in the worker's event loop (repo_server/parking.py), against a real gunicorn.

Before: every waiting agent held one of a worker's threads, so the embedded default (one
process, 32 threads) served about 30 agents before `/health` stopped answering; and on
PostgreSQL each waiting poll showed in pg_stat_activity."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from nso_sim import beam
from tests.support.abuse import children, health_seconds
from tests.support.light_agents import (
    LightAgent,
    all_reported,
    beat_all,
    enroll_many,
    serving,
    source_address,
)
from tests.support.nso_repo import RepoServer
from tests.support.postgres import connections
from tests.support.processes import REPO, clean_env
from tests.upgrades.builders import healthy_inventory

AGENTS = 300  # ten times the threads that used to cap the fleet
THREADS = "4"
BOUND = 5.0  # seconds /health may take while the agents wait (tests/api/test_starvation.py)


def _serve(
    folder: Path, workers: Optional[int] = 1, threads: str = THREADS, **env: str
) -> RepoServer:
    server = RepoServer(
        folder / "data",
        env=clean_env(PYTHONPATH=str(REPO), NSO_REPO_THREADS=threads, **env),
        workers=workers,
    )
    server.start()
    return server


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[RepoServer]:
    server = _serve(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for {pid}")


async def _waiting(agents: list[LightAgent], wait: int) -> list[asyncio.Task[Any]]:
    polls = [asyncio.ensure_future(agent.next_step(wait)) for agent in agents]
    await asyncio.sleep(2)  # every poll has arrived and found no work
    return polls


def test_hundreds_of_waiting_agents_leave_the_threads_free(sqlite_server: RepoServer) -> None:
    server = sqlite_server

    async def scenario() -> dict[str, Any]:
        names = [f"edge-{i}" for i in range(AGENTS)]
        agents = await enroll_many(server.url, server.admin, names)
        polls = await _waiting(agents, wait=30)
        (worker,) = children(server.process.process.pid)
        seen: dict[str, Any] = {"threads": _threads(worker)}
        seen["health"] = [
            await asyncio.to_thread(health_seconds, server.url, BOUND * 2) for _ in range(5)
        ]
        seen["answered_early"] = sum(poll.done() for poll in polls)
        # Two newer polls of one node supersede its first (NSO_REPO_MAX_POLLS_PER_NODE=2):
        # the parked one is woken and answers 204 at once, not after 30 s.
        first, extra = polls[0], []
        for _ in range(2):
            again = LightAgent(server.url, agents[0].token)  # a connection of its own
            extra.append(asyncio.ensure_future(again.next_step(30)))
            await asyncio.sleep(0.3)
        began = time.monotonic()
        seen["superseded"] = await asyncio.wait_for(first, 10)
        seen["superseded_after"] = time.monotonic() - began
        for task in [*polls[1:], *extra]:
            task.cancel()
        return seen

    seen = asyncio.run(scenario())
    # The worker has its 4 request threads and a few of gunicorn's own, not one per agent.
    assert seen["threads"] < 20, seen
    assert max(seen["health"]) < BOUND, seen["health"]
    assert seen["answered_early"] == 0, "a waiting poll answered before its work or deadline"
    assert seen["superseded"] is None and seen["superseded_after"] < 5, seen


def test_more_than_a_thousand_parked_polls_leave_room_for_health(tmp_path: Path) -> None:
    # gunicorn's own default is 1,000 connections a worker: `nso-repo serve` must pass its
    # higher NSO_REPO_WORKER_CONNECTIONS, or the 1,001st agent (and /health) waited.
    server = _serve(tmp_path, NSO_REPO_MAX_POLLS_PER_NODE="5000")
    try:

        async def scenario() -> tuple[list[float], int]:
            (agent,) = await enroll_many(server.url, server.admin, ["many"])
            pollers = [
                LightAgent(server.url, agent.token, f"p{i}", source=source_address(i))
                for i in range(1100)
            ]
            polls = []
            for i in range(0, len(pollers), 100):  # as agents come: not all in one instant
                polls += [asyncio.ensure_future(p.next_step(30)) for p in pollers[i : i + 100]]
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            health = [await asyncio.to_thread(health_seconds, server.url, 10) for _ in range(3)]
            early = sum(poll.done() for poll in polls)
            for poll in polls:
                poll.cancel()
            return health, early

        health, early = asyncio.run(scenario())
    finally:
        server.stop()
    assert early == 0, f"{early} polls answered before their wait ended"
    assert max(health) < BOUND, health


def test_a_poll_that_cannot_park_never_waits_in_a_thread(sqlite_server: RepoServer) -> None:
    # Only a plain GET parks. A HEAD, or a GET with a body, would otherwise wait in one of
    # the 4 threads: a few node tokens held them all and /health waited.
    server = sqlite_server
    agents = asyncio.run(enroll_many(server.url, server.admin, ["h1", "h2", "h3"]))
    heads = [
        b"HEAD /api/v1/agent/next?wait=60 HTTP/1.1\r\nHost: x\r\n",
        b"GET /api/v1/agent/next?wait=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n",
    ]
    answers = []
    for agent in agents:
        for head in heads:
            began = time.monotonic()
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
                token = f"Authorization: Bearer {agent.token}\r\n\r\n".encode()
                sock.sendall(head + token + (b"x" if b"Content-Length" in head else b""))
                answers.append((sock.recv(4096).split(b"\r\n", 1)[0], time.monotonic() - began))
    assert all(line.split(b" ")[1] == b"204" for line, _ in answers), answers
    assert max(seconds for _, seconds in answers) < BOUND, answers
    assert health_seconds(server.url, 10) < BOUND


def test_a_parked_poll_that_asked_to_close_the_connection_is_answered(
    sqlite_server: RepoServer,
) -> None:
    # The agent's urllib sends `Connection: close`; a parked poll runs again on a fresh
    # parser, or gunicorn's would end the connection without the answer.
    server = sqlite_server
    (agent,) = asyncio.run(enroll_many(server.url, server.admin, ["closer"]))
    request = urllib.request.Request(
        f"{server.url}/api/v1/agent/next?wait=2",
        headers={"Authorization": f"Bearer {agent.token}", "Connection": "close"},
    )
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 204
        assert answer.headers["Connection"].lower() == "close"
    assert 1.5 < time.monotonic() - began < 10


@pytest.mark.parametrize(
    ("env", "threads"),
    [
        ({"NSO_REPO_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:5/db"}, 64),
        ({}, 32),
        (
            {
                "NSO_REPO_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:5/db",
                "NSO_REPO_THREADS": "8",
            },
            8,
        ),
    ],
)
def test_serve_gives_each_worker_its_databases_threads(env: dict[str, str], threads: int) -> None:
    """`nso-repo serve`'s gunicorn settings, as a fresh process reads its environment: on
    PostgreSQL 64 threads unless told (bigger batches of claims and reports), 32 on SQLite."""
    code = (
        "from repo_server.cli.server_cmds import gunicorn_options;"
        "print(gunicorn_options(None, None, None)['threads'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PYTHONPATH=str(REPO), **env),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert int(run.stdout.strip()) == threads


def test_serve_and_gunicorn_conf_freeze_what_each_worker_loaded() -> None:
    """Both entries hand gunicorn the hook that leaves what a worker loaded out of the
    garbage collector's full passes (gunicorn_settings.post_worker_init)."""
    code = (
        "import gc, runpy;"
        "from repo_server.cli.server_cmds import gunicorn_options;"
        "hook = gunicorn_options(None, None, None)['post_worker_init'];"
        "conf = runpy.run_path('gunicorn.conf.py')['post_worker_init'];"
        "before = gc.get_freeze_count(); hook(None);"
        "print(conf is hook, before, gc.get_freeze_count())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PYTHONPATH=str(REPO)),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    same, before, after = run.stdout.split()
    assert same == "True" and int(before) == 0 and int(after) > 10_000, run.stdout


def test_waiting_agents_hold_no_database_connection(tmp_path: Path, postgres_server) -> None:
    from repo_server.gunicorn_settings import default_workers

    url = postgres_server.create_database()
    server = _serve(tmp_path, workers=None, NSO_REPO_DATABASE_URL=url)  # as deployed
    try:
        # On PostgreSQL, unless told: one worker per CPU, 2 to 4.
        workers = len(children(server.process.process.pid))
        assert workers == default_workers(url) == min(4, max(2, len(os.sched_getaffinity(0))))

        async def scenario() -> list[list[tuple[str, str]]]:
            agents = await enroll_many(server.url, server.admin, [f"pg-{i}" for i in range(200)])
            polls = await _waiting(agents, wait=30)
            samples = []
            for _ in range(5):
                samples.append(await asyncio.to_thread(connections, url))
                await asyncio.sleep(0.5)
            assert not any(poll.done() for poll in polls)
            for poll in polls:
                poll.cancel()
            return samples

        samples = asyncio.run(scenario())
    finally:
        server.stop()
    for sample in samples:
        assert not [s for s in sample if s[0].startswith("idle in transaction")], sample
        # One LISTEN connection per worker process and what its pool keeps idle (at most
        # SQLAlchemy's pool_size, 5): never one per waiting agent.
        listening = [s for s in sample if s[1].startswith("LISTEN")]
        assert len(listening) <= workers, sample
        assert len(sample) <= workers * (1 + 5), sample


def _established(pid: int, port: int) -> int:
    """Connections to the server's `port` that process `pid` holds open."""
    mine = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in mine:  # 01: ESTABLISHED
            count += 1
    return count


def test_a_rollout_on_one_process_wakes_agents_parked_on_the_others(
    tmp_path: Path, postgres_server
) -> None:
    url = postgres_server.create_database()
    server = _serve(tmp_path, workers=2, NSO_REPO_DATABASE_URL=url)
    bundle = beam.make_patch("6.2.3", "CSCwake1", ["ncs_wake"], tmp_path)[0]
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {server.admin}"
    put = admin.put(f"{server.url}/api/v1/artifacts/{bundle.name}", data=bundle.read_bytes())
    assert put.status_code == 201, put.text

    async def applied(agent: LightAgent, step: dict[str, Any], blobs: Any) -> dict[str, Any]:
        return {"modules": ["ncs_wake"], "changed": True}

    try:

        async def scenario() -> tuple[dict[int, int], list[LightAgent], dict[str, Any]]:
            agents = await enroll_many(server.url, server.admin, [f"w-{i}" for i in range(40)])
            await beat_all(agents, healthy_inventory("6.2.3"))
            async with serving(agents, applied) as began:
                await asyncio.sleep(2)
                workers = children(server.process.process.pid)
                parked = {pid: _established(pid, server.port) for pid in workers}
                began[0] = time.monotonic()
                started = await asyncio.to_thread(
                    admin.post,
                    f"{server.url}/api/v1/patch-rollouts",
                    json={"patch": bundle.name, "all_affected": True},
                )
                assert started.status_code == 201, started.text
                await all_reported(agents, began, within=20)  # the agents were woken
            return parked, agents, started.json()

        parked, agents, started = asyncio.run(scenario())
    finally:
        server.stop()
    # The agents' polls were parked in both processes, and the trigger was served by one of
    # them: every agent got its step, through LISTEN/NOTIFY for the other process's ones.
    assert len(parked) == 2 and all(count > 0 for count in parked.values()), parked
    assert sorted(a.done[0][0] for a in agents) == ["apply_patch"] * len(agents)
    assert len(started["nodes"]) == len(agents)


def _answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and body of one HTTP answer read from ``sock``."""
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return lines[0], body


def test_one_wake_up_hands_a_step_to_the_newest_poll_of_a_node_only(tmp_path: Path) -> None:
    """An agent restarted while the server still holds its previous poll has two polls
    parked: the work that wakes them goes to the newer one, once (attempt 1), and the older
    is answered 204, not handed the same step as well."""
    server = _serve(tmp_path)
    bundle = beam.make_patch("6.2.3", "CSCdup1", ["ncs_dup"], tmp_path)[0]
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {server.admin}"
    try:
        put = admin.put(f"{server.url}/api/v1/artifacts/{bundle.name}", data=bundle.read_bytes())
        assert put.status_code == 201, put.text
        (agent,) = asyncio.run(enroll_many(server.url, server.admin, ["dup"]))
        asyncio.run(beat_all([agent], healthy_inventory("6.2.3")))
        poll = (
            "GET /api/v1/agent/next?wait=30 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {agent.token}\r\n\r\n"
        ).encode()
        with (
            socket.create_connection(("127.0.0.1", server.port)) as old,
            socket.create_connection(("127.0.0.1", server.port)) as new,
        ):
            old.sendall(poll)
            time.sleep(1)
            new.sendall(poll)  # the restarted agent's
            time.sleep(1)
            started = admin.post(
                f"{server.url}/api/v1/patch-rollouts",
                json={"patch": bundle.name, "all_affected": True},
            )
            assert started.status_code == 201, started.text
            old_status, _ = _answer(old)
            new_status, body = _answer(new)
    finally:
        server.stop()
    assert old_status.startswith(b"HTTP/1.1 204"), old_status
    assert new_status.startswith(b"HTTP/1.1 200"), new_status
    step = json.loads(body)["step"]
    assert (step["name"], step["attempt"]) == ("apply_patch", 1)


def _asked_then_half_closed(port: int, raw: bytes) -> bytes:
    """Send ``raw``, end the sending side (as `nc -N` and some proxies do), read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_a_poll_whose_client_half_closes_is_still_answered(tmp_path: Path) -> None:
    """A client that sends its whole poll and then shuts its writing side still waits for
    the answer: a poll that would park is answered at once, told when to ask again, as a
    poll served in a thread is answered; never a connection closed without a word."""
    server = _serve(tmp_path)
    try:
        (agent,) = asyncio.run(enroll_many(server.url, server.admin, ["half"]))
        head = (
            "GET /api/v1/agent/next?wait={wait} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {agent.token}\r\n\r\n"
        )
        now = _asked_then_half_closed(server.port, head.format(wait=0).encode())
        assert now.startswith(b"HTTP/1.1 204"), now
        began = time.monotonic()
        parked = _asked_then_half_closed(server.port, head.format(wait=20).encode())
        assert parked.startswith(b"HTTP/1.1 204") and b"Retry-After:" in parked, parked
        assert time.monotonic() - began < 10
        assert requests.get(f"{server.url}/api/v1/health", timeout=10).status_code == 200
        # A request pipelined behind a parked poll: the poll is answered and the connection
        # closed (the client sends the other again), not reset without a word.
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(head.format(wait=20).encode())
            time.sleep(1.5)
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 204") and b"Connection: close" in got, got
    finally:
        server.stop()


def test_each_forked_process_tells_its_own_wake_ups_apart() -> None:
    """Under gunicorn's --preload the app (and its notifier) is made before the workers
    fork: each worker still needs a tag of its own, or it skips the others' wake-ups."""
    from repo_server.fleet.notify import Notifier

    notifier = Notifier()
    mine = notifier.tag
    assert notifier.tag == mine
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's answer is read below
        os.write(write, notifier.tag.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    assert theirs and theirs != mine
    assert notifier.tag == mine


def _slow_upload(port: int, admin: str) -> socket.socket:
    """An operator's upload whose chunked body has begun and stops: it takes a thread until
    its last chunk is sent (b"0\\r\\n\\r\\n")."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(
        b"PUT /api/v1/artifacts/nso-6.9.linux.x86_64.installer.bin HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {admin}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
    )
    return sock


def _readable(sock: socket.socket, within: float) -> bool:
    return bool(select.select([sock], [], [], within)[0])


def _poll(port: int, token: str, wait: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(
        f"GET /api/v1/agent/next?wait={wait} HTTP/1.1\r\nHost: x\r\n".encode()
        + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def test_an_agents_fresh_long_poll_waits_while_every_thread_is_taken(tmp_path: Path) -> None:
    """When a patch reaches a fleet, each agent that reported long-polls again at once:
    those polls must not queue for the threads before the other agents' claims and reports.
    With every thread taken, a fresh long-poll waits until the threads are free: here a
    second upload that arrived after it is served first. A poll with wait=0 (an agent
    asking for its job's next step right after a report) keeps its place in the queue."""
    server = _serve(tmp_path, threads="1", NSO_REPO_IO_TIMEOUT="30", NSO_REPO_MAX_WAITING_POLLS="1")
    try:
        parked, long, now = asyncio.run(enroll_many(server.url, server.admin, ["h0", "h1", "h2"]))
        # The one poll the worker parks: a long-poll run now is answered 204 at once.
        kept = _poll(server.port, parked.token, 60)
        time.sleep(0.5)
        first = _slow_upload(server.port, server.admin)
        time.sleep(0.5)  # the only thread reads its body
        waiting = _poll(server.port, long.token, 30)
        time.sleep(0.3)
        asking = _poll(server.port, now.token, 0)
        time.sleep(0.3)
        second = _slow_upload(server.port, server.admin)
        time.sleep(0.3)
        assert not _readable(waiting, 0) and not _readable(asking, 0)
        first.sendall(b"0\r\n\r\n")
        assert _answer(first)[0].split(b" ")[1].startswith(b"4")  # "a" is no installer
        # The wait=0 poll had its turn; the thread then went to the second upload, which
        # came after the long-poll (that would have been answered at once: no room to park).
        assert _answer(asking)[0].split(b" ")[1] == b"204"
        assert not _readable(waiting, 2.5), "the long-poll took the thread before the upload"
        second.sendall(b"0\r\n\r\n")
        assert _answer(second)[0].split(b" ")[1].startswith(b"4")
        assert _answer(waiting)[0].split(b" ")[1] == b"204"
        assert not _readable(kept, 0)  # still parked: nothing else was held up
        for sock in (first, second, waiting, asking, kept):
            sock.close()
        assert health_seconds(server.url, 10) < BOUND
    finally:
        server.stop()


def test_a_held_back_poll_whose_client_closes_is_answered_without_a_thread(
    tmp_path: Path,
) -> None:
    """A long-poll held back while the only thread is taken, whose client then ends its
    side (or goes away), is answered "no work now" at once and closed, as a parked one is:
    never run later for a client that left (a step handed out to it would count as an
    attempt)."""
    server = _serve(tmp_path, threads="1", NSO_REPO_IO_TIMEOUT="30")
    try:
        (agent,) = asyncio.run(enroll_many(server.url, server.admin, ["gone"]))
        upload = _slow_upload(server.port, server.admin)
        time.sleep(0.5)  # the only thread reads its body
        began = time.monotonic()
        got = _asked_then_half_closed(
            server.port,
            b"GET /api/v1/agent/next?wait=30 HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {agent.token}\r\n\r\n".encode(),
        )
        assert got.startswith(b"HTTP/1.1 204") and b"Connection: close" in got, got
        assert time.monotonic() - began < 3  # the upload still holds the only thread
        assert not _readable(upload, 0)
        upload.sendall(b"0\r\n\r\n")
        assert _answer(upload)[0].split(b" ")[1].startswith(b"4")
        upload.close()
    finally:
        server.stop()
