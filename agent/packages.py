"""Package files in ``/opt/ncs/packages`` and the links in ``/var/opt/ncs/packages``.

The guide's best practice: package files are kept in ``/opt/ncs/packages`` under names that
start with the release they were compiled for (``ncs-6.2-router-nc-1.0.2.tar.gz``), and the
load path ``/var/opt/ncs/packages`` holds only symbolic links to the set NSO should load.
Relinking builds the new set in a sibling folder and swaps it in with one rename, so NSO (or
a crash) never sees a half-built load path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gzip
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import defusedxml
import defusedxml.ElementTree as SafeET

from agent.errors import AgentError
from agent.fsutil import fsync_dir

PACKAGE_FILE = re.compile(r"^ncs-(\d+(?:\.\d+)+)-(.+)-(\d[\w.]*)\.tar\.gz$")
_NS = "{http://tail-f.com/ns/ncs-packages}"
META_FILE = "package-meta-data.xml"
META_MAX_BYTES = 1024 * 1024
# What reading a package for its metadata may take, whatever the file says: one read (a tar
# header, which tarfile reads whole, or the metadata file) and members in all. A package
# from a server in other hands with a 400 MiB pax header took 432 MiB of the host's memory.
READ_MAX_BYTES = 8 * 1024 * 1024
MEMBERS_MAX = 100_000
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class PackageName:
    """What a package file name says: ``ncs-<X.Y>-<name>-<version>.tar.gz``."""

    nso: str
    name: str
    version: str

    @classmethod
    def parse(cls, filename: str) -> Optional[PackageName]:
        match = PACKAGE_FILE.match(filename)
        return cls(*match.groups()) if match else None


class PackageMetaError(AgentError):
    """A package tarball that could be read more than one way, or with XML no package needs."""


class _ShortReads:
    """The unpacked package, refusing any one read over READ_MAX_BYTES (OSError)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > READ_MAX_BYTES:
            raise OSError(f"a read of {size} bytes: a tar header or file past {READ_MAX_BYTES}")
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _meta_member(path: Path, tar: tarfile.TarFile) -> Optional[bytes]:
    """The bytes of ``<top>/package-meta-data.xml``, the one file NSO reads.

    Exactly one top-level folder; the file directly inside it, a regular file, only once.
    Files of that name deeper down (``<top>/doc/package-meta-data.xml``) are not NSO's and
    are ignored: the catalog refuses them at upload, and a decoy read first is how another
    name reached the NSO CLI.
    """
    tops: set[str] = set()
    found: Optional[bytes] = None
    for count, member in enumerate(tar, start=1):
        if count > MEMBERS_MAX:
            raise PackageMetaError(
                f"{path.name} has more than {MEMBERS_MAX} members, which no NSO package has: "
                "refused"
            )
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if not parts:
            continue
        if ".." in parts:
            raise PackageMetaError(f"{path.name}: member {member.name!r} has '..': refused")
        tops.add(parts[0])
        if len(tops) > 1:
            raise PackageMetaError(
                f"{path.name} has more than one top-level folder ({', '.join(sorted(tops))}): "
                "a package holds exactly one folder; refused"
            )
        if parts[1:] != [META_FILE]:
            continue
        where = f"{parts[0]}/{META_FILE}"
        if found is not None:
            raise PackageMetaError(f"{path.name} has more than one {where}: refused")
        fh = tar.extractfile(member) if member.isfile() else None
        if fh is None or member.size > META_MAX_BYTES:
            raise PackageMetaError(
                f"{path.name}: {where} is not a regular file of at most {META_MAX_BYTES} bytes"
            )
        found = fh.read()
    return found


def read_meta(path: Path) -> Optional[tuple[str, str]]:
    """(name, version) from the tarball's ``<top>/package-meta-data.xml``; None when the file
    is no readable tarball or has no such member.

    Nothing is extracted: the file came from the server, but a package is still input. A
    package that could be read two ways, or whose metadata uses a DTD or entities (no
    package needs them; an entity can make the name anything), raises PackageMetaError.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _read_meta(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# Every member is read to find a second metadata file (about 0.5 s for a 12 MiB package
# of 3000 files), and the inventory asks at every heartbeat: answers are kept per file
# identity. Package files are never rewritten in place (store_file renames a new inode in).
@functools.lru_cache(maxsize=256)
def _read_meta(path: Path, *identity: int) -> Optional[tuple[str, str]]:
    try:
        with gzip.open(path, "rb") as unpacked:
            reader: Any = _ShortReads(unpacked)  # tarfile takes any object with these methods
            with tarfile.open(fileobj=reader, mode="r:") as tar:
                data = _meta_member(path, tar)
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return None
    if data is None:
        return None
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise PackageMetaError(
            f"{path.name}: {META_FILE} uses a DTD or entities ({type(exc).__name__}), which "
            "no NSO package needs: refused"
        ) from None
    except SafeET.ParseError as exc:
        raise PackageMetaError(f"{path.name}: {META_FILE} is not well-formed XML: {exc}") from None
    name = root.findtext(f"{_NS}name") or root.findtext("name")
    version = root.findtext(f"{_NS}package-version") or root.findtext("package-version")
    if name and version:
        return name.strip(), version.strip()
    return None


def package_identity(path: Path) -> tuple[str, str]:
    """(name, version) of a package file: its metadata, else what its file name says.

    For the inventory, which reports what is there; steps use ``trust.staged_identity``,
    which refuses what this tolerates.
    """
    try:
        meta = read_meta(path)
    except PackageMetaError:
        meta = None
    if meta:
        return meta
    parsed = PackageName.parse(path.name)
    if parsed:
        return parsed.name, parsed.version
    return path.name, ""


def current_links(load_dir: Path) -> dict[str, str]:
    """Entries of the load path: name -> link target (``""`` for an entry that is no link)."""
    if not load_dir.is_dir():
        return {}
    links = {}
    for entry in sorted(load_dir.iterdir()):
        links[entry.name] = os.readlink(entry) if entry.is_symlink() else ""
    return links


def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux renameat2(RENAME_EXCHANGE); False when the
    system cannot (not Linux, old kernel or libc, a file system without support)."""
    libc = _libc()
    func = getattr(libc, "renameat2", None) if libc else None
    if func is None:
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = func(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def _sweep(parent: Path, name: str) -> None:
    """Remove staging folders a killed agent left beside the load path (they are ours)."""
    for leftover in parent.glob(f".{name}.new-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def relink(load_dir: Path, targets: list[Path]) -> bool:
    """`relink_named` with each link named as its target."""
    wanted = {t.name: t for t in targets}
    if len(wanted) != len(targets):
        raise ValueError("two packages with the same file name in one set")
    return relink_named(load_dir, wanted)


def relink_named(load_dir: Path, links: dict[str, Path]) -> bool:
    """Make ``load_dir`` hold exactly these links (name -> target), atomically.

    Returns False when it already did (nothing changed). When ``load_dir`` is itself a link
    (``/var/opt/ncs`` on another volume, the load path linked elsewhere), the link is kept
    and the folder it points at is what gets replaced. Entries of the old load path that
    are not links (a package folder someone put there by hand) are not deleted: the old
    folder is kept beside it as ``<name>.replaced-<n>`` and the caller is told so by the log.
    """
    wanted = {name: str(target) for name, target in links.items()}
    if current_links(load_dir) == wanted:
        return False
    real = Path(os.path.realpath(load_dir)) if load_dir.is_symlink() else load_dir
    parent = real.parent
    parent.mkdir(parents=True, exist_ok=True)
    _sweep(parent, real.name)
    staging = parent / f".{real.name}.new-{os.getpid()}"
    staging.mkdir()
    for name, target in sorted(wanted.items()):
        os.symlink(target, staging / name)
    fsync_dir(staging)
    if not os.path.lexists(real):
        os.rename(staging, real)
        fsync_dir(parent)
        return True
    old_has_files = any(t == "" for t in current_links(real).values())
    if exchange(staging, real):
        retired = staging  # after the exchange the old set lives under the staging name
    else:
        # No atomic exchange: two renames. The window without a load path is one rename long,
        # and NSO is stopped while the upgrade relinks.
        retired = parent / f".{real.name}.old-{os.getpid()}"
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(real, retired)
        os.rename(staging, real)
    fsync_dir(parent)
    if old_has_files:
        n = 1
        while (parent / f"{real.name}.replaced-{n}").exists():
            n += 1
        os.rename(retired, parent / f"{real.name}.replaced-{n}")
    else:
        shutil.rmtree(retired)
    return True


def store_file(src: Path, store: Path) -> Path:
    """Put a verified file into the package store under its own name, atomically."""
    store.mkdir(parents=True, exist_ok=True)
    dest = store / src.name
    tmp = store / f".{src.name}.tmp-{os.getpid()}"
    try:
        os.replace(src, tmp)  # same file system: a rename
    except OSError:
        shutil.copyfile(src, tmp)
        src.unlink()
    os.replace(tmp, dest)
    fsync_dir(store)
    return dest
