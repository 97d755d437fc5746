"""First-start work: migrate the database and create the first admin token.

Run once by `nso-repo serve` and by gunicorn's master (`on_starting`), never by a worker, so
several workers do not race to migrate.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from repo_server import migrate
from repo_server.auth.service import create_token, has_active_admin
from repo_server.config import Settings, load_settings
from repo_server.datadir import secure_data_dir
from repo_server.db import make_engine, make_sessionmaker


def prepare(settings: Optional[Settings] = None, out: TextIO = sys.stdout) -> Optional[str]:
    """Migrate; with no active admin token, make one and print it once if ``out`` is a
    terminal, and return it. Otherwise print how to make one: output that is not a
    terminal (systemd's journal, `docker logs`, `> server.log`) is kept, and a token in it
    would be readable by whoever reads the logs."""
    settings = settings or load_settings()
    secure_data_dir(settings)
    url = settings.resolved_database_url
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            # An admin must be able to get in: a database whose only tokens are not an
            # admin's, or revoking every admin token, must not lock everyone out.
            if has_active_admin(session):
                return None
            # B105 below: "never" is the setting's choice, not a password.
            never = settings.first_admin_token == "never"  # nosec B105
            if never or not _is_terminal(out):
                out.write(_make_one_yourself(settings))
                out.flush()
                return None
            _token, secret = create_token(session, name="admin", role="admin", actor="bootstrap")
    finally:
        engine.dispose()
    out.write(
        "\nNo active admin token: created one. It is shown only this once; keep it safe:\n\n"
        f"    {secret}\n\n"
        "Use it with: export NSO_REPO_TOKEN=<token>\n\n"
    )
    out.flush()
    return secret


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _make_one_yourself(settings: Settings) -> str:
    data_dir = "" if settings.database_url else f" --data-dir {settings.data_dir}"
    return (
        "\nNo active admin token. None is printed here: this output is not a terminal and "
        "may be kept in a log.\nMake one on this host, with the server's environment:\n\n"
        f"    nso-repo token create --role admin --name NAME{data_dir}\n\n"
    )
