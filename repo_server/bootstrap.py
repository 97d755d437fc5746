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
from repo_server.db import make_engine, make_sessionmaker


def prepare(settings: Optional[Settings] = None, out: TextIO = sys.stdout) -> Optional[str]:
    """Migrate; on an empty database print a new admin token once and return it."""
    settings = settings or load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            # An admin must be able to get in: a first `token create --role viewer` on an
            # empty folder, or revoking every admin token, must not lock everyone out.
            if has_active_admin(session):
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
