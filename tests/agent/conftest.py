"""Fixtures for the agent's tests: an agent configuration pointed at a simulated host's root
(hosts come from the ``tests.support.sim_hosts`` plugin), and a small real HTTP file server
with ``Range`` support and knobs for the failures a download must survive.

Nothing is mocked: hosts are real processes reached over real SSH, files come over real
HTTP. Every process and server a test starts is stopped at teardown.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from agent.config import Config
from agent.download import Artifact, Downloader
from agent.journal import Journal
from agent.steps.context import StepContext
from agent.steps.registry import run_step
from tests.support.sim_hosts import SimHost


@dataclass
class FileServer:
    """Serves files from ``dir`` at ``/files/<name>``; ``/redirect/<name>`` answers 302 to
    ``redirect_to`` (another origin), or to ``location`` verbatim when set; ``/status/<code>``
    answers that status with a body of its own. Records each request's headers."""

    dir: Path
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Close the connection after this many body bytes, for the next N requests.
    cut_after: Optional[int] = None
    cuts_left: int = 0
    honour_range: bool = True
    redirect_to: str = ""
    location: str = ""
    body: bytes = b"remote body: a proxy's page or an object store's XML error"

    def artifact(self, path: Path, via: str = "files") -> Artifact:
        data = path.read_bytes()
        return Artifact(
            path.name, hashlib.sha256(data).hexdigest(), f"/{via}/{path.name}", len(data)
        )

    def add(self, path: Path) -> Artifact:
        target = self.dir / path.name
        target.write_bytes(path.read_bytes())
        return self.artifact(target)


def _handler(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append({"path": self.path, "headers": dict(self.headers.items())})
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind == "redirect":
                self.send_response(302)
                location = server.location or f"{server.redirect_to}/files/{name}?X-Sig=abc"
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if kind == "status":
                self.send_response(int(name))
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)
                return
            path = server.dir / name.split("?", 1)[0]
            if kind != "files" or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and server.honour_range:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if server.cut_after is not None and server.cuts_left > 0:
                server.cuts_left -= 1
                self.wfile.write(body[: server.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    fs = FileServer(folder)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fs))
    httpd.daemon_threads = True
    fs.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield fs
    httpd.shutdown()
    httpd.server_close()


def agent_config(host: SimHost, **overrides: Any) -> Config:
    """The agent's configuration for a simulated host: its root, its CLI, short timeouts."""
    cfg = Config(
        server_url="http://127.0.0.1:9",
        root=str(host.root),
        cli_host=host.address,
        cli_port=host.cli_port,
        cli_user="admin",
        cli_password="admin",
        start_timeout=120,
        stop_timeout=60,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@dataclass
class Driver:
    """Runs steps directly (no server), as the runner would, carrying the job's context."""

    config: Config
    downloader: Optional[Downloader] = None
    job_id: int = 7
    context: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    last: Optional[StepContext] = None
    # Told each step's progress, as the runner is: a test can act at a point of a step.
    on_progress: Optional[Callable[[int, str], None]] = None

    def step(
        self, name: str, params: Optional[dict[str, Any]] = None, step_id: Optional[int] = None
    ) -> dict[str, Any]:
        self.seq += 1
        step = {
            "id": step_id or 100 + self.seq,
            "job_id": self.job_id,
            "seq": self.seq,
            "attempt": 1,
            "name": name,
            "params": params or {},
            "context": dict(self.context),
            "job": {"id": self.job_id, "kind": "upgrade", "source_version": "6.1"},
        }
        journal = Journal(self.config.journal_file)
        journal.begin(step)
        ctx = StepContext(self.config, step, journal, self.downloader, self.on_progress)
        self.last = ctx
        result = run_step(ctx)
        journal.clear()
        self.context.update(result)
        return result


@pytest.fixture
def driver() -> Any:
    def factory(config: Config, file_server: Optional[FileServer] = None) -> Driver:
        downloader = Downloader(file_server.url) if file_server is not None else None
        return Driver(config, downloader)

    return factory
