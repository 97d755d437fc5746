"""Stream a request body to a temporary file, hashing and counting as it goes.

The size limit is enforced inside the loop, so an oversize body is cut off as soon as it
crosses the limit, never buffered whole. The temporary file lives in `Settings.tmp_dir`, on
the same disk as local storage, so storing it is a rename; it is removed on any failure.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

from werkzeug.exceptions import ClientDisconnected

from repo_server.errors import (
    BadRequest,
    ChecksumMismatch,
    InsufficientStorage,
    PayloadTooLarge,
    TruncatedBody,
)
from repo_server.storage.base import is_digest

CHUNK = 1 << 20


@dataclass
class Received:
    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def normalize_sha256(value: Optional[str]) -> Optional[str]:
    """A client-sent digest, lowercased; a malformed one is an error, not ignored."""
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not is_digest(value):
        raise BadRequest(
            "the sha256 the client sent is not 64 hexadecimal characters: "
            "send the output of 'sha256sum FILE' or leave it out",
            field="sha256",
        )
    return value


def check_declared_size(content_length: Optional[int], limit: int) -> None:
    if content_length is not None and content_length > limit:
        raise PayloadTooLarge(
            f"the upload is {content_length} bytes, over the limit of {limit} bytes "
            "(NSO_REPO_MAX_UPLOAD_SIZE)",
            limit=limit,
        )


def _readinto_of(stream: IO[bytes]) -> Callable[[memoryview], int]:
    """`stream.readinto`, or an equivalent for WSGI inputs that only have `read`."""
    if hasattr(stream, "readinto"):
        return stream.readinto

    def readinto(view: memoryview) -> int:
        chunk = stream.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    return readinto


def receive(
    stream: IO[bytes],
    tmp_dir: Path,
    *,
    limit: int,
    content_length: Optional[int] = None,
    expected_sha256: Optional[str] = None,
) -> Received:
    """Copy `stream` to a temp file; verify size and digest. The caller owns the result."""
    check_declared_size(content_length, limit)
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    readinto = _readinto_of(stream)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            while content_length is None or size < content_length:
                # Never ask for more than the declared rest: werkzeug's LimitedStream
                # mishandles a short read into a buffer larger than what remains.
                want = CHUNK if content_length is None else min(CHUNK, content_length - size)
                try:
                    n = readinto(view[:want])
                except (ClientDisconnected, OSError, ValueError) as exc:
                    # werkzeug says ClientDisconnected; gunicorn raises NoMoreData (OSError)
                    # or a parse error (ValueError-like) for a broken chunked body.
                    raise TruncatedBody(
                        f"the request body ended or broke after {size} bytes"
                        + (f" of {content_length}" if content_length is not None else "")
                        + f" ({exc.__class__.__name__}): upload the file again"
                    ) from None
                except Exception as exc:
                    if exc.__class__.__module__.startswith("gunicorn."):
                        raise TruncatedBody(
                            f"the request body is malformed after {size} bytes "
                            f"({exc.__class__.__name__}): upload the file again"
                        ) from None
                    raise
                if not n:
                    break
                size += n
                if size > limit:
                    raise PayloadTooLarge(
                        f"the upload passed the limit of {limit} bytes (NSO_REPO_MAX_UPLOAD_SIZE)",
                        limit=limit,
                    )
                digest.update(view[:n])
                try:
                    out.write(view[:n])
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise InsufficientStorage(
                            f"the server's disk is full ({tmp_dir}): ask an operator to free "
                            "space ('nso-repo gc') and upload again"
                        ) from None
                    raise
        if content_length is not None and size != content_length:
            raise TruncatedBody(
                f"received {size} bytes but Content-Length said {content_length}: "
                "upload the file again"
            )
        if size == 0:
            raise BadRequest("the upload is empty: send the file's bytes as the body")
        actual = digest.hexdigest()
        if expected_sha256 is not None and not hmac.compare_digest(actual, expected_sha256):
            raise ChecksumMismatch(
                f"the body's sha256 is {actual} but the client said {expected_sha256}: "
                "the file changed or was damaged in transit; upload it again",
                expected=expected_sha256,
                actual=actual,
            )
        return Received(path=path, sha256=actual, size=size)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
