"""Request bodies are bounded before they are parsed: a small limit on JSON routes
(NSO_REPO_MAX_JSON_SIZE), large bodies only on the upload routes, which stream with their own
limit. A 300 MiB JSON body without a token used to grow a worker to about 1 GB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import make_installer
from tests.support.abuse import (
    MIB,
    children,
    chunked,
    json_string_body,
    send_request,
    status_kib,
)
from tests.support.nso_repo import RepoServer
from tests.support.processes import REPO, clean_env

HUGE = 300 * MIB
# The worker's peak RSS may grow this much while it refuses a huge body (it grew ~1 GB).
MEMORY_BOUND_KIB = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoServer]:
    env = clean_env(PYTHONPATH=str(REPO), NSO_REPO_MAX_JSON_SIZE="1M")
    repo = RepoServer(tmp_path_factory.mktemp("body-limits") / "data", env=env)
    repo.start()
    try:
        yield repo
    finally:
        repo.stop()


def _worker(server: RepoServer) -> int:
    assert server.process.process is not None
    (worker,) = children(server.process.process.pid)
    return worker


def _assert_too_large(answer, limit: int) -> None:
    assert answer.status == 413, answer.body[:500]
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large", error
    assert str(limit) in error["message"] and "NSO_REPO_MAX_JSON_SIZE" in error["message"]
    assert error["details"]["limit"] == limit


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_huge_json_body_without_a_token_is_refused_before_it_is_read(
    server: RepoServer, framing: str
) -> None:
    worker = _worker(server)
    hwm_before = status_kib(worker, "VmHWM")
    headers = {"Content-Type": "application/json"}
    body = json_string_body("enrollment_token", HUGE)
    if framing == "content-length":
        headers["Content-Length"] = str(HUGE)
    else:
        headers["Transfer-Encoding"] = "chunked"
        body = chunked(body)
    answer = send_request(server.port, "POST", "/api/v1/agent/enroll", body, headers)
    _assert_too_large(answer, MIB)
    growth = status_kib(worker, "VmHWM") - hwm_before
    assert growth < MEMORY_BOUND_KIB, f"the worker's peak RSS grew {growth} KiB"
    assert server.healthy()


def test_the_limit_is_the_setting_and_applies_with_a_token(server: RepoServer) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {server.admin}"}
    for size, refused in ((MIB - 1024, False), (MIB + 1, True)):
        body = b"".join(json_string_body("name", size))
        headers["Content-Length"] = str(size)
        answer = send_request(server.port, "POST", "/api/v1/tokens", [body], headers)
        if refused:
            _assert_too_large(answer, MIB)
        else:  # read and validated: a token needs a role
            assert answer.status == 422, answer.body[:300]
            assert "role" in answer.json()["error"]["details"]["fields"]["json"]


def test_uploads_still_take_large_bodies(server: RepoServer, tmp_path: Path) -> None:
    installer = make_installer(tmp_path, "6.2", size=3 * MIB)
    with installer.open("rb") as fh:
        answer = server.http.put(f"{server.url}/api/v1/artifacts/{installer.name}", data=fh)
    assert answer.status_code == 201, answer.text
    assert answer.json()["size"] == 3 * MIB
