"""The storage interface every backend implements.

Blobs are content-addressed: the key of a blob is its lowercase hex sha256 digest and the
backend lays it out as `ab/cd/abcdef...`. Callers hand over a finished, verified temporary
file; a backend never exposes a half-written blob under its final key.

Backends translate their vendor errors at this boundary: a missing blob is
`FileNotFoundError`, anything else the backend cannot do is `repo_server.errors.StorageError`.
Nothing outside `repo_server/storage/` imports botocore.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Optional, Protocol


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob; `modified` is timezone-aware UTC."""

    digest: str
    size: int
    modified: datetime


class Storage(Protocol):
    name: str

    def put_file(self, digest: str, source: Path) -> bool:
        """Store the verified file at `source` under `digest`.

        Returns True when the blob was newly created, False when it already existed (the
        source is then left alone). The source may be moved or consumed; callers delete it
        afterwards if it still exists.
        """
        ...

    def exists(self, digest: str) -> bool: ...

    def stat(self, digest: str) -> BlobInfo:
        """Size and modification time; FileNotFoundError when absent."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """A readable binary stream of the blob; FileNotFoundError when absent."""
        ...

    def delete(self, digest: str) -> None:
        """Remove the blob; a missing blob is not an error."""
        ...

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every blob the backend holds, for garbage collection and audits."""
        ...

    def local_path(self, digest: str) -> Optional[Path]:
        """The blob's file on local disk when the backend has one (for send_file), else None.

        Also None when the blob is absent; callers still check the file before sending it.
        """
        ...

    def presigned_url(self, digest: str, method: str, expires: int) -> Optional[str]:
        """A URL that lets an HTTP client `method` (GET or HEAD) the blob directly, or None
        when the backend cannot sign URLs (local disk)."""
        ...

    def check(self) -> None:
        """Raise StorageError when the backend is unreachable or misconfigured."""
        ...


DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def is_digest(text: str) -> bool:
    """True for a lowercase hex sha256 digest, the only shape a blob name may have."""
    return DIGEST_RE.fullmatch(text) is not None


def blob_key(digest: str) -> str:
    """The relative key of a blob: `ab/cd/<digest>`.

    Raises ValueError for anything that is not a digest: the key becomes a path or an object
    name, so a crafted value must never reach the filesystem or the bucket.
    """
    if not is_digest(digest):
        raise ValueError(f"not a lowercase hex sha256 digest: {digest!r}")
    return f"{digest[:2]}/{digest[2:4]}/{digest}"
