"""gunicorn's threaded worker, made safe against slow and idle clients.

gunicorn's `gthread` hands a connection to a thread as soon as it has a byte to read; the
thread then blocks until the whole request head has come. Forty clients that send half a
head (slowloris) therefore held every thread, and `/health` waited for minutes. Here the
worker's event loop reads each request's head, and a body up to NSO_REPO_MAX_JSON_SIZE,
without a thread, and gives the connection to a thread only when the request is all there:

- a request must arrive within NSO_REPO_REQUEST_TIMEOUT seconds of its first byte (of the
  connection, or of its keep-alive wait ending); past it the client gets 408 and is closed;
- a head larger than 64 KiB is answered 431 and closed;
- one client address may have at most NSO_REPO_MAX_PENDING_PER_ADDRESS requests in the
  making at once; a newer one closes its oldest (a slowloris from one address only hurts
  itself, and a real client's fresh request always gets in);
- once a thread serves a request, every read and write on its socket gives up after
  NSO_REPO_IO_TIMEOUT seconds without progress (a stalled upload or download), so a thread
  is never held by a peer that went silent.

Only the upload routes (PUT /api/v1/artifacts/<filename>, POST /api/v1/artifacts) stream a
body larger than NSO_REPO_MAX_JSON_SIZE, or a chunked one, in their thread. Every other
request's body is read here whole, chunked or not, and one over the limit is answered 413
without a thread; `Expect: 100-continue` is answered here too. And a connection whose
request body the application did not read to its end is closed after the answer, never
kept alive: the thread would otherwise read the rest of that body, at the client's pace,
to find the next request. (Each of these used to let 40 connections without a token hold
every thread: tests/api/test_slow_bodies.py.) The worker speaks HTTP/1.1 (with or without
gunicorn's TLS).

A request may also *park* (repo_server/parking.py): an agent's long-poll with no work yet
gives its thread back and waits here, in the event loop, until it is woken or its deadline
passes; then the same request runs again in a thread. A thousand waiting agents cost a
thousand sockets, not a thousand threads, database connections or transactions. And
while every thread is taken, an agent's fresh poll waits here too, before it has a thread
(`_may_wait`), so that it does not queue before the claims and reports of a fleet.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import json
import re
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import defaultdict
from functools import partial
from typing import Any, Callable, Optional
from urllib.parse import unquote_to_bytes

from gunicorn import http
from gunicorn import sock as gsock
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.gthread import TConn, ThreadWorker

from repo_server.observability import record
from repo_server.parking import PARK, PARKED_NOW, RESUMED, Parked

MAX_HEAD_BYTES = 64 << 10
READ_CHUNK = 64 << 10
LINGER_SECONDS = 2.0  # gunicorn's own linger (util.close_graceful)
LINGER_BYTES = 64 << 10
MAX_CHUNK_SIZE_LINE = 1024  # a chunk's size in hex and its extensions
MAX_TRAILER_LINE = 8 << 10
HEX = frozenset(b"0123456789abcdefABCDEF")
# (status, reason, code, message, details) of an answer the event loop gives by itself.
Answer = tuple[int, str, str, str, Optional[dict[str, Any]]]
# File descriptors a worker keeps for its own files, database and listener connections
# beyond the parked requests' sockets.
FD_RESERVE = 256
# Sockets draining after their answer at most (_linger): half the reserve.
LINGER_MAX = FD_RESERVE // 2
FD_PAUSE = 0.5  # seconds without accept() after running out of file descriptors
# A parked request is run again from its bytes: an agent's poll is a few hundred. A larger
# head does not park (its client waits for a `Retry-After` instead), so what parked
# requests keep stays small.
MAX_PARKED_HEAD = 8 << 10
PARKED = object()  # a thread's result when its request parked
READ_NOTHING = object()  # a waiting client's socket was readable for TLS records only
HEAD_TOO_LARGE: Answer = (
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    f"the request head is over {MAX_HEAD_BYTES} bytes: send fewer or shorter headers",
    None,
)
# How long an agent's fresh poll may be held back while every thread is taken (_may_wait).
DEFER_SECONDS = 5.0
# An agent's long-poll: no query (the default wait) or a wait that is not zero.
LONG_POLL = re.compile(rb"GET /api/v1/agent/next(\?wait=0*[1-9][0-9]*)? HTTP/1\.[01]\r\n")
# What a parked long-poll whose client ended its side, or sent more, is told: no work now,
# ask again.
HALF_CLOSED_ANSWER = b"HTTP/1.1 204 No Content\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"


class Park(Exception):
    """Raised through gunicorn's request handling when the app parked the request."""

    def __init__(self, parked: Parked) -> None:
        super().__init__("parked")
        self.parked = parked


class Refused(Exception):
    """A request the event loop answers itself, and then closes the connection."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer[3])
        self.answer = answer


def is_upload(method: bytes, target: bytes) -> bool:
    """Whether a request line names an upload route, the only ones that stream a body of any
    size (the app's request_guards.UPLOAD_ENDPOINTS). werkzeug decodes the path before it
    routes, so this does too."""
    path = target.split(b"?", 1)[0]
    if b"://" in path:  # absolute-form: http://host/path
        path = b"/" + path.split(b"://", 1)[1].partition(b"/")[2]
    path = unquote_to_bytes(path)
    if method == b"POST":
        return path == b"/api/v1/artifacts"
    prefix = b"/api/v1/artifacts/"
    return method == b"PUT" and path.startswith(prefix) and b"/" not in path[len(prefix) :]


def close_unless_body_read(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: when the application answers without having read the request body
    to its end (refused it, or had no use for it), the answer closes the connection. Kept
    alive, the thread would read the rest of that body to find the next request, for as
    long as the client cares to trickle it."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = environ.get("wsgi.input")  # gunicorn's, whatever the app puts in its place

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            response: Any = getattr(start_response, "__self__", None)  # gunicorn's Response
            if _body_left(body) and hasattr(response, "force_close"):
                response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return guarded


def _body_left(body: Any) -> bool:
    """Whether gunicorn's request body still has bytes to come or to hand out."""
    if body is None:
        return False
    if getattr(body, "failed", False) or body.buf.tell():
        return True
    reader = body.reader
    if isinstance(reader, LengthReader):
        return reader.length > 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is not None or reader.buf.tell() > 0
    return True  # a body read to the connection's end: nothing may follow it anyway


class PendingConn(TConn):
    """A connection and what the event loop has read of its next request."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data = bytearray()
        self.scanned = 0  # bytes of data searched for the end of the head
        self.head_end = 0  # where the body starts in data, once the head is in
        self.wanted = 0  # bytes of data that make the request whole, once known
        # A chunked body read here: where the next chunk's size line starts in data (-1:
        # not chunked), whether the CRLF ending the previous chunk's data is still to be
        # checked, the body's decoded bytes so far, and whether the trailer section began.
        self.chunk_at = -1
        self.chunk_crlf = False
        self.decoded = 0
        self.in_trailers = False
        self.deadline = 0.0
        self.address = self.client[0] if isinstance(self.client, tuple) else str(self.client)
        self.handshaking = False
        self.ready = False  # the request is all there: the next enqueue goes to a thread
        self.linger: Optional[Callable[[socket.socket], None]] = None
        # A request that may park: its bytes, to run it again; what the app parked; what
        # its next run gets back; the wake-up the event loop registered for it.
        self.replay: Optional[bytes] = None
        self.park: Optional[Parked] = None
        self.resumed: Optional[Parked] = None
        self.wake: Optional[Callable[[], None]] = None

    def close(self, graceful: bool = False) -> None:
        # gthread closes gracefully from its event loop: a blocking drain of up to 2 s, so
        # a client that trickled bytes into a closing connection stopped the loop for 2 s,
        # and 40 of them stopped it for a minute. The worker lingers without blocking.
        if graceful and self.linger is not None:
            self.linger(self.sock)
        else:
            super().close(graceful)


class GuardedThreadWorker(ThreadWorker):
    """`gthread` whose threads only ever see requests that have fully arrived."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from repo_server import gunicorn_settings
        from repo_server.config import load_settings

        self.request_timeout = gunicorn_settings.request_timeout
        self.io_timeout = gunicorn_settings.io_timeout
        self.max_pending_per_address = gunicorn_settings.max_pending_per_address
        settings = load_settings()
        self.preread_limit = settings.max_json_bytes
        self.tls: Optional[ssl.SSLContext] = None
        # Connections whose request is being read, oldest first (dicts keep insertion
        # order, and every deadline is start + the same timeout); and the same by address.
        self.reading: dict[PendingConn, None] = {}
        self.reading_from: defaultdict[str, dict[PendingConn, None]] = defaultdict(dict)
        # Closing sockets, drained until the client closes too (RFC 9112 9.6), oldest first.
        self.lingering: dict[socket.socket, float] = {}
        # Parked requests, and their deadlines as a heap of (deadline, n, conn, parked);
        # an entry whose conn has since left or parked again is skipped when it comes up.
        self.parked: dict[PendingConn, Parked] = {}
        self.deadlines: list[tuple[float, int, PendingConn, Parked]] = []
        self.parks = itertools.count()
        self.max_parked = settings.max_waiting_polls
        self.thread_conn = threading.local()  # the connection a thread serves
        # Requests given to the threads and not finished (running or queued), and the
        # agents' fresh polls held back meanwhile with their time limits, oldest first
        # (dicts keep insertion order, and every limit is arrival + DEFER_SECONDS).
        self.in_threads = 0
        self.held_back: dict[PendingConn, float] = {}
        self.accept_paused_until = 0.0  # no accept() before this time.monotonic()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.http_protocols != ["h1"] or cfg.http2_cleartext != "off":
            raise RuntimeError(
                "repo_server.http_worker.GuardedThreadWorker serves HTTP/1.1 only: "
                "remove the http_protocols and http2_cleartext settings"
            )
        if getattr(cfg, "protocol", "http") != "http":
            raise RuntimeError("GuardedThreadWorker serves HTTP: remove the protocol setting")

    def init_process(self) -> None:
        # Every parked request keeps its socket: take the file descriptors the system allows
        # (the soft limit is often 1024), and park no more than they leave room for.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
        if soft != resource.RLIM_INFINITY and soft < wanted:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
        connections = int(self.cfg.worker_connections)
        if soft != resource.RLIM_INFINITY:
            # Past the limit accept() fails (EMFILE): take no more connections than it allows.
            connections = max(1, min(connections, soft - FD_RESERVE))
        self.worker_connections = connections
        self.max_keepalived = max(0, connections - self.cfg.threads)
        # Parked polls leave room for everything else: /health, operators, reports.
        room = connections - max(16, connections // 10)
        self.max_parked = max(1, min(self.max_parked, room))
        super().init_process()

    # -- connections enter the event loop, not a thread --------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of file descriptors (another limit than ours, or the system's): stop
                # accepting for a moment rather than die with every parked poll.
                self.log.warning("out of file descriptors: not accepting for %.1f s", FD_PAUSE)
                self.accept_paused_until = time.monotonic() + FD_PAUSE
                self.set_accept_enabled(False)
                return
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = PendingConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.linger = self._linger
        if self.cfg.is_ssl:
            if self.tls is None:  # once: gunicorn would load the key for every connection
                self.tls = gsock.ssl_context(self.cfg)
            try:
                conn.sock = self.tls.wrap_socket(
                    conn.sock,
                    server_side=True,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs,
                    do_handshake_on_connect=False,
                )
            except OSError:  # the client is gone already
                self.nr_conns -= 1
                conn.close()
                return
            conn.handshaking = True
        self._start_reading(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and time.monotonic() < self.accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def enqueue_req(self, conn: PendingConn) -> None:
        """The base class calls this for a kept-alive connection that became readable, and
        for one holding read-ahead bytes: read its next request here first."""
        if conn.ready:
            conn.ready = False
            if self._may_wait(conn):
                self.held_back[conn] = time.monotonic() + DEFER_SECONDS
                # Readable while held back: the client closed (or sent more), as when parked.
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self._held_readable, conn)
                )
            else:
                self._to_thread(conn)
            return
        if conn.parser is not None:
            conn.data.extend(conn.parser.unreader.take_buffered())
        self._start_reading(conn)

    # -- agents' fresh polls wait while the threads are taken ------------------------------

    def _may_wait(self, conn: PendingConn) -> bool:
        """Whether to hold back a request that is whole, while every thread is taken.

        When a patch reaches a fleet, each agent reports and then waits for more work with a
        long-poll at once; in the threads' queue those polls stood between the other agents'
        claims and reports (the work an operator waits for) and pushed them back by a fifth
        (bench/patch_latency.py). A fresh long-poll (an agent's GET /api/v1/agent/next with
        a wait, which has not parked yet) therefore waits here, about DEFER_SECONDS at most,
        until most threads are free (_let_through); behind the polls held before it, so none
        is overtaken. A woken poll (it claims its step) never waits, nor does a poll with
        ``wait=0`` (an agent asking for its job's next step right after a report), nor any
        other request."""
        return (
            self.alive
            and (self.in_threads >= self.cfg.threads or bool(self.held_back))
            and conn.resumed is None
            and conn.replay is not None
            and LONG_POLL.match(conn.replay) is not None
        )

    def _to_thread(self, conn: PendingConn) -> None:
        self.in_threads += 1
        super().enqueue_req(conn)

    def _let_through(self) -> None:
        """Give the held-back polls to the threads once the rush is over (a quarter of the
        threads busy at most: a few requests a moment apart are no rush), as many as there
        are threads free, those past their time limit at once, and all of them when the
        worker stops. Let through together, they meet in one batch (fleet/idle_polls.py):
        a trickle of them made batches of a few polls, each paying a batch's statements."""
        now = time.monotonic()
        over = self.in_threads <= self.cfg.threads // 4 or not self.alive
        while self.held_back:
            conn, until = next(iter(self.held_back.items()))
            free = over and (self.in_threads < self.cfg.threads or not self.alive)
            if not free and until > now:
                break
            del self.held_back[conn]
            self._unwatch(conn.sock)
            self._to_thread(conn)

    def _held_readable(self, conn: PendingConn, _sock: Any) -> None:
        if conn not in self.held_back:
            return  # let through earlier in this turn of the event loop: a thread's now
        more = self._peek(conn)
        if more is READ_NOTHING:
            return
        del self.held_back[conn]
        self._unwatch(conn.sock)
        self._end_waiting(conn, more)

    def _unwatch(self, sock: socket.socket) -> None:
        """Take the socket off the event loop's watch; a socket it does not watch (never
        registered, already taken off) or one closed is no error."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)

    def _start_reading(self, conn: PendingConn) -> None:
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.request_timeout
        while len(self.reading_from[conn.address]) >= self.max_pending_per_address:
            self._close(next(iter(self.reading_from[conn.address])))
        self.reading[conn] = None
        self.reading_from[conn.address][conn] = None
        if not self._settled(conn):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _forget(self, conn: PendingConn) -> None:
        self.reading.pop(conn, None)
        mine = self.reading_from.get(conn.address)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.reading_from[conn.address]
        # Not registered when dispatched from read-ahead, or already gone.
        self._unwatch(conn.sock)

    def _close(self, conn: PendingConn, answer: Optional[Answer] = None) -> None:
        self._forget(conn)
        if answer is not None:
            status, reason, code, message, details = answer
            error: dict[str, Any] = {"code": code, "message": message}
            if details:
                error["details"] = details
            body = json.dumps({"error": error}).encode()
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError, ValueError):  # best effort: it must not block
                conn.sock.send(head.encode() + body)
        self.nr_conns -= 1
        conn.close(graceful=answer is not None)

    def _linger(self, sock: socket.socket) -> None:
        """Close ``sock`` after its answer: send FIN, then drain what the client still
        sends, in the event loop, until it closes, LINGER_SECONDS pass or LINGER_BYTES came
        (closing with unread bytes would reset the connection and could cut the answer).
        A lingering socket still holds a file descriptor, so it counts among the worker's
        connections until it goes (a client that never closes its end would otherwise take
        descriptors past the limit the accept gate keeps); past LINGER_MAX of them, the
        socket is closed at once."""
        if len(self.lingering) >= LINGER_MAX:
            with contextlib.suppress(OSError):
                sock.close()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._drain)
        except (OSError, ValueError, KeyError):
            with contextlib.suppress(OSError):
                sock.close()
            return
        self.lingering[sock] = time.monotonic() + LINGER_SECONDS
        self.nr_conns += 1
        self._drain(sock)

    def _drain(self, sock: socket.socket, *_args: Any) -> None:
        drained = 0
        while True:
            try:
                data = sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                if drained < LINGER_BYTES:
                    return
                data = b""
            except OSError:
                data = b""
            drained += len(data)
            if not data or drained >= LINGER_BYTES:
                self._unlinger(sock)
                return

    def _unlinger(self, sock: socket.socket) -> None:
        if self.lingering.pop(sock, None) is not None:
            self.nr_conns -= 1
        self._unwatch(sock)
        with contextlib.suppress(OSError):
            sock.close()

    # -- reading a request in the event loop -------------------------------------------

    def _readable(self, conn: PendingConn, _sock: Any) -> None:
        try:
            self._read(conn)
        except Exception:  # never let one connection stop the event loop of them all
            self.log.exception("reading a request from %s failed", conn.address)
            if conn in self.reading:
                self._close(conn)

    def _read(self, conn: PendingConn) -> None:
        if conn.handshaking and not self._handshake(conn):
            return
        while True:
            try:
                data = conn.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                break  # a TLS renegotiation: wait for the next readable event
            except OSError:
                self._close(conn)
                return
            if not data:
                self._close(conn)  # gone before its request was complete
                return
            conn.data.extend(data)
            if self._settled(conn):
                return
            if not conn.head_end and len(conn.data) > MAX_HEAD_BYTES:
                self._close(conn, HEAD_TOO_LARGE)
                return

    def _settled(self, conn: PendingConn) -> bool:
        """Hand the request to a thread once it is all there, or answer it here when it is
        refused; False while more is to come."""
        try:
            if not self._complete(conn):
                return False
        except Refused as refused:
            self._close(conn, refused.answer)
            return True
        self._dispatch(conn)
        return True

    def _handshake(self, conn: PendingConn) -> bool:
        """One step of a TLS handshake; True once it is done."""
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
            return False
        except ssl.SSLWantWriteError:
            self.poller.modify(conn.sock, selectors.EVENT_WRITE, partial(self._readable, conn))
            return False
        except (ssl.SSLError, OSError):
            self._close(conn)  # not TLS, or a client that gave up: nothing to answer
            return False
        conn.handshaking = False
        self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
        return True

    def _complete(self, conn: PendingConn) -> bool:
        """Whether the request is all there: its head, and the body when the event loop
        waits for it (every body but an upload's stream). Raises Refused for a request
        answered here."""
        if not conn.head_end:
            # Look only at what came since the last look: a head sent a byte at a time
            # must not cost a scan of everything before each byte.
            end = conn.data.find(b"\r\n\r\n", max(0, conn.scanned - 3))
            conn.scanned = len(conn.data)
            if end < 0:
                return False
            if end + 4 > MAX_HEAD_BYTES:  # one that came whole in a read or two as well
                raise Refused(HEAD_TOO_LARGE)
            self._plan_body(conn, end)
        if conn.chunk_at >= 0:
            return self._chunked_complete(conn)
        return len(conn.data) >= conn.wanted

    def _plan_body(self, conn: PendingConn, end: int) -> None:
        """Decide, from the head ending at ``end``, what of the body to wait for."""
        head = bytes(conn.data[:end])
        lines = head.split(b"\r\n")
        request_line = lines[0].split(b" ")
        upload = len(request_line) == 3 and is_upload(request_line[0], request_line[1])
        length: Optional[int] = None
        chunked = expect = malformed = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"expect":
                expect = True
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
                malformed = malformed or not chunked  # gunicorn's parser answers it
            elif name == b"content-length":
                malformed = malformed or not value.isdigit() or length is not None
                length = int(value) if value.isdigit() else None
        conn.head_end = conn.wanted = end + 4
        if malformed or (chunked and length is not None):
            return  # gunicorn's parser answers 400 (or 501) and closes: no body is read
        if upload:
            # The thread streams an upload (the app checks the token and the name first);
            # a small one with a Content-Length comes whole, as any other request.
            if not (expect or chunked) and length is not None and length <= self.preread_limit:
                conn.wanted += length
            return
        if length is not None and length > self.preread_limit:
            raise Refused(self._too_large())
        if expect and request_line[-1] == b"HTTP/1.1":
            # Answer it here, and drop it from the head: gunicorn would send a second one.
            kept = [line for line in lines if line.partition(b":")[0].strip().lower() != b"expect"]
            conn.data[:end] = b"\r\n".join(kept)
            conn.head_end = conn.wanted = len(b"\r\n".join(kept)) + 4
            with contextlib.suppress(OSError, ValueError):  # a client gone is read as gone
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            conn.chunk_at = conn.head_end
        elif length:
            conn.wanted += length

    def _chunked_complete(self, conn: PendingConn) -> bool:
        """Walk the chunked body read so far from where the last walk stopped; True once
        its last chunk and trailer section are in."""
        data = conn.data
        # Framing (size lines, extensions, trailers) may double a body, no more.
        if len(data) - conn.head_end > 2 * self.preread_limit + MAX_HEAD_BYTES:
            raise Refused(self._too_large())
        while True:
            if len(data) < conn.chunk_at:
                return False  # the rest of a chunk's data, and its CRLF, are to come
            if conn.chunk_crlf:
                if data[conn.chunk_at - 2 : conn.chunk_at] != b"\r\n":
                    raise Refused(self._bad_chunk("a chunk's data is not followed by CRLF"))
                conn.chunk_crlf = False
            line_end = data.find(b"\r\n", conn.chunk_at)
            longest = MAX_TRAILER_LINE if conn.in_trailers else MAX_CHUNK_SIZE_LINE
            if (line_end if line_end >= 0 else len(data)) - conn.chunk_at > longest:
                raise Refused(
                    self._bad_chunk(f"a line of the chunked body is over {longest} bytes")
                )
            if line_end < 0:
                return False
            line = bytes(data[conn.chunk_at : line_end])
            conn.chunk_at = line_end + 2
            if conn.in_trailers:
                if not line:
                    conn.wanted = conn.chunk_at
                    return True
                continue
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or not set(size) <= HEX:
                raise Refused(self._bad_chunk(f"{line[:40]!r} is not a chunk size in hex"))
            conn.decoded += int(size, 16)
            if conn.decoded > self.preread_limit:
                raise Refused(self._too_large())
            if int(size, 16) == 0:
                conn.in_trailers = True
            else:
                conn.chunk_at += int(size, 16) + 2
                conn.chunk_crlf = True

    def _too_large(self) -> Answer:
        limit = self.preread_limit
        # The same answer as the app's (request_guards), given before a thread is taken.
        return (
            413,
            "Content Too Large",
            "payload_too_large",
            f"the request body is over {limit} bytes, the limit for this endpoint "
            "(NSO_REPO_MAX_JSON_SIZE for JSON): send a smaller body; files are uploaded "
            "with PUT /api/v1/artifacts/<filename>",
            {"limit": limit},
        )

    @staticmethod
    def _bad_chunk(why: str) -> Answer:
        return (
            400,
            "Bad Request",
            "bad_request",
            f"the chunked request body is malformed: {why}; send a valid HTTP/1.1 chunked "
            "body, or the body with a Content-Length",
            None,
        )

    def _dispatch(self, conn: PendingConn) -> None:
        """Give the connection, with what was read of it, to a thread."""
        self._forget(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.initialized = True
        conn.data_ready = True
        # Only a GET with nothing after it may park: it is run again from these bytes.
        whole = conn.head_end == conn.wanted == len(conn.data) <= MAX_PARKED_HEAD
        conn.replay = bytes(conn.data) if whole and conn.data.startswith(b"GET ") else None
        conn.parser.unreader.unread(bytes(conn.data))
        conn.data = bytearray()
        conn.scanned = conn.head_end = conn.wanted = conn.decoded = 0
        conn.chunk_at = -1
        conn.chunk_crlf = conn.in_trailers = False
        conn.ready = True
        self.enqueue_req(conn)

    # -- deadlines ---------------------------------------------------------------------

    def murder_pending(self) -> None:
        """Runs every turn of the event loop (at least once a second): close the requests
        that did not arrive in time, and every one still coming when the worker stops."""
        super().murder_pending()
        self._let_through()
        now = time.monotonic()
        while self.deadlines and (self.deadlines[0][0] <= now or not self.alive):
            _, _, conn, parked = heapq.heappop(self.deadlines)
            if self.parked.get(conn) is parked:
                self._resume(conn)
        while self.lingering:
            sock, until = next(iter(self.lingering.items()))
            if until > now and self.alive:
                break
            self._unlinger(sock)
        while self.reading:
            conn = next(iter(self.reading))
            if conn.deadline > now and self.alive:
                break
            answer: Optional[Answer] = None
            if conn.data and self.alive:
                answer = (
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the request did not arrive within {self.request_timeout:g} s "
                    "(NSO_REPO_REQUEST_TIMEOUT): send the request head and its JSON body "
                    "without pausing",
                    None,
                )
            self._close(conn, answer)

    # -- parked requests -----------------------------------------------------------------

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.in_threads -= 1
        if not fs.cancelled() and fs.exception() is None and fs.result() is PARKED:
            self._park(conn)
        else:
            super().finish_request(conn, fs)
        self._let_through()

    def _park(self, conn: PendingConn) -> None:
        """Keep the connection of a parked request here until it is woken or due."""
        parked, conn.park = conn.park, None
        if parked is None:  # handle() returns PARKED only with it set: never parked blind
            self.nr_conns -= 1
            conn.close()
            return
        conn.sock.setblocking(False)
        conn.wake = partial(self.method_queue.defer, self._woken, conn, parked)
        self.parked[conn] = parked
        record(lambda m: m.waiting.set(len(self.parked)))
        heapq.heappush(self.deadlines, (parked.deadline, next(self.parks), conn, parked))
        if len(self.deadlines) > 2 * len(self.parked) + 1000:
            # Polls that left early (closed, woken) leave entries behind until their deadline:
            # drop them now and then, so the heap follows the parked polls, not their rate.
            self.deadlines = [e for e in self.deadlines if self.parked.get(e[2]) is e[3]]
            heapq.heapify(self.deadlines)
        # Readable while parked: the client closed (or sent what it should not have).
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._parked_readable, conn))
        if not self.alive or not parked.watch(conn.wake):
            self._resume(conn)

    def _woken(self, conn: PendingConn, parked: Parked) -> None:
        if self.parked.get(conn) is parked:  # not resumed, gone or parked again meanwhile
            self._resume(conn)

    def _unpark(self, conn: PendingConn) -> Optional[Parked]:
        parked = self.parked.pop(conn, None)
        if parked is not None:
            record(lambda m: m.waiting.set(len(self.parked)))
            if conn.wake is not None:
                parked.unwatch(conn.wake)
        self._unwatch(conn.sock)
        return parked

    def _resume(self, conn: PendingConn) -> None:
        """Run a parked request again, in a thread, with what it parked."""
        conn.resumed = self._unpark(conn)
        # A fresh parser: gunicorn's stops after a request that asked for `Connection:
        # close`, and would end the connection without an answer.
        conn.parser = None
        conn.data = bytearray(conn.replay or b"")
        conn.head_end = conn.wanted = len(conn.data)
        self._dispatch(conn)

    def _parked_readable(self, conn: PendingConn, _sock: Any) -> None:
        if conn not in self.parked:
            # Resumed earlier in this turn of the event loop, whose events were read before:
            # its socket is a thread's now, and not a byte of it is ours to read.
            return
        more = self._peek(conn)
        if more is not READ_NOTHING and self._unpark(conn) is not None:
            self._end_waiting(conn, more)

    @staticmethod
    def _peek(conn: PendingConn) -> Any:
        """What a waiting request's client sent: b"" (it ended its side), more bytes, None
        (reset), or READ_NOTHING (TLS records only: it still waits)."""
        try:
            return conn.sock.recv(1)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return READ_NOTHING
        except OSError:
            return None

    def _end_waiting(self, conn: PendingConn, more: Optional[bytes]) -> None:
        """Answer and close a parked or held-back request whose client ended its side, sent
        more, or is gone."""
        if more == b"":
            # End of what the client sends, its request whole: a half-close (shutdown of
            # its writing side) still waits for the answer, as in a thread, or the client
            # is gone (a restarting agent): the two look the same. It cannot stay parked
            # (its socket is readable for good), and is not run again (a step handed to a
            # client that is gone would count as an attempt): no work now, ask again.
            with contextlib.suppress(OSError, ValueError):  # best effort: it must not block
                conn.sock.send(HALF_CLOSED_ANSWER)
        elif more:
            # A request pipelined behind the parked one (HTTP/1.1 allows it): the parked one
            # gets its "no work now" and the connection closes (Connection: close), which
            # tells the client to send the unanswered one again; never a bare reset.
            self.log.debug("a waiting request's client sent more: answered, closing")
            with contextlib.suppress(OSError, ValueError):
                conn.sock.send(HALF_CLOSED_ANSWER)
        self.nr_conns -= 1
        conn.close(graceful=more is not None)
        # Its deadline entry stays in the heap until due: keep nothing big alive by it.
        conn.replay = conn.parser = None
        conn.data = bytearray()

    # -- in a thread ---------------------------------------------------------------------

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi: Callable[..., Any] = close_unless_body_read(self._parking(self.wsgi))

    def _parking(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """WSGI middleware: offer the app to park the request (repo_server/parking.py), hand
        it what it parked when it runs again, and turn a park into `Park`."""

        def parking(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            conn: Optional[PendingConn] = getattr(self.thread_conn, "conn", None)
            if conn is None:
                return app(environ, start_response)
            parks: list[Parked] = []
            # A request that cannot park (not a plain GET, a body, pipelined bytes, a large
            # head) is told there is no room: it must never wait in a thread here.
            room = conn.replay is not None and self.alive and len(self.parked) < self.max_parked

            def park(parked: Parked) -> None:
                parks.append(parked)
                environ[PARKED_NOW] = True

            environ[PARK] = park if room else None
            if conn.resumed is not None:
                environ[RESUMED], conn.resumed = conn.resumed, None
            answer = app(environ, start_response)
            if not parks:
                return answer
            if hasattr(answer, "close"):
                answer.close()
            raise Park(parks[-1])

        return parking

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        return PARKED if getattr(conn, "park", None) is not None else result

    def handle_request(self, req: Any, conn: PendingConn) -> Any:
        # The thread's reads of the rest of the body and its writes of the answer; the base
        # class set the socket blocking (no timeout) just before.
        conn.sock.settimeout(self.io_timeout)
        self.thread_conn.conn = conn
        try:
            return super().handle_request(req, conn)
        except Park as park:
            # Nothing was written: the answer comes when the request runs again.
            conn.park = park.parked
            return PARKED
        finally:
            self.thread_conn.conn = None
