"""Proving an ``ncs-backup`` archive before NSO is stopped.

``ncs-backup`` can exit 0 and still leave an unusable file (a full disk, a crash mid-write:
the simulator's ``backup-corrupt`` fault). The agent reads the archive back to its last byte
(gzip checks its CRC and length only at the end) and looks for the CDB files in it; a
backup that fails either check fails the job before NSO is touched.

The archive's inner layout is not documented upstream: any member whose path ends in
``cdb/<name>.cdb`` counts as a CDB file.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import StepFailed

_CDB_FILE = re.compile(r"(^|/)cdb/[^/]+\.cdb$")
CHUNK = 1 << 20


@dataclass
class Proof:
    members: int = 0
    bytes: int = 0
    cdb_files: list[str] = field(default_factory=list)

    def as_result(self) -> dict[str, object]:
        return {"members": self.members, "bytes": self.bytes, "cdb_files": self.cdb_files}


def prove(path: Path, shown_as: str) -> Proof:
    """Read every member of the archive to its end; raise StepFailed when it is unusable."""
    proof = Proof()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                proof.members += 1
                if member.isfile():
                    fh = tar.extractfile(member)
                    if fh is None:
                        raise tarfile.ReadError(f"{member.name} cannot be read")
                    read = 0
                    for chunk in iter(lambda fh=fh: fh.read(CHUNK), b""):  # type: ignore[misc]
                        read += len(chunk)
                    if read != member.size:
                        raise tarfile.ReadError(f"{member.name} is cut short")
                    proof.bytes += read
                    if _CDB_FILE.search(member.name):
                        proof.cdb_files.append(member.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise StepFailed(
            f"the backup {shown_as} does not read back whole ({exc}): it could not be restored. "
            "NSO was not stopped; check the free space under /var/opt/ncs/backups and retry"
        ) from None
    if not proof.cdb_files:
        raise StepFailed(
            f"the backup {shown_as} holds no CDB files (*.cdb under cdb/): it would restore no "
            "data. NSO was not stopped; check ncs-backup by hand and retry"
        )
    return proof
