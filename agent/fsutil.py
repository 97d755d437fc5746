"""File writes that a crash can never leave half done, and copies that prove themselves.

The agent runs as root on production hosts and is SIGKILLed by service managers, so every
file it writes goes to a temporary name beside its destination, is fsynced, renamed over
the destination, and the folder is fsynced: a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: Union[bytes, str],
    mode: Optional[int] = None,
    like: Optional[Path] = None,
) -> None:
    """Replace ``path`` with ``data`` in one rename. ``mode`` sets the permissions; ``like``
    copies permissions and ownership from that file (the one being replaced, usually)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if like is not None and like.exists():
            copy_owner_and_mode(like, Path(tmp))
        elif mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def copy_owner_and_mode(src: Path, dst: Path) -> None:
    st = os.stat(src)
    os.chmod(dst, st.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):  # only root may give files away
        os.chown(dst, st.st_uid, st.st_gid)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_hashed(src: Path, dst: Path, fsync: bool = True) -> tuple[str, int]:
    """Copy a file's bytes, mode and owner to ``dst``; (sha256, size) of what was read from
    ``src``. ``fsync=False`` for a copy of many files made durable at once (sync_filesystem)."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for chunk in iter(lambda: fin.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
            fout.write(chunk)
        fout.flush()
        if fsync:
            os.fsync(fout.fileno())
    copy_owner_and_mode(src, dst)
    return digest.hexdigest(), size


def sync_filesystem(path: Path) -> None:
    """Make everything written to the file system holding ``path`` durable: one syncfs(2)
    instead of an fsync per file (thousands of package files cost seconds of downtime)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
