"""Resumable, verified downloads of artifacts.

Bytes go to ``<dest>.part``; an interrupted download resumes with ``Range: bytes=N-`` (the
server's local storage and S3 both honour it). The finished file is checked against the
sha256 (and size) the server announced, compared with ``hmac.compare_digest``, and only then
renamed to its name: a file under its final name is always a verified one.

The server answers blob downloads with a 302 to a presigned S3 URL when it stores blobs in S3.
Redirects are followed here, by hand, so the node token goes only to the server's own origin:
a presigned URL carries its own signature, and forwarding our bearer token to the object
store would both leak it and make S3 refuse the request (two auth mechanisms). Only http(s)
redirects are followed, never from https down to http, at most MAX_REDIRECTS of them
(agent/transport.py). Reading stops at the announced size: a server that sends more is cut
off and refused, so a download never fills the disk. No remote body reaches a message: a
step's message goes back to the server, and an error page may hold anything.

A small blob (at most INLINE_MAX_BYTES) may come inside the step, base64 in the reference's
``content_base64``: it is written to ``<dest>.part`` and checked the same way, with no
request at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from agent.client import TRANSIENT, USER_AGENT, Backoff, status_text
from agent.errors import ChecksumMismatch, DownloadError
from agent.transport import CaFile, check_server_url, opener, redact, refusal, tls_failure

CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# The largest blob a step may carry inside it (the server's repo_server/upgrades/inline_blobs).
INLINE_MAX_BYTES = 64 << 10


@dataclass
class Artifact:
    """What a step's params say about one file: ``{"filename", "sha256", "size", "url"}``."""

    filename: str
    sha256: str
    url: str
    size: Optional[int] = None
    # The blob itself, when the step carried it (``content_base64``): checked as a download.
    content: Optional[bytes] = field(default=None, repr=False)

    @classmethod
    def from_params(cls, data: dict[str, object]) -> Artifact:
        filename = str(data.get("filename") or "")
        if not filename or "/" in filename or filename.startswith("."):
            raise DownloadError(f"refusing artifact file name {filename!r}: not a plain file name")
        sha = str(data.get("sha256") or "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise DownloadError(f"{filename}: the step gave no valid sha256 ({sha!r})")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            # Reading stops at the announced size: without one, a server could fill the disk.
            raise DownloadError(f"{filename}: the step gave no valid size ({size!r})")
        content = _inline_content(filename, data.get("content_base64"), size)
        return cls(filename, sha, str(data.get("url") or ""), size, content)


def _inline_content(filename: str, encoded: object, size: int) -> Optional[bytes]:
    """The blob a step carried, decoded; None when it carried none."""
    if encoded is None:
        return None
    # Base64 is 4/3 of the bytes: a longer string is refused before it is decoded.
    if not isinstance(encoded, str) or len(encoded) > 4 * (INLINE_MAX_BYTES // 3 + 1):
        raise DownloadError(
            f"{filename}: the step carried the blob in a form this agent does not take "
            f"(content_base64 must be base64 of at most {INLINE_MAX_BYTES} bytes)"
        )
    try:
        content = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise DownloadError(f"{filename}: the step's content_base64 is not base64") from None
    if len(content) != size:
        raise DownloadError(
            f"{filename}: the step carried {len(content)} bytes and announced {size}"
        )
    return content


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, sha256: str, size: Optional[int] = None) -> bool:
    """Whether ``path`` exists and holds exactly the announced bytes."""
    try:
        if size is not None and path.stat().st_size != size:
            return False
        return hmac.compare_digest(sha256_file(path), sha256)
    except FileNotFoundError:
        return False


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class Downloader:
    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        ca_file: CaFile = None,
        backoff: Optional[Backoff] = None,
        timeout: float = 60.0,
        allow_insecure_http: bool = False,
    ) -> None:
        check_server_url(base_url, allow_insecure_http)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.ca_file = ca_file
        self.allow_insecure_http = allow_insecure_http
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self._opener = opener(ca_file)

    def fetch(
        self,
        artifact: Artifact,
        dest: Path,
        progress: Optional[Callable[[int, Optional[int]], None]] = None,
    ) -> Path:
        """Download ``artifact`` to ``dest`` (verified), resuming and retrying as needed.

        An existing verified ``dest`` is kept as is: running this twice downloads once.
        """
        if verified(dest, artifact.sha256, artifact.size):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        self._check_room(artifact, part)
        delays = self.backoff.delays()
        attempt = 0
        restarted = False
        while True:
            resumed_from = part.stat().st_size if part.exists() else 0
            try:
                self._transfer(artifact, part, progress)
            except TRANSIENT as exc:
                if attempt >= len(delays):
                    raise DownloadError(
                        f"{artifact.filename}: download failed after {attempt + 1} tries: {exc}; "
                        f"the partial file {part} is kept and the next attempt resumes it"
                    ) from None
                self.backoff.sleep(delays[attempt])
                attempt += 1
                continue
            if verified(part, artifact.sha256, artifact.size):
                os.replace(part, dest)
                return dest
            part.unlink()
            # A resumed file may have been spliced from two different blobs; one clean
            # download settles it. A fresh download that mismatches is refused outright.
            if resumed_from and not restarted:
                restarted = True
                continue
            # Not the sha256 of what came: a server in other hands could redirect here to a
            # host only this one reaches, and learn from it what that host serves.
            raise ChecksumMismatch(
                f"{artifact.filename}: the file's sha256 does not match the announced "
                f"{artifact.sha256}; the file was deleted and not used. Check the artifact "
                "on the server (it may be corrupt in storage) and retry the job"
            )

    @staticmethod
    def _check_room(artifact: Artifact, part: Path) -> None:
        """Refuse, before a byte is fetched, a file that cannot fit: the announced size is
        the server's word, and a huge one would fill the host's disk (NSO's too) before the
        sha256 could refuse it."""
        have = part.stat().st_size if part.exists() else 0
        need = (artifact.size or 0) - have
        free = shutil.disk_usage(part.parent).free
        if need > free:
            raise DownloadError(
                f"{artifact.filename}: the step announces {artifact.size} bytes and only "
                f"{free} are free in {part.parent}: nothing was downloaded. Free space there "
                "(or check the artifact's size in the catalog), then retry the job"
            )

    def _transfer(
        self,
        artifact: Artifact,
        part: Path,
        progress: Optional[Callable[[int, Optional[int]], None]],
    ) -> None:
        """Append the missing bytes to ``part``; returns when the server has sent them all."""
        if artifact.content is not None:
            with part.open("wb") as fh:  # the step carried it: the checks are fetch()'s
                fh.write(artifact.content)
                fh.flush()
                os.fsync(fh.fileno())
            return
        have = part.stat().st_size if part.exists() else 0
        if artifact.size is not None and have >= artifact.size:
            if have > artifact.size:
                part.unlink()
                have = 0
            else:
                return
        url = urllib.parse.urljoin(self.base_url + "/", artifact.url or "")
        refused = refusal(self.base_url, url, self.allow_insecure_http)
        if not refused and not _same_origin(url, self.base_url):
            # The server names its own blobs (/api/v1/blobs/...); storage elsewhere is
            # reached by its redirect. A step naming another host is not the server's.
            refused = (
                f"refusing a download from {redact(url)}: a step's file comes from the server "
                f"({redact(self.base_url)}), not from another host"
            )
        for _ in range(MAX_REDIRECTS + 1):
            if refused:
                raise DownloadError(f"{artifact.filename}: {refused}")
            req = urllib.request.Request(url, method="GET")
            req.add_header("User-Agent", USER_AGENT)
            if have:
                req.add_header("Range", f"bytes={have}-")
            if self.token and _same_origin(url, self.base_url):
                req.add_unredirected_header("Authorization", f"Bearer {self.token}")
            try:
                resp = self._opener.open(req, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                    target = urllib.parse.urljoin(url, exc.headers["Location"])
                    refused = refusal(url, target, self.allow_insecure_http, redirect=True)
                    url = target
                    exc.close()
                    continue
                if exc.code == 416 and have:
                    # Nothing past what we hold: the part is complete (or longer than the
                    # blob); verification decides.
                    exc.close()
                    return
                exc.close()  # its body is never read: it is not ours to repeat
                if exc.code >= 500:
                    raise ConnectionError(f"{status_text(exc.code)} from {redact(url)}") from None
                raise DownloadError(
                    f"{artifact.filename}: {status_text(exc.code)} from {redact(url)}"
                ) from None
            except urllib.error.URLError as exc:
                untrusted = tls_failure(exc, url, self.ca_file)
                if untrusted:  # the same certificate comes back on every retry
                    raise DownloadError(f"{artifact.filename}: {untrusted}") from None
                raise
            with resp:
                mode = "ab"
                if have and resp.status == 206:
                    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != have:
                        raise DownloadError(
                            f"{artifact.filename}: the server answered Range bytes={have}- "
                            f"with Content-Range {resp.headers.get('Content-Range', '')[:80]!r}"
                        )
                elif have:
                    mode, have = "wb", 0  # the server ignored Range: start over
                total = artifact.size
                with part.open(mode) as fh:
                    while total is None or have < total:
                        want = CHUNK if total is None else min(CHUNK, total - have)
                        block = resp.read(want)
                        if not block:
                            break
                        fh.write(block)
                        have += len(block)
                        if progress is not None:
                            progress(have, total)
                    fh.flush()
                    os.fsync(fh.fileno())
                if total is not None and have >= total and resp.read(1):
                    part.unlink()
                    raise DownloadError(
                        f"{artifact.filename}: {redact(url)} sent more than the announced "
                        f"{total} bytes; cut off and refused, nothing kept. Check the "
                        "artifact on the server and any proxy in between, then retry the job"
                    )
                length = resp.headers.get("Content-Length", "")
                length = length if re.fullmatch(r"[0-9]{1,20}", length) else ""  # not echoed
                if total is not None and have < total:
                    # The connection closed early: resume on the next try.
                    raise ConnectionError(
                        f"connection closed after {have} of {total} bytes"
                        + (f" (Content-Length {length})" if length else "")
                    )
            return
        raise DownloadError(
            f"{artifact.filename}: more than {MAX_REDIRECTS} redirects from "
            f"{redact(self.base_url)}; check the server's storage settings (a redirect loop)"
        )
