"""The lock a running NSO holds on its CDB directory.

The daemon takes an exclusive ``flock`` on ``<cdb-dir>/ncs.lock`` when it opens CDB and keeps
it until it has shut down. ``ncs --cdb-compact``, ``ncs-backup --restore`` and a second daemon
take it without waiting and refuse while NSO holds it, so nothing rewrites or moves the files
under a live database. The kernel drops the lock with the process: a SIGKILLed daemon leaves
no stale lock behind. (The file name and the refusals are invented; see docs/nso-sim.md.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

LOCK_FILE = "ncs.lock"


class CdbLocked(Exception):
    def __init__(self, cdb_dir: Path, holder: Optional[int]) -> None:
        who = f"NSO (pid {holder})" if holder else "a running NSO"
        super().__init__(f"{cdb_dir} is in use by {who}")
        self.holder = holder


class CdbLock:
    def __init__(self, cdb_dir: Path) -> None:
        self.cdb_dir = cdb_dir
        self.path = cdb_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock now or raise CdbLocked; the holder's pid goes into the file."""
        self.cdb_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise CdbLocked(self.cdb_dir, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


@contextlib.contextmanager
def held(cdb_dir: Path) -> Iterator[None]:
    """Hold the lock for the duration of the block (raises CdbLocked when NSO has it)."""
    lock = CdbLock(cdb_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    except (OSError, ValueError):
        return None
