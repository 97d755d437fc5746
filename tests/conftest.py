"""Shared fixtures: a migrated database (SQLite and real PostgreSQL), the app, a live HTTP
server on a free port, and tokens for every role.

The fixtures every test folder shares come from the plugins in tests/support/: PostgreSQL
and SeaweedFS are real servers, simulated NSO hosts are real processes.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from repo_server import migrate
from repo_server.app import create_app
from repo_server.auth.models import ROLES
from repo_server.auth.service import create_token
from repo_server.context import AppState

# The agent's Python 3.9 run does not load this file (--confcutdir): it names the plugins
# its tests need with -p (Makefile, test-agent-py39).
pytest_plugins = [
    "tests.support.postgres",
    "tests.support.s3",
    "tests.support.storage",
    "tests.support.sim_hosts",
    "tests.support.sshd",
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per session; each test gets a copy (migrations run once)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_server: Any) -> str:
    """A migrated template database; each test clones it with CREATE DATABASE ... TEMPLATE."""
    url = postgres_server.create_database("nso_template")
    migrate.upgrade(url)
    return "nso_template"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "nso-repo.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server = request.getfixturevalue("postgres_server")
    template = request.getfixturevalue("postgres_template")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield server.url(name)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app_overrides(data_dir: Path, database_url: str) -> dict[str, Any]:
    """Settings for the app under test; tests may add to it before `app` is built."""
    return {"data_dir": data_dir, "database_url": database_url}


@pytest.fixture
def app(app_overrides: dict[str, Any]) -> Iterator[Any]:
    application = create_app(app_overrides)
    yield application
    application.extensions["nso_repo"].close()


@pytest.fixture
def app_state(app: Any) -> AppState:
    return app.extensions["nso_repo"]


@dataclass
class LiveServer:
    url: str
    tokens: dict[str, str] = field(default_factory=dict)

    def session(self, role: str | None = None) -> requests.Session:
        """A requests session sending the token of `role` (None: no token)."""
        http = requests.Session()
        if role is not None:
            http.headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return http


@pytest.fixture
def tokens(app_state: AppState) -> dict[str, str]:
    """A token for every role, made through the same service the API uses."""
    made = {}
    with app_state.sessions() as session:
        for role in ROLES:
            _token, secret = create_token(session, name=f"test-{role}", role=role, actor="test")
            made[role] = secret
    return made


@pytest.fixture
def live(app: Any, tokens: dict[str, str]) -> Iterator[LiveServer]:
    """The app behind a real threaded HTTP server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LiveServer(url=f"http://127.0.0.1:{server.server_port}", tokens=tokens)
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(params=["local", "s3"])
def storage_backend(request: pytest.FixtureRequest, app_overrides: dict[str, Any]) -> str:
    """Run a test against local disk and against a real S3 server (SeaweedFS)."""
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        app_overrides.update(s3.settings_overrides(s3.new_bucket()))
    return str(request.param)
