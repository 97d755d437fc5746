"""`nso-repo` as a user runs it: real server processes (gunicorn), real HTTP, the CLI client."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.factories import make_installer, make_package, make_patch_bundle
from tests.support.nso_repo import RepoServer
from tests.support.ports import free_port
from tests.support.processes import clean_env

NSO_REPO = [sys.executable, "-m", "repo_server.cli"]


def serve(data_dir: Path, env: dict[str, str]) -> RepoServer:
    server = RepoServer(data_dir, env, workers=2)
    server.start()
    return server


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return clean_env(NSO_REPO_ACCESS_LOG=str(tmp_path / "access.log"))


@pytest.fixture
def served(tmp_path: Path, base_env: dict[str, str]) -> Iterator[RepoServer]:
    server = serve(tmp_path / "data", base_env)
    yield server
    server.stop()


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*NSO_REPO, *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"nso-repo {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_serve_warns_of_several_workers_on_sqlite(served: RepoServer) -> None:
    # Wake-ups are in-process on SQLite: a second worker's agents wait out their polls.
    assert "2 worker processes on SQLite" in served.output()


def test_upload_ls_rm_gc_through_the_cli(served: RepoServer, tmp_path: Path, base_env) -> None:
    data_dir = str(tmp_path / "data")
    created = run(
        "token",
        "create",
        "--role",
        "uploader",
        "--name",
        "ci",
        "--data-dir",
        data_dir,
        env=base_env,
    )
    token = created.stdout.strip()
    assert re.fullmatch(r"nsr_[A-Za-z0-9_-]{40,}", token), created.stdout
    env = {**base_env, "NSO_REPO_URL": served.url, "NSO_REPO_TOKEN": token}

    files = [
        make_installer(tmp_path, "6.2"),
        make_package(tmp_path, "router-nc", "1.0.2", "6.2"),
        make_patch_bundle(tmp_path, "6.2", "PSIRT-9"),
    ]
    uploaded = json.loads(run("upload", "--json", *map(str, files), env=env).stdout)
    assert [r["result"] for r in uploaded] == ["stored", "stored", "stored"]
    again = json.loads(run("upload", "--json", str(files[1]), env=env).stdout)
    assert again[0]["result"] == "unchanged"

    packages = json.loads(run("ls", "packages", "--nso", "6.2", "--json", env=env).stdout)
    assert [p["filename"] for p in packages] == [files[1].name]
    table = run("ls", "installers", env=env).stdout
    assert "6.2" in table and files[0].name in table

    bad = tmp_path / "ncs-6.2-router-nc-9.9.tar.gz"
    bad.write_bytes(b"not gzip")
    failed = run("upload", str(bad), env=env, check=False)
    assert failed.returncode == 1
    assert "gzip" in failed.stderr

    denied = run("rm", files[0].name, env=env, check=False)
    assert denied.returncode == 1 and "admin" in denied.stderr
    admin_token = run(
        "token", "create", "--role", "admin", "--name", "ops", "--data-dir", data_dir, env=base_env
    )
    admin_env = {**env, "NSO_REPO_TOKEN": admin_token.stdout.strip()}
    assert "deleted" in run("rm", files[0].name, env=admin_env).stdout
    report = json.loads(
        run("gc", "--dry-run", "--json", "--data-dir", data_dir, env=base_env).stdout
    )
    assert report["removed"] == []  # inside the 24 h protection window
    past_window = {**base_env, "NSO_REPO_GC_PROTECT_SECONDS": "0"}
    report = json.loads(run("gc", "--json", "--data-dir", data_dir, env=past_window).stdout)
    assert len(report["removed"]) == 1

    unreachable = run(
        "ls", env={**env, "NSO_REPO_URL": f"http://127.0.0.1:{free_port()}"}, check=False
    )
    assert unreachable.returncode == 1 and "nso-repo serve" in unreachable.stderr


def test_production_shape_postgresql_and_s3(
    tmp_path: Path, base_env, postgres_server, s3_server
) -> None:
    """gunicorn with several workers, PostgreSQL for state and S3 for blobs, as the README says."""
    bucket = s3_server.new_bucket()
    env = {
        **base_env,
        "NSO_REPO_DATABASE_URL": postgres_server.create_database(),
        "NSO_REPO_STORAGE": "s3",
        "NSO_REPO_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "NSO_REPO_S3_BUCKET": bucket,
        "NSO_REPO_S3_ACCESS_KEY_ID": s3_server.access_key,
        "NSO_REPO_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    server = serve(tmp_path / "data", env)
    try:
        token = server.admin
        client_env = {**env, "NSO_REPO_URL": server.url, "NSO_REPO_TOKEN": token}
        path = make_package(tmp_path, "router-nc", "1.0.2", "6.2")
        stored = json.loads(run("upload", "--json", str(path), env=client_env).stdout)[0][
            "artifact"
        ]
        blob = requests.get(
            f"{server.url}{stored['download_url']}", headers={"Authorization": f"Bearer {token}"}
        )
        assert blob.history and blob.history[0].status_code == 302
        assert blob.content == path.read_bytes()
        assert not any((tmp_path / "data").rglob(stored["sha256"]))  # bytes live in S3 only
    finally:
        server.stop()


def test_broken_bodies_through_gunicorn_are_4xx(served: RepoServer, tmp_path: Path) -> None:
    """gunicorn reports a cut chunked body differently from the dev server: still a 400."""
    token = served.admin
    name = "nso-6.2.linux.x86_64.installer.bin"
    for body in (b"400\r\n#!/bin/sh\n", b"zz\r\nnot hex\r\n"):  # cut mid-chunk / bad size
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall(
                (
                    f"PUT /api/v1/artifacts/{name} HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + body
            )
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = answer.split(b"\r\n", 1)[0]
        assert status.split()[1] == b"400", answer[:400]
        assert b"truncated_body" in answer
    assert not list((tmp_path / "data" / "tmp").iterdir())


def test_token_commands_away_from_the_servers_database_refuse_and_create_nothing(
    served: RepoServer, tmp_path: Path, base_env
) -> None:
    elsewhere = tmp_path / "not-the-server"
    for args in (
        ("token", "create", "--role", "admin", "--name", "lost"),
        ("token", "list"),
        ("token", "revoke", "1"),
        ("gc", "--dry-run"),
    ):
        refused = run(*args, "--data-dir", str(elsewhere), env=base_env, check=False)
        assert refused.returncode == 1, refused.stdout
        assert refused.stdout == ""  # no token a script could take for a good one
        assert f"no database at {elsewhere.resolve() / 'nso-repo.db'}" in refused.stderr
        assert "--data-dir" in refused.stderr and "nso-repo serve" in refused.stderr
    assert not elsewhere.exists()

    # On the server's own folder: the token alone on stdout, where it went on stderr, and
    # the server takes it.
    data_dir = tmp_path / "data"
    made = run(
        "token",
        "create",
        "--role",
        "viewer",
        "--name",
        "ops",
        "--data-dir",
        str(data_dir),
        env=base_env,
    )
    assert re.fullmatch(r"nsr_\S+\n", made.stdout)
    assert f"stored in {data_dir.resolve() / 'nso-repo.db'}" in made.stderr
    answer = requests.get(
        f"{served.url}/api/v1/artifacts",
        headers={"Authorization": f"Bearer {made.stdout.strip()}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def test_a_url_that_is_not_an_nso_repo_gets_told_where_to_look(tmp_path: Path) -> None:
    """`--url` without a scheme, and a web server that is not nso-repo (HTML answers, 200
    or an error): one line that names the URL to fix, never the page or a traceback."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<!DOCTYPE html><html><body>welcome</body></html>"
            # A proxy's error page for one route: nso-repo down behind it.
            status = 502 if "patch-rollouts" in self.path else 200
            self.send_response(status if self.command == "GET" else 501)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    other = f"http://127.0.0.1:{httpd.server_address[1]}"
    env = clean_env(NSO_REPO_TOKEN="nsr_" + "x" * 43)
    try:
        for url, command in (
            (other, ("ls",)),  # 200 with HTML
            (other, ("patch", "rollout", "nso-6.2.3-patch-CSC1.tar.gz", "--node", "a")),  # 501
            ("127.0.0.1:8420", ("ls",)),
            ("ftp://127.0.0.1:8420", ("ls",)),
            (other, ("patch", "ls")),  # 502: the proxy's page, not a wrong URL
        ):
            ran = run(*command, env={**env, "NSO_REPO_URL": url}, check=False)
            assert ran.returncode == 1, (url, command, ran.stdout)
            assert "Traceback" not in ran.stderr, ran.stderr
            assert "DOCTYPE" not in ran.stderr and "welcome" not in ran.stderr, ran.stderr
            if command == ("patch", "ls"):
                assert "HTTP 502" in ran.stderr and "proxy" in ran.stderr, ran.stderr
            else:
                assert "NSO_REPO_URL" in ran.stderr, ran.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
