"""Failed authentication is audited, aggregated per source address and minute, so a flood
of bad tokens cannot flood the audit table."""

from __future__ import annotations

import http.client
import json
import threading
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests

FLOOD = 1000


def _failures(live) -> list[dict[str, Any]]:
    answer = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": "auth.failed", "limit": 1000}
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def _minutes_spanned(rows: list[dict[str, Any]]) -> int:
    """Calendar minutes from the first failure to the last: the most rows there may be."""
    first = min(_minute(row["details"]["first_at"]) for row in rows)
    last = max(_minute(row["details"]["last_at"]) for row in rows)
    return int((last - first).total_seconds()) // 60 + 1


def _minute(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp).replace(second=0, microsecond=0)


def test_a_thousand_bad_tokens_make_one_row_per_minute_with_the_count(live) -> None:
    bad = requests.Session()
    bad.headers["Authorization"] = "Bearer nsr_not-a-real-token"
    for _ in range(FLOOD):
        assert bad.get(f"{live.url}/api/v1/artifacts").status_code == 401
    rows = _failures(live)
    assert 1 <= len(rows) <= _minutes_spanned(rows), rows  # one row per minute of the flood
    assert sum(row["details"]["count"] for row in rows) == FLOOD
    for row in rows:
        assert row["target"] == "address:127.0.0.1"
        assert row["actor"] == "anonymous"
        assert row["details"]["reasons"] == {"unauthenticated": row["details"]["count"]}
    assert "nsr_not-a-real-token" not in json.dumps(rows)  # never the secret someone sent


def test_concurrent_failures_from_one_address_stay_one_row(live) -> None:
    def hammer() -> None:
        http = requests.Session()
        for _ in range(50):
            assert http.get(f"{live.url}/api/v1/tokens").status_code == 401  # no token

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = _failures(live)
    assert sum(row["details"]["count"] for row in rows) == 400
    assert len(rows) <= _minutes_spanned(rows), rows


def _get_from(address: str, url: str, headers: dict[str, str]) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=(address, 0)
    )
    try:
        connection.request("GET", parts.path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_each_address_and_reason_is_counted_apart(live) -> None:
    url = f"{live.url}/api/v1/nodes"
    for _ in range(3):
        assert _get_from("127.0.0.2", url, {"Authorization": "Bearer nsr_wrong"}) == 401
    assert _get_from("127.0.0.3", url, {"Authorization": "Basic YWRtaW46YWRtaW4="}) == 401
    refused = requests.post(
        f"{live.url}/api/v1/agent/enroll", json={"enrollment_token": "nse_wrong"}, timeout=30
    )
    assert refused.status_code == 401
    # Allowed and forbidden callers are not failed authentications.
    assert live.session("viewer").get(f"{live.url}/api/v1/tokens").status_code == 403
    rows = {row["target"]: row["details"] for row in _failures(live)}
    assert set(rows) == {"address:127.0.0.1", "address:127.0.0.2", "address:127.0.0.3"}
    assert rows["address:127.0.0.2"]["count"] == 3
    assert rows["address:127.0.0.2"]["reasons"] == {"unauthenticated": 3}
    assert rows["address:127.0.0.2"]["last_path"] == "/api/v1/nodes"
    assert rows["address:127.0.0.3"]["count"] == 1
    assert rows["address:127.0.0.1"]["reasons"] == {"enrollment_refused": 1}
