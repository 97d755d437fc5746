"""Abusive clients for the server's abuse tests and `bench/abuse.py`: huge bodies sent over a
raw socket, slow and idle connections, a node token holding many long-polls; and readings of
a server process's memory and of how long `/health` takes to answer meanwhile.

Plain sockets and threads, no pytest: the benchmark imports this module too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MIB = 1 << 20


# ---------------------------------------------------------------------------- memory


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a gunicorn master's workers)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids.extend(int(k) for k in (task / "children").read_text().split())
    return kids


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status: VmRSS, or VmHWM (the peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"/proc/{pid}/status has no {key}")


# ---------------------------------------------------------------------------- raw HTTP


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the server took before it answered

    def json(self) -> Any:
        return json.loads(self.body)


def _parse_answer(data: bytes, sent: int) -> RawAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        raise AssertionError(f"no HTTP answer, got {data[:200]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawAnswer(int(lines[0].split()[1]), headers, body, sent)


def chunked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` in HTTP/1.1 chunked transfer coding."""
    for chunk in chunks:
        yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"


def json_string_body(key: str, size: int, chunk: int = MIB) -> Iterator[bytes]:
    """``{"KEY": "aaaa..."}``, ``size`` bytes long in all, made ``chunk`` bytes at a time."""
    opening, closing = b'{"%s": "' % key.encode(), b'"}'
    yield opening
    left = size - len(opening) - len(closing)
    block = b"a" * chunk
    while left > 0:
        yield block[: min(chunk, left)]
        left -= chunk
    yield closing


def send_request(
    port: int,
    method: str,
    path: str,
    body: Iterable[bytes] = (),
    headers: Optional[dict[str, str]] = None,
    timeout: float = 120,
) -> RawAnswer:
    """Send a request over a plain socket and read the answer, which may come before the
    body is sent in full: sending stops as soon as the server answers or closes (a client
    library would report the broken pipe instead of the answer)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    received = bytearray()
    done = threading.Event()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def read() -> None:
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                received.extend(data)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    sent = 0
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reader.start()
        for chunk in body:
            if received or done.is_set():
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        if not done.wait(timeout):
            raise AssertionError(f"{method} {path}: no complete answer within {timeout} s")
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    return _parse_answer(bytes(received), sent)


# ---------------------------------------------------------------------------- latency


def health_seconds(
    url: str, timeout: float = 60, context: Optional[ssl.SSLContext] = None
) -> float:
    """Seconds `GET /api/v1/health` takes on a new connection (``timeout`` if it never
    answers, so a starved server reads as the bound it blew)."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(
            f"{url}/api/v1/health", timeout=timeout, context=context
        ) as answer:
            answer.read()
    except urllib.error.HTTPError:
        pass  # any answer is an answer: 503 says the server is up and not starved
    except OSError:
        return max(timeout, time.monotonic() - start)
    return time.monotonic() - start


# ---------------------------------------------------------------------------- slow clients


SLOW_KINDS = ("idle", "slow_head", "slow_body", "slow_chunked", "after_close", "slow_tls")
ENROLL_HEAD = b"POST /api/v1/agent/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
# What each kind sends when it connects, and then every ``interval`` seconds.
SLOW_SENDS: dict[str, tuple[bytes, bytes]] = {
    "idle": (b"", b""),
    "slow_head": (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n"),
    "slow_body": (ENROLL_HEAD + b"Content-Length: 4096\r\n\r\n{", b" "),
    "slow_chunked": (ENROLL_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n", b"1\r\n \r\n"),
    "after_close": (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b" "),
}
# The start of a TLS record carrying a ClientHello: the rest never comes.
TLS_RECORD_START = b"\x16\x03\x01\x02\x00\x01"


@dataclass
class SlowClients:
    """``count`` connections of one kind, from ``source`` (a loopback address), kept open
    and reconnected whenever the server closes one:

    - ``idle``: connects and sends nothing;
    - ``slow_head``: a request line, then one more header line every ``interval`` seconds,
      never the blank line that ends the head (slowloris);
    - ``slow_body``: a whole head of `POST /api/v1/agent/enroll` announcing a small JSON
      body, then one byte of it every ``interval`` seconds (R-U-Dead-Yet);
    - ``slow_chunked``: the same with a chunked body, one 1-byte chunk every ``interval``;
    - ``after_close``: a whole `GET /api/v1/health` with `Connection: close`, then a byte
      every ``interval`` seconds after the answer (the server's graceful close drains them);
    - ``slow_tls``: the first bytes of a TLS ClientHello, then one more byte every
      ``interval`` seconds (a handshake that never ends).

    Runs in a thread of its own (``with SlowClients(...)``); ``closed_by_server`` counts
    the connections the server gave up on.
    """

    port: int
    count: int
    kind: str = "slow_head"
    source: str = "127.0.0.1"
    interval: float = 1.0
    closed_by_server: int = 0
    opened: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def __post_init__(self) -> None:
        if self.kind not in SLOW_KINDS:
            raise ValueError(f"kind {self.kind!r}: use one of {', '.join(SLOW_KINDS)}")

    def __enter__(self) -> SlowClients:
        self._selector = selectors.DefaultSelector()
        for _ in range(self.count):
            self._open()
        self._thread = threading.Thread(target=self._run, name=f"slow-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.source, 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()  # the listen backlog is full: try again on the next round
            return
        sock.setblocking(False)
        self.opened += 1
        first = TLS_RECORD_START if self.kind == "slow_tls" else SLOW_SENDS[self.kind][0]
        if first:
            self._send(sock, first)
        self._selector.register(sock, selectors.EVENT_READ)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            return True  # the server does not read: that is the point
        except OSError:
            return False
        return True

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        sock.close()
        self.closed_by_server += 1

    def _run(self) -> None:
        next_trickle = time.monotonic() + self.interval
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    if sock.recv(65536):
                        continue  # an answer (408, 400...): the server closes next
                self._drop(sock)
            if time.monotonic() >= next_trickle:
                next_trickle += self.interval
                trickle = b"\x00" if self.kind == "slow_tls" else SLOW_SENDS[self.kind][1]
                for key in list(self._selector.get_map().values()):
                    sock = key.fileobj  # type: ignore[assignment]
                    if trickle and not self._send(sock, trickle):
                        self._drop(sock)
            for _ in range(self.count - len(self._selector.get_map())):
                self._open()


# ---------------------------------------------------------------------------- long-polls


@dataclass
class LongPollers:
    """``count`` threads that each long-poll `GET /api/v1/agent/next?wait=WAIT` with one
    node token, again as soon as an answer comes: one node holding as many polls as it can.
    ``statuses`` counts the answers by HTTP status."""

    url: str
    token: str
    count: int
    wait: int = 60
    statuses: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiting_since: dict[int, float] = field(default_factory=dict)  # thread index -> start

    def __enter__(self) -> LongPollers:
        for i in range(self.count):
            thread = threading.Thread(target=self._poll, args=(i,), name=f"poll-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()  # threads end after their poll; they are daemons, never joined long

    def held_longer_than(self, seconds: float) -> int:
        """How many polls have been waiting for their answer more than ``seconds``."""
        now = time.monotonic()
        with self._lock:
            return sum(now - since > seconds for since in self._waiting_since.values())

    def _poll(self, index: int) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/v1/agent/next?wait={self.wait}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        while not self._stop.is_set():
            with self._lock:
                self._waiting_since[index] = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=self.wait + 30) as answer:
                    answer.read()
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, http.client.HTTPException):
                status = 0
                self._stop.wait(0.1)
            with self._lock:
                self.statuses[status] += 1
                del self._waiting_since[index]


def health_during(
    url: str,
    seconds: float,
    pause: float = 0.5,
    timeout: float = 30,
    context: Optional[ssl.SSLContext] = None,
) -> list[float]:
    """`health_seconds` again and again for ``seconds`` (at least once)."""
    deadline = time.monotonic() + seconds
    latencies = [health_seconds(url, timeout, context)]
    while time.monotonic() < deadline:
        time.sleep(pause)
        latencies.append(health_seconds(url, timeout, context))
    return latencies
