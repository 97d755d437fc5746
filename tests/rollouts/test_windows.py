"""Maintenance windows as the driver reads them: days, time zones, windows across
midnight, the job that must fit, and when the next one long enough opens."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from repo_server.errors import ValidationFailed
from repo_server.rollouts.models import MaintenanceWindow
from repo_server.rollouts.windows import allows, check_window, parse_days, target_allows

OSLO = ZoneInfo("Europe/Oslo")
HOUR = timedelta(hours=1)


def window(
    days: str, start: str, minutes: int, tz: str = "UTC", node: int = 1
) -> MaintenanceWindow:
    return MaintenanceWindow(
        node_id=node, days=",".join(parse_days(days)), start=start, minutes=minutes, timezone=tz
    )


def test_days_read_as_operators_write_them() -> None:
    assert parse_days("mon-fri") == ["mon", "tue", "wed", "thu", "fri"]
    assert parse_days("fri-mon") == ["mon", "fri", "sat", "sun"]
    assert parse_days("sat,sun") == ["sat", "sun"]
    assert len(parse_days("daily")) == 7
    for bad in ("", "someday", "mon-xyz", ",,"):
        with pytest.raises(ValidationFailed):
            parse_days(bad)
    with pytest.raises(ValidationFailed, match="HH:MM"):
        check_window("daily", "24:00", 60, "UTC")
    with pytest.raises(ValidationFailed, match="time zone"):
        check_window("daily", "22:00", 60, "../../etc/passwd")
    with pytest.raises(ValidationFailed, match="7 days"):
        check_window("daily", "22:00", 0, "UTC")


def test_a_window_across_midnight_in_its_own_time_zone() -> None:
    # Saturdays 22:00 to Sunday 02:00, Oslo time (UTC+1 in January).
    w = [window("sat", "22:00", 240, "Europe/Oslo")]
    sunday_1am = datetime(2027, 1, 10, 1, 0, tzinfo=OSLO)
    assert allows(w, sunday_1am, HOUR).ok
    # 90 minutes of work do not fit in the hour left.
    late = allows(w, sunday_1am, 90 * timedelta(minutes=1))
    assert not late.ok and "closes before a job of 90 minutes" in (late.reason or "")
    assert late.next_start == datetime(2027, 1, 16, 21, 0, tzinfo=timezone.utc)
    # Saturday 21:59 Oslo is outside; 22:00 inside, whatever zone "now" is given in.
    assert not allows(w, datetime(2027, 1, 9, 20, 59, tzinfo=timezone.utc), HOUR).ok
    assert allows(w, datetime(2027, 1, 9, 21, 0, tzinfo=timezone.utc), HOUR).ok


def test_no_window_means_any_time_and_several_mean_any_of_them() -> None:
    now = datetime(2027, 1, 6, 12, 0, tzinfo=timezone.utc)  # a Wednesday
    assert allows([], now, HOUR).ok
    w = [window("mon", "01:00", 60), window("wed", "11:30", 120)]
    assert allows(w, now, HOUR).ok
    short = allows(w, now, 2 * HOUR)
    assert not short.ok
    # The Monday window is only an hour: the next one long enough is next Wednesday's.
    assert short.next_start == datetime(2027, 1, 13, 11, 30, tzinfo=timezone.utc)
    never = allows(w, now, 3 * HOUR)
    assert not never.ok and "no window is long enough" in (never.reason or "")


def test_a_group_target_must_fit_its_own_window_and_each_members() -> None:
    now = datetime(2027, 1, 6, 12, 0, tzinfo=timezone.utc)
    group = MaintenanceWindow(group_id=7, days="wed", start="11:00", minutes=180, timezone="UTC")
    member_open = window("wed", "11:00", 180, node=1)
    member_closed = window("thu", "11:00", 180, node=2)
    assert target_allows([group, member_open], now, HOUR).ok
    assert not target_allows([group, member_open, member_closed], now, HOUR).ok
