"""Bodies that do not come as a small Content-Length cannot hold a thread either (issue 8
review). The worker waited in its event loop only for a JSON body with a Content-Length up
to NSO_REPO_MAX_JSON_SIZE; without a token, 40 connections that sent instead

- a chunked JSON body a chunk at a time,
- `Expect: 100-continue` and then the body a byte at a time,
- a Content-Length over the limit (refused, or not read by the view) and then a byte at a
  time: after the answer the thread discarded the rest of that body before the next request,

each held a thread, and `GET /api/v1/health` went unanswered for as long as they trickled.
And gunicorn's graceful close drained a closing connection for up to 2 s in the event loop
itself: 40 clients that kept sending after their answer stopped the server for a minute.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.factories import make_installer
from tests.support.abuse import (
    ENROLL_HEAD,
    SLOW_SENDS,
    SlowClients,
    chunked,
    health_during,
    send_request,
)
from tests.support.nso_repo import RepoServer
from tests.support.processes import REPO, clean_env

BOUND = 5.0  # seconds /health may take meanwhile (it took over 15 s: no answer at all)
CONNECTIONS = 40  # more than the worker's 32 threads
ABUSE_SECONDS = 6
LIMIT = 64 << 10  # NSO_REPO_MAX_JSON_SIZE here
LOW_NOFILE = 1024  # the usual soft limit, here the hard one too

HEADS = {
    "chunked": SLOW_SENDS["slow_chunked"],
    "expect_100": (ENROLL_HEAD + b"Content-Length: 4000\r\nExpect: 100-continue\r\n\r\n{", b" "),
    # The view answers at once (413: over the limit); the thread then read the rest of the
    # body to find the next request, which the client had already started in the body.
    "over_the_limit": (
        ENROLL_HEAD + b"Content-Length: 4000000000\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b" ",
    ),
    "unread_body": (
        b"POST /api/v1/agent/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 4000000000\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b" ",
    ),
    # Not a body: bytes sent after a request that closes the connection. gthread drained
    # them for up to 2 s per connection in its event loop before it closed the socket.
    "after_connection_close": SLOW_SENDS["after_close"],
    "upload_without_a_token": (
        b"PUT /api/v1/artifacts/nso-6.9.linux.x86_64.installer.bin HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n",
        b"1\r\na\r\n",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoServer]:
    env = clean_env(
        PYTHONPATH=str(REPO), NSO_REPO_REQUEST_TIMEOUT="3", NSO_REPO_MAX_JSON_SIZE=str(LIMIT)
    )
    repo = RepoServer(tmp_path_factory.mktemp("slow-bodies") / "data", env=env)
    repo.start()
    try:
        yield repo
    finally:
        repo.stop()


@contextlib.contextmanager
def trickling(port: int, head: bytes, trickle: bytes) -> Iterator[None]:
    """CONNECTIONS connections that send ``head`` and then ``trickle`` every half second."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(CONNECTIONS)]
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.5):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(trickle)

    for sock in socks:
        sock.sendall(head)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_trickled_body_does_not_hold_a_thread(server: RepoServer, kind: str) -> None:
    head, trickle = HEADS[kind]
    with trickling(server.port, head, trickle):
        latencies = health_during(server.url, ABUSE_SECONDS, timeout=15)
    assert max(latencies) < BOUND, f"/health took {max(latencies):.1f} s: {latencies}"


def _json_post(body: bytes, *headers: str) -> bytes:
    return (
        "\r\n".join(
            [
                "POST /api/v1/agent/enroll HTTP/1.1",
                "Host: x",
                "Content-Type: application/json",
                *headers,
            ]
        ).encode()
        + b"\r\n\r\n"
        + body
    )


def _answers(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


GET = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b'{"enrollment_token": "nse_unknown"}'


def test_chunked_and_expecting_json_bodies_are_still_served(server: RepoServer) -> None:
    # Whole chunked bodies (with an extension and a trailer), bodies after 100 Continue,
    # and a request pipelined behind each: all answered, in order.
    pieces = chunked([BODY[:10], BODY[10:]])
    framed = b"".join(pieces).replace(b"\r\n", b";ext=1\r\n", 1)
    framed = framed[: -len(b"\r\n")] + b"X-Trailer: 1\r\n\r\n"
    answer = _answers(server.port, _json_post(framed, "Transfer-Encoding: chunked") + GET)
    assert answer.count(b"HTTP/1.1 401 ") == 1 and b"enrollment_refused" in answer, answer
    assert answer.count(b"HTTP/1.1 200 ") == 1, answer

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_json_post(b"", f"Content-Length: {len(BODY)}", "Expect: 100-continue"))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY + GET)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert b"100 Continue" not in answer, answer  # once only
    assert answer.startswith(b"HTTP/1.1 401 ") and b"enrollment_refused" in answer, answer
    assert answer.count(b"HTTP/1.1 200 ") == 1, answer


@pytest.mark.parametrize("framing", ["content-length", "chunked", "expect"])
def test_a_json_body_over_the_limit_is_refused_and_the_connection_closed(
    server: RepoServer, framing: str
) -> None:
    body = b'{"enrollment_token": "' + b"a" * LIMIT + b'"}'
    headers = {"Content-Type": "application/json"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        parts = list(chunked([body[i : i + 4096] for i in range(0, len(body), 4096)]))
    else:
        headers["Content-Length"] = str(len(body))
        parts = [body]
        if framing == "expect":
            headers["Expect"] = "100-continue"
    answer = send_request(server.port, "POST", "/api/v1/agent/enroll", parts, headers)
    assert answer.status == 413, answer.body[:300]
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and error["details"]["limit"] == LIMIT
    assert "NSO_REPO_MAX_JSON_SIZE" in error["message"]
    assert answer.headers.get("connection") == "close", answer.headers


def test_a_body_the_server_did_not_read_closes_the_connection(server: RepoServer) -> None:
    # Not JSON, so no view reads it: the answer comes at once, and the connection is closed
    # rather than kept to read the rest of a body announced as 4 GB.
    head = (
        b"POST /api/v1/agent/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 4000000000\r\n\r\n"
    )
    started = time.monotonic()
    answer = _answers(server.port, head + b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]
    assert b"Connection: close" in answer.split(b"\r\n\r\n")[0], answer[:300]
    assert time.monotonic() - started < 5


def test_uploads_still_stream_chunked_and_after_100_continue(
    server: RepoServer, tmp_path: Path
) -> None:
    installer = make_installer(tmp_path, "6.4", size=3 * LIMIT)
    data = installer.read_bytes()
    headers = {"Authorization": f"Bearer {server.admin}", "Transfer-Encoding": "chunked"}
    answer = send_request(
        server.port,
        "PUT",
        f"/api/v1/artifacts/{installer.name}",
        chunked([data[i : i + 8192] for i in range(0, len(data), 8192)]),
        headers,
    )
    assert answer.status == 201, answer.body[:300]
    assert answer.json()["size"] == len(data)


def test_sockets_closing_after_their_answer_count_against_the_open_file_limit(
    tmp_path: Path,
) -> None:
    """Under a limit of 1,024 open files, with hundreds of slow heads held open, clients
    that ask with `Connection: close` and never close their end (each socket drains for up
    to 2 s after its answer) must not take the worker past its limit: uploads and /health
    go on being answered, never a 500 for a file it cannot open nor a 503."""
    server = RepoServer(tmp_path / "data", env=clean_env(PYTHONPATH=str(REPO)), nofile=LOW_NOFILE)
    server.start()
    held: list[socket.socket] = []
    stop = threading.Event()
    ask = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    def never_closing(index: int) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sock = socket.socket()
                sock.bind((f"127.0.{10 + index}.1", 0))
                sock.settimeout(5)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(ask)
                sock.recv(4096)  # the answer; then the socket stays open
                held.append(sock)

    answers: list[int] = []
    try:
        with contextlib.ExitStack() as slow:
            for i in range(11):  # 60 per address at most
                slow.enter_context(SlowClients(server.port, 60, source=f"127.0.50.{i + 1}"))
            time.sleep(2)
            threads = [threading.Thread(target=never_closing, args=(i,)) for i in range(16)]
            for thread in threads:
                thread.start()
            try:
                until = time.monotonic() + 15
                while time.monotonic() < until:
                    # Not a package: refused (400), after the upload's temporary file.
                    put = requests.put(
                        f"{server.url}/api/v1/artifacts/ncs-6.2-pkg{len(answers)}-1.0.tar.gz",
                        data=os.urandom(2000),
                        headers={"Authorization": f"Bearer {server.admin}"},
                        timeout=30,
                    )
                    health = requests.get(f"{server.url}/api/v1/health", timeout=30)
                    answers += [put.status_code, health.status_code]
                    time.sleep(0.3)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
    finally:
        for sock in held:
            sock.close()
        log = server.process.log.read_text(errors="replace")
        server.stop()
    assert answers and all(code < 500 for code in answers), answers
    assert "out of file descriptors" not in log and "Too many open files" not in log
