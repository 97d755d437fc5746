"""Downloads: local disk (Range, ETag, If-None-Match, HEAD) and S3 (302 to a presigned URL)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests

from tests.api.helpers import assert_error, put_file
from tests.factories import make_installer


@pytest.fixture
def published(live, tmp_path: Path) -> tuple[Path, str]:
    path = make_installer(tmp_path, "6.2", size=3 << 20)
    with path.open("r+b") as f:  # random tail so Range checks see distinct bytes
        f.seek(1 << 20)
        f.write(os.urandom(2 << 20))
    response = put_file(live.session("uploader"), live.url, path)
    assert response.status_code == 201, response.text
    return path, response.json()["sha256"]


def test_local_download_full_range_etag_head(live, published) -> None:
    path, digest = published
    data = path.read_bytes()
    # A reader: agents get only the blobs of their node's step (tests/upgrades/test_least_privilege.py).
    http = live.session("viewer")
    url = f"{live.url}/api/v1/blobs/{digest}"

    full = http.get(url)
    assert full.status_code == 200
    assert full.content == data
    assert full.headers["ETag"] == f'"{digest}"'
    assert full.headers["Accept-Ranges"] == "bytes"
    assert path.name in full.headers["Content-Disposition"]

    part = http.get(url, headers={"Range": "bytes=1048570-1048589"})
    assert part.status_code == 206
    assert part.content == data[1048570:1048590]
    assert part.headers["Content-Range"] == f"bytes 1048570-1048589/{len(data)}"

    tail = http.get(url, headers={"Range": f"bytes={len(data) - 100}-"})
    assert tail.status_code == 206 and tail.content == data[-100:]

    assert http.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    assert http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    head = http.head(url)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.content == b""

    unsatisfiable = http.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    assert unsatisfiable.json()["error"]["code"] == "range_not_satisfiable"


def test_download_needs_a_token_and_a_known_digest(live, published) -> None:
    _path, digest = published
    assert_error(
        live.session(None).get(f"{live.url}/api/v1/blobs/{digest}"), 401, "unauthenticated"
    )
    assert_error(
        live.session("viewer").get(f"{live.url}/api/v1/blobs/{'0' * 64}"), 404, "not_found"
    )
    assert_error(live.session("viewer").get(f"{live.url}/api/v1/blobs/not-hex"), 400, "bad_request")


@pytest.fixture
def s3_app(app_overrides, s3_server):
    app_overrides.update(s3_server.settings_overrides(s3_server.new_bucket()))
    return app_overrides


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_s3_download_redirects_to_presigned_url(s3_app, live, tmp_path: Path) -> None:
    path = make_installer(tmp_path, "6.2", size=2 << 20)
    response = put_file(live.session("uploader"), live.url, path)
    assert response.status_code == 201, response.text
    digest = response.json()["sha256"]
    url = f"{live.url}/api/v1/blobs/{digest}"
    # A reader: agents get only the blobs of their node's step (tests/upgrades/test_least_privilege.py).
    http = live.session("viewer")

    redirect = http.get(url, allow_redirects=False)
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert "X-Amz-Signature" in location
    # A plain HTTP client, no credentials: the presigned URL alone fetches the bytes.
    fetched = requests.get(location)
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == digest
    # Following the redirect in one go works too.
    assert http.get(url).content == path.read_bytes()

    head_redirect = http.head(url, allow_redirects=False)
    assert head_redirect.status_code == 302
    head = requests.head(head_redirect.headers["Location"])
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == path.stat().st_size
    # Signed for GET: the same URL used for another method is refused by S3.
    assert requests.head(location).status_code == 403
    assert requests.delete(location).status_code == 403
