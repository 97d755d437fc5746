"""Failed authentication from many addresses cannot grow the audit table without bound
either (issue 8 review). One row per address and minute bounded a flood from one address,
but an attacker with an IPv6 /64 (or a botnet) varies the address: every failure made a
row of its own. Past MAX_ADDRESSES_PER_MINUTE addresses in a minute, the failures of new
addresses are counted in one row, `address:*`."""

from __future__ import annotations

import http.client
from datetime import datetime
from urllib.parse import urlsplit

from repo_server.auth.audit_events import MAX_ADDRESSES_PER_MINUTE, OVERFLOW_TARGET

ADDRESSES = MAX_ADDRESSES_PER_MINUTE + 50


def _get_from(address: str, url: str) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=(address, 0)
    )
    try:
        connection.request("GET", parts.path, headers={"Authorization": "Bearer nsr_wrong"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_failures_from_ever_new_addresses_stay_bounded(live) -> None:
    for n in range(ADDRESSES):
        assert _get_from(f"127.0.{1 + n // 250}.{1 + n % 250}", f"{live.url}/api/v1/nodes") == 401
    answer = live.session("admin").get(
        f"{live.url}/api/v1/audit", params={"action": "auth.failed", "limit": 1000}
    )
    rows = answer.json()
    minutes = {
        datetime.fromisoformat(row["details"][key]).replace(second=0, microsecond=0)
        for row in rows
        for key in ("first_at", "last_at")
    }
    # At most the cap and one overflow row per minute the flood spanned.
    assert len(rows) <= (MAX_ADDRESSES_PER_MINUTE + 1) * len(minutes), len(rows)
    assert sum(row["details"]["count"] for row in rows) == ADDRESSES
    overflow = [row for row in rows if row["target"] == OVERFLOW_TARGET]
    assert overflow, "no failure was counted in the overflow row"
    assert overflow[0]["details"]["last_address"].startswith("127.0.")
    assert overflow[0]["details"]["reasons"] == {"unauthenticated": overflow[0]["details"]["count"]}
