"""Tar archives: reproducible ones for the builders, checked ones when reading."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import PurePosixPath
from typing import Union

# member path -> bytes, or (bytes, mode)
Files = dict[str, Union[bytes, tuple[bytes, int]]]


def reproducible_targz(files: Files) -> bytes:
    """A tar.gz of ``files`` with their parent folders, fixed mtimes and no owners, so the
    same input always gives the same bytes (the catalog treats a re-upload as a no-op)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = {str(p) for name in files for p in PurePosixPath(name).parents if str(p) != "."}
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, entry in sorted(files.items()):
            data, mode = entry if isinstance(entry, tuple) else (entry, 0o644)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


class UnsafeArchive(Exception):
    pass


def check_member(member: tarfile.TarInfo, where: str, allow_link: bool = False) -> None:
    """Regular files and folders only (and symlinks where ``allow_link``), no absolute paths,
    no ``..``."""
    if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
        raise UnsafeArchive(f"{where}: unsafe member {member.name!r}")
    if allow_link and member.issym():
        return
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"{where}: member {member.name!r} is not a file or folder")


def check_not_through_links(members: list[tarfile.TarInfo], where: str) -> None:
    """Refuse a member below a symlink of the same archive: extracting it would write
    wherever the link points."""
    links = {PurePosixPath(m.name) for m in members if m.issym()}
    for m in members:
        if any(parent in links for parent in PurePosixPath(m.name).parents):
            raise UnsafeArchive(f"{where}: member {m.name!r} lies below a symlink")
