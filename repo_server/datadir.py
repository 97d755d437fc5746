"""The data folder holds the SQLite database (token digests, the audit log), upload temp
files and local blobs: only the server's user may enter it.

Folders are made 0700 and the SQLite file 0600 before anything is written, and a folder or
file found looser (group or other bits) is tightened with a log line. What is created under
the folders later (temp files are 0600, blobs read-only) is out of other users' reach
through them; SQLite gives its -wal and -shm files the database file's mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Optional

from sqlalchemy.engine import make_url

from repo_server.config import ConfigError, Settings

log = logging.getLogger(__name__)

PRIVATE = 0o077  # group and other bits


def secure_data_dir(settings: Settings) -> None:
    """Create the data, upload and (local storage) blob folders 0700 and the SQLite file
    0600, or tighten them."""
    _private(settings.data_dir, "data folder", folder=True)
    _private(settings.tmp_dir, "upload folder", folder=True)
    if settings.storage == "local":
        _private(settings.resolved_storage_dir, "blob folder", folder=True)
    database = sqlite_file(settings.resolved_database_url)
    if database is not None and database.parent.is_dir():
        _private(database, "database file", folder=False)
        for suffix in ("-wal", "-shm", "-journal"):
            companion = database.with_name(database.name + suffix)
            if companion.exists():
                _private(companion, "database file", folder=False)


def sqlite_file(url: str) -> Optional[Path]:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).absolute()


def _private(path: Path, what: str, *, folder: bool) -> None:
    wanted = 0o700 if folder else 0o600
    try:
        if folder:
            path.mkdir(mode=wanted, parents=True, exist_ok=True)
        else:
            # An empty file is an empty SQLite database: create it with its mode, so the
            # database is never readable by others, not even for a moment.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, wanted))
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & PRIVATE:
            path.chmod(mode & ~PRIVATE)
            log.warning(
                "%s %s was mode %04o: set it to %04o (only the server's user may read it)",
                what,
                path,
                mode,
                mode & ~PRIVATE,
            )
    except OSError as exc:
        raise ConfigError(
            f"cannot make the {what} {path} private ({exc.strerror}): as its owner run "
            f"'chmod {oct(wanted)[2:]} {path}', or point the server at a folder its user owns"
        ) from None
