"""Blobs as read-only files under one folder: `<root>/ab/cd/<digest>`.

The embedded default. Durability matters more than speed here: a blob is fsynced before it
gets its final name and the folder is fsynced after, so after a crash a blob is either
complete under its name or absent, never half there.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Optional

from repo_server.errors import StorageError
from repo_server.storage.base import BlobInfo, blob_key, is_digest

BLOB_MODE = 0o444

# Filesystems without hard links (some FUSE and network mounts) answer with one of these;
# the blob is then moved with os.replace instead.
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _device(path: Path) -> int:
    return path.stat().st_dev


def _is_hex_pair(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


class LocalStorage:
    name = "local"

    def __init__(self, root: Path, *, tmp_dir: Optional[Path] = None, create: bool = True) -> None:
        """`tmp_dir` is where uploads are spooled; `check()` verifies it shares the disk.

        `create` makes the root folder so a fresh data dir works without a setup step.
        """
        self.root = Path(root)
        self.tmp_dir = tmp_dir
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the blob folder {self.root}: {exc.strerror}; create it and "
                    "make it writable by the server, or point NSO_REPO_STORAGE_DIR elsewhere"
                ) from None

    def _path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def put_file(self, digest: str, source: Path) -> bool:
        path = self._path(digest)
        if path.exists():
            return False
        source = Path(source)
        try:
            return self._put(digest, source, path)
        except FileNotFoundError:
            if not source.exists():
                raise
            raise StorageError(f"could not place blob {digest} under {self.root}: retry") from None
        except OSError as exc:
            raise StorageError(
                f"cannot store blob {digest} under {self.root}: {exc.strerror}; check free "
                "space and that the server's user can write there"
            ) from None

    def _put(self, digest: str, source: Path, path: Path) -> bool:
        # Make the bytes durable and the file read-only before it gets a visible name; the
        # mtime becomes "stored at", which the garbage collector's protection window reads.
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        original_mode = source.stat().st_mode & 0o7777
        os.chmod(source, BLOB_MODE)
        os.utime(source)
        created = False
        try:
            # A concurrent delete() may prune the fresh parent folders; go round again then.
            for attempt in range(5):
                self._make_parents(path.parent)
                try:
                    created = self._place(source, path)
                    break
                except FileNotFoundError:
                    if attempt == 4 or not source.exists():
                        raise
        finally:
            if source.exists():
                # Not consumed (blob existed, error, or copied across filesystems): the
                # caller still owns the source, so give it back as it was.
                os.chmod(source, original_mode)
        if created:
            _fsync_dir(path.parent)
        return created

    def _place(self, source: Path, path: Path) -> bool:
        """Give `source` the name `path`; False when a blob is already there.

        A hard link never replaces an existing name, so of two uploads of the same bytes
        racing here exactly one reports that it created the blob.
        """
        try:
            os.link(source, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return self._place_copy(source, path)
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            if path.exists():
                return False
            os.replace(source, path)
            return True
        source.unlink()
        return True

    def _place_copy(self, source: Path, path: Path) -> bool:
        """The source is on another filesystem: copy it next to the blob, then rename.

        The copy's name starts with a dot and is not a digest, so iter_blobs never reports a
        half-copied file, and only a complete, fsynced copy is renamed into place.
        """
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, BLOB_MODE)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                if path.exists():
                    return False
                os.replace(tmp, path)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _make_parents(self, folder: Path) -> None:
        """Create `ab/cd` folders, fsyncing each parent so the new entries survive a crash."""
        missing = []
        current = folder
        while not current.is_dir() and current != self.root:
            missing.append(current)
            current = current.parent
        for created in reversed(missing):
            try:
                created.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(created.parent)

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def stat(self, digest: str) -> BlobInfo:
        return self._info(digest, os.stat(self._path(digest)))

    @staticmethod
    def _info(digest: str, st: os.stat_result) -> BlobInfo:
        modified = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
        return BlobInfo(digest=digest, size=st.st_size, modified=modified)

    def open(self, digest: str) -> BinaryIO:
        return open(self._path(digest), "rb")

    def delete(self, digest: str) -> None:
        path = self._path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # Prune `ab/cd` and `ab` when empty; a folder another upload just filled stays.
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def iter_blobs(self) -> Iterator[BlobInfo]:
        # Only names that fit the layout count: stray files (editor backups, temp files a
        # crashed tool left) must never look like blobs to the garbage collector.
        try:
            tops = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for top in tops:
            if not (_is_hex_pair(top.name) and top.is_dir(follow_symlinks=False)):
                continue
            for sub in sorted(os.scandir(top.path), key=lambda e: e.name):
                if not (_is_hex_pair(sub.name) and sub.is_dir(follow_symlinks=False)):
                    continue
                for entry in sorted(os.scandir(sub.path), key=lambda e: e.name):
                    name = entry.name
                    if not (is_digest(name) and name[:2] == top.name and name[2:4] == sub.name):
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    yield self._info(name, st)

    def local_path(self, digest: str) -> Optional[Path]:
        path = self._path(digest)
        return path if path.is_file() else None

    def presigned_url(self, digest: str, method: str, expires: int) -> Optional[str]:
        return None

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(
                f"blob folder {self.root} does not exist or is not a folder: create it "
                "(mkdir -p) or set NSO_REPO_STORAGE_DIR to an existing folder"
            )
        # os.access lies for root, so prove writability by creating a file.
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".check-"):
                pass
        except OSError as exc:
            raise StorageError(
                f"blob folder {self.root} is not writable ({exc.strerror}): give the server's "
                "user write access to it or set NSO_REPO_STORAGE_DIR to a writable folder"
            ) from None
        tmp_dir = self.tmp_dir
        if tmp_dir is not None and tmp_dir.is_dir() and _device(tmp_dir) != _device(self.root):
            raise StorageError(
                f"upload folder {tmp_dir} and blob folder {self.root} are on different "
                "filesystems, so a finished upload cannot be moved into place with a rename: "
                "keep NSO_REPO_STORAGE_DIR on the same disk as NSO_REPO_DATA_DIR"
            )
