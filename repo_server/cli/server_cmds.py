"""Commands that run on the server host: serve, db, token, gc."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from repo_server.auth.models import ACTOR_MAX
from repo_server.cli.common import data_dir_option, handle_errors, print_json
from repo_server.config import load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Roles are repeated here, not imported from the models, so that client commands such as
# `nso-repo ls` start without loading SQLAlchemy and Alembic; a test keeps the two equal.
ROLES = ("admin", "uploader", "operator", "viewer", "agent")


def _server_database() -> str:
    """The database the server uses, as these settings name it: refused when it is a SQLite
    file that does not exist. Run away from the server's data folder, a token command used
    to create a new, empty database there and print a token the server then rejected."""
    settings = load_settings()
    url = settings.resolved_database_url
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        raise click.ClickException(
            f"no database at {path}: this command works on the server's own database, and "
            "there is none there. Run it on the server host with the server's data folder "
            "(--data-dir, or NSO_REPO_DATA_DIR; NSO_REPO_DATABASE_URL for PostgreSQL). A new "
            "server makes its database on its first start ('nso-repo serve'), or now with "
            "'nso-repo db upgrade --data-dir DIR'"
        )
    return url


def _sqlite_path(url: str) -> Optional[Path]:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def _where(url: str) -> str:
    """The database for a person to read: the file, or the URL without its password."""
    from sqlalchemy.engine import make_url

    path = _sqlite_path(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


@contextmanager
def local_session() -> Iterator[Session]:
    """A session on the server's database (refused when it does not exist: see
    _server_database), migrated first so an older database works."""
    from repo_server import migrate
    from repo_server.datadir import secure_data_dir
    from repo_server.db import make_engine, make_sessionmaker

    _server_database()
    settings = load_settings()
    secure_data_dir(settings)
    migrate.upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


@click.command()
@click.option("--host", help="Address to listen on (default: from NSO_REPO_BIND, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default: from NSO_REPO_BIND, 8420).")
@click.option(
    "--workers",
    type=int,
    help="Gunicorn worker processes (default 1 on SQLite; on PostgreSQL one per CPU, 2 to 4).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="Serve https with this PEM certificate chain (default: $NSO_REPO_TLS_CERT).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False),
    help="The certificate's private key, PEM (default: $NSO_REPO_TLS_KEY).",
)
@data_dir_option
@handle_errors
def serve(
    host: Optional[str],
    port: Optional[int],
    workers: Optional[int],
    tls_cert: Optional[str],
    tls_key: Optional[str],
) -> None:
    """Run the server with gunicorn (SQLite and local disk unless configured otherwise).

    On first start it migrates the database and prints an admin token once, on a terminal
    only; started without one (systemd, Docker, output to a file) it prints the command that
    makes one instead, so no token ever lands in a log.
    """
    from repo_server import gunicorn_settings

    settings = load_settings()  # fail here, with a clear message, on a bad environment
    options = gunicorn_options(host, port, workers)
    if options["workers"] > 1 and settings.resolved_database_url.startswith("sqlite"):
        # Wake-ups are in-process on SQLite (repo_server/fleet/notify.py).
        click.echo(
            f"warning: {options['workers']} worker processes on SQLite: an agent waiting on "
            "one is not woken by work created on another and waits out its poll (up to "
            "60 s) each step. Run one worker on SQLite (--workers 1), or PostgreSQL for "
            "several (docs/production.md)",
            err=True,
        )
    tls_cert = tls_cert or gunicorn_settings.certfile
    tls_key = tls_key or gunicorn_settings.keyfile
    if tls_cert or tls_key:  # https served by gunicorn itself (docs/deployment.md)
        _check_tls(tls_cert, tls_key)
        options.update(
            certfile=tls_cert, keyfile=tls_key, ssl_context=gunicorn_settings.ssl_context
        )

    def load() -> Any:
        from repo_server.wsgi import app

        return app

    scheme = "https" if tls_cert else "http"
    data_dir = load_settings().data_dir

    def when_ready(_server: Any) -> None:
        # Said once the database is migrated and the socket bound, not before a refusal.
        click.echo(f"nso-repo listening on {scheme}://{options['bind']} (data: {data_dir})")

    run_gunicorn({**options, "when_ready": when_ready}, load)


def gunicorn_options(
    host: Optional[str], port: Optional[int], workers: Optional[int]
) -> dict[str, Any]:
    """gunicorn's settings as `serve` runs it (without TLS): bench/idle_poll.py serves its
    hello-world baseline with the same."""
    from repo_server import gunicorn_settings

    options: dict[str, Any] = {
        name: getattr(gunicorn_settings, name)
        for name in (
            "worker_class",
            "threads",
            "worker_connections",
            "timeout",
            "graceful_timeout",
            "keepalive",
            "limit_request_line",
            "accesslog",
            "errorlog",
            "loglevel",
            "on_starting",
            "child_exit",
            "post_worker_init",
            "control_socket_disable",
        )
    }
    bind_host, _, bind_port = gunicorn_settings.bind.rpartition(":")
    host = host or bind_host or "127.0.0.1"
    port = port or int(bind_port or 8420)
    options["bind"] = f"{host}:{port}"
    options["workers"] = workers or gunicorn_settings.workers
    return options


def run_gunicorn(options: dict[str, Any], load: Callable[[], Any]) -> None:
    """Run gunicorn with ``options`` on the WSGI app ``load()`` returns (in each worker)."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return load()

    Server().run()


def _check_tls(cert: Optional[str], key: Optional[str]) -> None:
    """Refuse before gunicorn starts (its workers would die one by one) a certificate and
    key that cannot serve."""
    if not (cert and key):
        raise click.UsageError(
            "--tls-cert and --tls-key go together (or NSO_REPO_TLS_CERT and NSO_REPO_TLS_KEY): "
            "give the PEM certificate chain and its private key"
        )
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb") as fh:
                text = fh.read(1 << 20)
        except OSError as exc:
            raise click.ClickException(
                f"cannot read {option} {path}: {exc.strerror}; give the path of a PEM file "
                "that this user can read"
            ) from None
        marker = b"-----BEGIN CERTIFICATE-----" if option == "--tls-cert" else b"PRIVATE KEY-----"
        if marker not in text:
            what, tool = ("certificate", "x509") if option == "--tls-cert" else ("key", "pkey")
            raise click.ClickException(
                f"{option} {path} holds no PEM {what} (a '-----BEGIN ...' block): give the "
                f"PEM file, or convert it with 'openssl {tool} -in {path} -out FILE.pem'"
            )
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or exc
        if why == "KEY_VALUES_MISMATCH":
            why = f"the key in {key} is not the key of the certificate in {cert}"
        elif why in ("PEM_LIB", "BAD_DECRYPT") or "PEM lib" in str(why):
            why = (
                f"the certificate in {cert} or the key in {key} cannot be loaded (a damaged "
                "PEM block, or a key encrypted with a passphrase: the server cannot ask for "
                f"one; 'openssl pkey -in {key} -out server.key' writes it unencrypted)"
            )
        raise click.ClickException(
            f"cannot serve https with --tls-cert {cert} and --tls-key {key}: {why}; give a "
            "PEM certificate chain and the unencrypted private key that matches it, both "
            "readable by this user"
        ) from None


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@data_dir_option
@handle_errors
def db_upgrade() -> None:
    """Apply pending migrations (serve does this on start too)."""
    from repo_server import migrate
    from repo_server.datadir import secure_data_dir

    settings = load_settings()
    secure_data_dir(settings)
    url = settings.resolved_database_url
    migrate.upgrade(url)
    click.echo(f"database at revision {migrate.current_revision(url)}")


@click.group()
def token() -> None:
    """Create, list and revoke API tokens (on the server host, straight in the database)."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the token may do.")
@click.option("--name", required=True, help="Who or what uses it, e.g. 'ci' or 'alice'.")
@data_dir_option
@handle_errors
def token_create(role: str, name: str) -> None:
    """Create a token and print only the token, so scripts can capture it."""
    from repo_server.auth import service as auth_service

    with local_session() as session:
        _token, secret = auth_service.create_token(session, name=name, role=role, actor=cli_actor())
    click.echo(secret)
    # Standard error: scripts capture the token alone from standard output.
    click.echo(
        f"token {name!r} ({role}) stored in {_where(load_settings().resolved_database_url)}",
        err=True,
    )


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@data_dir_option
@handle_errors
def token_list(as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from repo_server.auth import service as auth_service

    with local_session() as session:
        tokens = auth_service.list_tokens(session)
    rows = [
        {
            "id": t.id,
            "name": t.name,
            "role": t.role,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
            "active": t.active,
        }
        for t in tokens
    ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        state = "active" if row["active"] else "revoked"
        click.echo(f"{row['id']:>4}  {row['role']:<9} {row['name']:<24} {state}")


@token.command("revoke")
@click.argument("token_id", type=int)
@data_dir_option
@handle_errors
def token_revoke(token_id: int) -> None:
    """Revoke a token by id; it stops working at once."""
    from repo_server.auth import service as auth_service

    with local_session() as session:
        revoked = auth_service.revoke_token(session, token_id, actor=cli_actor())
    click.echo(f"revoked token {revoked.id} ({revoked.name})")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@data_dir_option
@handle_errors
def gc(dry_run: bool, as_json: bool) -> None:
    """Remove blobs no live artifact references, once past the protection window."""
    from repo_server.catalog.gc import collect_garbage
    from repo_server.storage import make_storage

    settings = load_settings()
    with local_session() as session:
        report = collect_garbage(
            session,
            make_storage(settings),
            protect_seconds=settings.gc_protect_seconds,
            actor=cli_actor(),
            tmp_dir=settings.tmp_dir,
            dry_run=dry_run,
        )
    if as_json:
        print_json(asdict(report))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {len(report.removed)} blobs, {len(report.orphans_removed)} orphan files and "
        f"{report.temp_files_removed} stale upload temp files, {report.bytes_freed} bytes; "
        f"{report.kept_recent} kept inside the protection window"
    )


def cli_actor() -> str:
    """Who runs a server command on the host, as the audit names it (within ACTOR_MAX)."""
    return f"cli:{os.environ.get('USER', 'root')}"[:ACTOR_MAX]
