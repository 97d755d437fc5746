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

Bodies of more than NSO_REPO_MAX_JSON_SIZE (uploads) and chunked bodies are streamed by the
thread, as before. The worker speaks HTTP/1.1 (with or without gunicorn's TLS).
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import ssl
import time
from collections import defaultdict
from functools import partial
from typing import Any, Optional

from gunicorn import http
from gunicorn import sock as gsock
from gunicorn.workers.gthread import TConn, ThreadWorker

MAX_HEAD_BYTES = 64 << 10
READ_CHUNK = 64 << 10


class PendingConn(TConn):
    """A connection and what the event loop has read of its next request."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data = bytearray()
        self.scanned = 0  # bytes of data searched for the end of the head
        self.wanted = 0  # bytes of data that make the request whole, once the head is in
        self.deadline = 0.0
        self.address = self.client[0] if isinstance(self.client, tuple) else str(self.client)
        self.handshaking = False
        self.ready = False  # the request is all there: the next enqueue goes to a thread


class GuardedThreadWorker(ThreadWorker):
    """`gthread` whose threads only ever see requests that have fully arrived."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from repo_server import gunicorn_settings
        from repo_server.config import load_settings

        self.request_timeout = gunicorn_settings.request_timeout
        self.io_timeout = gunicorn_settings.io_timeout
        self.max_pending_per_address = gunicorn_settings.max_pending_per_address
        self.preread_limit = load_settings().max_json_bytes
        self.tls: Optional[ssl.SSLContext] = None
        # Connections whose request is being read, oldest first (dicts keep insertion
        # order, and every deadline is start + the same timeout); and the same by address.
        self.reading: dict[PendingConn, None] = {}
        self.reading_from: defaultdict[str, dict[PendingConn, None]] = defaultdict(dict)

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

    # -- connections enter the event loop, not a thread --------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = PendingConn(self.cfg, client_sock, client_addr, listener.getsockname())
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

    def enqueue_req(self, conn: PendingConn) -> None:
        """The base class calls this for a kept-alive connection that became readable, and
        for one holding read-ahead bytes: read its next request here first."""
        if conn.ready:
            conn.ready = False
            super().enqueue_req(conn)
            return
        if conn.parser is not None:
            conn.data.extend(conn.parser.unreader.take_buffered())
        self._start_reading(conn)

    def _start_reading(self, conn: PendingConn) -> None:
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.request_timeout
        while len(self.reading_from[conn.address]) >= self.max_pending_per_address:
            self._close(next(iter(self.reading_from[conn.address])))
        self.reading[conn] = None
        self.reading_from[conn.address][conn] = None
        if self._complete(conn):
            self._dispatch(conn)
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _forget(self, conn: PendingConn) -> None:
        self.reading.pop(conn, None)
        mine = self.reading_from.get(conn.address)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.reading_from[conn.address]
        # Not registered when dispatched from read-ahead, or already gone.
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _close(self, conn: PendingConn, answer: Optional[tuple[int, str, str, str]] = None) -> None:
        self._forget(conn)
        if answer is not None:
            status, reason, code, message = answer
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError, ValueError):  # best effort: it must not block
                conn.sock.send(head.encode() + body)
        self.nr_conns -= 1
        conn.close()

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
            if self._complete(conn):
                self._dispatch(conn)
                return
            if not conn.wanted and len(conn.data) > MAX_HEAD_BYTES:
                self._close(
                    conn,
                    (
                        431,
                        "Request Header Fields Too Large",
                        "headers_too_large",
                        f"the request head is over {MAX_HEAD_BYTES} bytes: send fewer or "
                        "shorter headers",
                    ),
                )
                return

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
        """Whether the head has come, and the body too when the event loop should wait for
        it: a Content-Length up to the JSON limit, and no `Expect: 100-continue` (such a
        client sends its body only once the server answers)."""
        if not conn.wanted:
            # Look only at what came since the last look: a head sent a byte at a time
            # must not cost a scan of everything before each byte.
            end = conn.data.find(b"\r\n\r\n", max(0, conn.scanned - 3))
            conn.scanned = len(conn.data)
            if end < 0:
                return False
            conn.wanted = end + 4 + self._body_to_wait_for(bytes(conn.data[:end]))
        return len(conn.data) >= conn.wanted

    def _body_to_wait_for(self, head: bytes) -> int:
        length: Optional[int] = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"expect" or name == b"transfer-encoding":
                return 0  # the thread reads the body
            if name == b"content-length":
                if not value.isdigit() or length is not None:
                    return 0  # malformed or repeated: gunicorn's parser answers 400
                length = int(value)
        if length is None or length > self.preread_limit:
            return 0
        return length

    def _dispatch(self, conn: PendingConn) -> None:
        """Give the connection, with what was read of it, to a thread."""
        self._forget(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.initialized = True
        conn.data_ready = True
        conn.parser.unreader.unread(bytes(conn.data))
        conn.data = bytearray()
        conn.scanned = conn.wanted = 0
        conn.ready = True
        self.enqueue_req(conn)

    # -- deadlines ---------------------------------------------------------------------

    def murder_pending(self) -> None:
        """Runs every turn of the event loop (at least once a second): close the requests
        that did not arrive in time, and every one still coming when the worker stops."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading:
            conn = next(iter(self.reading))
            if conn.deadline > now and self.alive:
                break
            answer = None
            if conn.data and self.alive:
                answer = (
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the request did not arrive within {self.request_timeout:g} s "
                    "(NSO_REPO_REQUEST_TIMEOUT): send the request head and its JSON body "
                    "without pausing",
                )
            self._close(conn, answer)

    # -- in a thread ---------------------------------------------------------------------

    def handle_request(self, req: Any, conn: TConn) -> Any:
        # The thread's reads of the rest of the body and its writes of the answer; the base
        # class set the socket blocking (no timeout) just before.
        conn.sock.settimeout(self.io_timeout)
        return super().handle_request(req, conn)
