"""A small HTTP client for the server's API, used by the `nso-repo` client commands."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional
from urllib.parse import quote, urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8420"
CHUNK = 1 << 20


_NOT_JSON = object()  # an answer whose body is not JSON


class ApiError(Exception):
    """An error answer from the server, carrying its stable code and message."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{message} [{code}, HTTP {status}]")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class _ProgressReader:
    """A file wrapper that reports bytes read, so requests can stream it with a length."""

    def __init__(self, stream: BinaryIO, size: int, advance: Callable[[int], None]) -> None:
        self._stream = stream
        self._size = size
        self._advance = advance

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(CHUNK if n is None or n < 0 else max(n, CHUNK))
        self._advance(len(data))
        return data


def sha256_file(path: Path, advance: Optional[Callable[[int], None]] = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if advance:
                advance(len(chunk))
    return digest.hexdigest()


class RepoClient:
    def __init__(self, url: Optional[str] = None, token: Optional[str] = None) -> None:
        self.url = (url or os.environ.get("NSO_REPO_URL") or DEFAULT_URL).rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(
                0,
                "bad_url",
                f"{self.url!r} is not a server's address: give --url or NSO_REPO_URL as "
                f"http(s)://HOST:PORT, the server's root (e.g. {DEFAULT_URL})",
            )
        self.token = token or os.environ.get("NSO_REPO_TOKEN")
        self.http = requests.Session()
        if self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"

    def _check(self, response: requests.Response) -> Any:
        try:
            answer = response.json() if response.content else None
        except ValueError:
            answer = _NOT_JSON
        if response.status_code < 400 and answer is not _NOT_JSON:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise ApiError(
                response.status_code,
                error["code"],
                str(error.get("message", "")),
                error.get("details"),
            )
        status = response.status_code
        if answer is _NOT_JSON and (status < 400 or status in (404, 405, 501)):
            # Another web server at that address (nso-repo answers these in JSON): say
            # where to look, not its HTML.
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise ApiError(
                status,
                "not_nso_repo",
                f"{self.url} did not answer as nso-repo does (HTTP {status}, {kind}): check "
                f"--url or NSO_REPO_URL, the server's root (e.g. {DEFAULT_URL})",
            )
        if answer is _NOT_JSON:
            # A proxy's own page (502, 413...): the status is the news, not the page.
            raise ApiError(
                status,
                "http_error",
                f"HTTP {status} {response.reason} from {self.url}, not from nso-repo: a proxy "
                "or web server in front of it answered (the server behind it down, or a limit "
                "of the proxy's; docs/deployment.md)",
            )
        raise ApiError(response.status_code, "http_error", response.text[:200] or response.reason)

    def upload(
        self,
        path: Path,
        *,
        sha256: str,
        advance: Callable[[int], None] = lambda n: None,
    ) -> tuple[int, dict[str, Any]]:
        size = path.stat().st_size
        with path.open("rb") as f:
            response = self.http.put(
                f"{self.url}/api/v1/artifacts/{quote(path.name)}",
                data=_ProgressReader(f, size, advance),
                headers={
                    "Content-Type": "application/octet-stream",
                    "X-Checksum-SHA256": sha256,
                },
                timeout=(10, 3600),
            )
        return response.status_code, self._check(response)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any API call; answers are JSON, errors raise ApiError."""
        kwargs.setdefault("timeout", 60)
        return self._check(self.http.request(method, f"{self.url}{path}", **kwargs))

    def list_artifacts(self, **params: Any) -> dict[str, Any]:
        params = {k: v for k, v in params.items() if v is not None}
        return self._check(self.http.get(f"{self.url}/api/v1/artifacts", params=params, timeout=30))

    def get_artifact(self, filename: str) -> dict[str, Any]:
        return self._check(
            self.http.get(f"{self.url}/api/v1/artifacts/{quote(filename)}", timeout=30)
        )

    def delete_artifact(self, filename: str) -> dict[str, Any]:
        return self._check(
            self.http.delete(f"{self.url}/api/v1/artifacts/{quote(filename)}", timeout=30)
        )
