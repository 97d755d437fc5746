"""`nso-repo serve` keeps its secrets: the first admin token reaches a terminal once and no
log file ever; the data folder is 0700 and the database file 0600."""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.factories import make_installer
from tests.support.nso_repo import RepoServer
from tests.support.ports import free_port
from tests.support.processes import REPO, clean_env
from tests.support.waiting import wait_until

TOKEN = re.compile(r"nsr_[A-Za-z0-9_-]{20,}")


class TerminalServe:
    """`nso-repo serve` with its stdout and stderr on a pseudo-terminal, as when an
    operator starts it by hand: what it printed is in ``output``."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        master, slave = pty.openpty()
        self._master = master
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "repo_server.cli", "serve"),
                *("--port", str(self.port), "--data-dir", str(data_dir), "--workers", "1"),
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(
            self._healthy,
            60,
            message="nso-repo serve on a terminal did not start",
            details=lambda: self.output,
            ignoring=(requests.RequestException,),
        )

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # the terminal closed: every process holding it exited
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"nso-repo serve exited: {self.output}")
        return requests.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)
        self._reader.join(10)
        os.close(self._master)


def _use(url: str, token: str) -> None:
    """Requests that carry the token: through the access log and the app's logging."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    assert http.get(f"{url}/api/v1/tokens", timeout=30).status_code == 200
    assert http.get(f"{url}/api/v1/artifacts/no-such-file", timeout=30).status_code == 404


def _logs(folder: Path) -> str:
    """Every log file the servers wrote in ``folder``: the access log, and `serve.log` once a
    server ran without a terminal."""
    files = sorted(folder.glob("*.log"))
    assert folder / "access.log" in files, files  # never a vacuous check
    return "\n".join(p.read_text(errors="replace") for p in files)


def test_first_admin_token_goes_to_the_terminal_once_and_never_to_a_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = clean_env(PYTHONPATH=str(REPO), NSO_REPO_ACCESS_LOG=str(tmp_path / "access.log"))
    first = TerminalServe(data, env)
    try:
        shown = TOKEN.findall(first.output)
        assert len(shown) == 1, first.output
        admin = shown[0]
        _use(first.url, admin)
    finally:
        first.stop()
    assert admin not in _logs(tmp_path)

    # Started again, without a terminal (systemd, docker, `> server.log`): no token at all.
    again = RepoServer(data, env)
    again.admin = admin
    again.start()
    try:
        _use(again.url, admin)
    finally:
        again.stop()
    assert not TOKEN.search(again.output()), again.output()
    assert again.log.parent == tmp_path and admin not in _logs(tmp_path)

    # A later start on a terminal prints no token either: an active admin exists.
    later = TerminalServe(data, env)
    try:
        assert not TOKEN.search(later.output), later.output
    finally:
        later.stop()


def test_first_start_without_a_terminal_prints_no_token_but_how_to_make_one(
    tmp_path: Path,
) -> None:
    server = RepoServer(tmp_path / "data")
    server.start()  # RepoServer then makes its admin token with `nso-repo token create`
    try:
        output = server.output()
        assert not TOKEN.search(output), output
        assert "nso-repo token create --role admin" in output
        assert server.api("GET", "/tokens").status_code == 200
        assert server.admin not in _logs(tmp_path)
    finally:
        server.stop()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_folder_is_0700_and_database_0600_even_when_loosened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = RepoServer(data)
    old_umask = os.umask(0o022)  # what a default shell hands the server
    try:
        server.start()
        assert _mode(data) == 0o700
        assert _mode(data / "nso-repo.db") == 0o600
        assert _mode(data / "tmp") == 0o700
        assert _mode(data / "blobs") == 0o700
        _upload_checks_temp_file(server, data / "tmp", tmp_path)
        blob_files = [p for p in (data / "blobs").rglob("*") if p.is_file()]
        assert blob_files
        for path in [*blob_files, *data.glob("nso-repo.db*")]:
            assert not _mode(path) & 0o022, f"{path} is {oct(_mode(path))}"
        server.stop()

        for path, loose in ((data, 0o755), (data / "tmp", 0o777), (data / "blobs", 0o755)):
            path.chmod(loose)
        (data / "nso-repo.db").chmod(0o644)
        server.start()
        assert (_mode(data), _mode(data / "nso-repo.db")) == (0o700, 0o600)
        assert (_mode(data / "tmp"), _mode(data / "blobs")) == (0o700, 0o700)
        output = server.output()
        assert f"data folder {data} was mode 0755: set it to 0700" in output
        assert f"database file {data / 'nso-repo.db'} was mode 0644: set it to 0600" in output
    finally:
        os.umask(old_umask)
        server.stop()


def _upload_checks_temp_file(server: RepoServer, tmp_dir: Path, folder: Path) -> None:
    """Start a slow upload, check the temp file it streams into is 0600, then finish it."""
    # Larger than a JSON body, which the server reads whole before the app sees it.
    installer = make_installer(folder, "6.2", size=4 << 20)
    body = installer.read_bytes()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            (
                f"PUT /api/v1/artifacts/{installer.name} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {server.admin}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + body[:1024]
        )
        spooled = wait_until(lambda: list(tmp_dir.glob("upload-*")), 30)
        assert [_mode(p) for p in spooled] == [0o600]
        time.sleep(0.1)
        sock.sendall(body[1024:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split()[1] == b"201", answer[:400]


def test_a_terminal_that_is_kept_gets_no_token_when_told_never(tmp_path: Path) -> None:
    # `docker run -t` gives the server a terminal whose output `docker logs` keeps: the image
    # sets NSO_REPO_FIRST_ADMIN_TOKEN=never.
    env = clean_env(PYTHONPATH=str(REPO), NSO_REPO_FIRST_ADMIN_TOKEN="never")
    server = TerminalServe(tmp_path / "data", env)
    try:
        assert not TOKEN.search(server.output), server.output
        assert "nso-repo token create --role admin" in server.output
    finally:
        server.stop()
    assert "NSO_REPO_FIRST_ADMIN_TOKEN=never" in (REPO / "Dockerfile").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "repo_server.cli", "serve", "--data-dir", str(tmp_path / "d")],
        env=clean_env(PYTHONPATH=str(REPO), NSO_REPO_FIRST_ADMIN_TOKEN="sometimes"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "NSO_REPO_FIRST_ADMIN_TOKEN='sometimes'" in bad.stderr + bad.stdout
