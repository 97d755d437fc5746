"""Maintenance windows: weekly times, in a time zone, when work may start on a node or an
HA group. A target with no window may start at any time; a target with windows only
inside one, and only when its job can finish before that window closes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.errors import NotFound, ValidationFailed
from repo_server.fleet.groups import get_group
from repo_server.fleet.service import get_node
from repo_server.rollouts.models import MaintenanceWindow

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_START = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class Opening:
    """One occurrence of a window, in UTC."""

    start: datetime
    end: datetime


def parse_days(text: str) -> list[str]:
    """``mon,wed``, ``mon-fri``, ``sat-mon`` or ``daily`` -> the days, in week order."""
    text = text.strip().lower()
    if text in ("daily", "*", "all"):
        return list(DAYS)
    chosen: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValidationFailed(
                f"days {text!r}: {part!r} is not a day; use mon..sun, ranges like mon-fri, "
                "lists like mon,wed or daily",
                field="days",
            )
        i, j = DAYS.index(first), DAYS.index(last or first)
        span = (j - i) % 7
        chosen.update(DAYS[(i + k) % 7] for k in range(span + 1))
    if not chosen:
        raise ValidationFailed(
            "days is empty: name at least one day (mon-fri, daily)", field="days"
        )
    return [d for d in DAYS if d in chosen]


def check_window(days: str, start: str, minutes: int, tz: str) -> tuple[str, str, int, str]:
    """The window's fields as stored, or ValidationFailed saying which is wrong."""
    day_list = parse_days(days)
    if not _START.match(start.strip()):
        raise ValidationFailed(
            f"start {start!r} is not a time of day: use HH:MM, 24-hour (22:00)", field="start"
        )
    if not 0 < minutes <= MAX_MINUTES:
        raise ValidationFailed(
            f"a window of {minutes} minutes: give 1 minute to 7 days", field="minutes"
        )
    zone(tz)
    return ",".join(day_list), start.strip(), minutes, tz


def zone(name: str) -> ZoneInfo:
    try:
        if not name or len(name) > 64 or ".." in name or name.startswith("/"):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(
            f"time zone {name!r} is unknown: use an IANA name such as UTC or Europe/Oslo",
            field="timezone",
        ) from None


def openings(window: MaintenanceWindow, around: datetime) -> Iterable[Opening]:
    """The window's occurrences that start from a day before ``around`` to a week after."""
    tz = zone(window.timezone)
    hour, minute = (int(x) for x in window.start.split(":"))
    days = set(window.days.split(","))
    local = around.astimezone(tz)
    for offset in range(-7, 9):
        day = (local + timedelta(days=offset)).date()
        if DAYS[day.weekday()] not in days:
            continue
        begin = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
        start = begin.astimezone(timezone.utc)
        yield Opening(start, start + timedelta(minutes=window.minutes))


@dataclass(frozen=True)
class WindowVerdict:
    ok: bool
    reason: Optional[str] = None
    next_start: Optional[datetime] = None


def allows(windows: list[MaintenanceWindow], now: datetime, needed: timedelta) -> WindowVerdict:
    """Whether work that takes ``needed`` may start ``now``: no window at all, or one open
    now that stays open that long. Else when the next window long enough opens."""
    if not windows:
        return WindowVerdict(True)
    now = now.astimezone(timezone.utc)
    later: list[datetime] = []
    too_short = False
    for window in windows:
        for opening in openings(window, now):
            if opening.start <= now < opening.end:
                if now + needed <= opening.end:
                    return WindowVerdict(True)
                too_short = True
            elif opening.start > now and opening.end - opening.start >= needed:
                later.append(opening.start)
    first = min(later) if later else None
    why = (
        "the open maintenance window closes before a job of "
        f"{int(needed.total_seconds() // 60)} minutes could finish"
        if too_short
        else "outside its maintenance windows"
    )
    when = (
        f"; the next window long enough opens {first.isoformat(timespec='minutes')}"
        if first
        else "; no window is long enough for the job (see --job-minutes)"
    )
    return WindowVerdict(False, why + when, first)


def windows_of(
    session: Session, node_ids: list[int], group_id: Optional[int]
) -> list[MaintenanceWindow]:
    """The windows of a target: its group's, and its nodes'. A target must fit all of them
    that apply: those of each subject are alternatives, subjects must all agree."""
    clauses: list[ColumnElement[bool]] = (
        [MaintenanceWindow.node_id.in_(node_ids)] if node_ids else []
    )
    if group_id is not None:
        clauses.append(MaintenanceWindow.group_id == group_id)
    if not clauses:
        return []
    return list(session.scalars(select(MaintenanceWindow).where(or_(*clauses))))


def target_allows(
    windows: list[MaintenanceWindow], now: datetime, needed: timedelta
) -> WindowVerdict:
    """Every subject (a node, a group) with windows must allow the start."""
    by_subject: dict[tuple[Optional[int], Optional[int]], list[MaintenanceWindow]] = {}
    for window in windows:
        by_subject.setdefault((window.node_id, window.group_id), []).append(window)
    for subject_windows in by_subject.values():
        verdict = allows(subject_windows, now, needed)
        if not verdict.ok:
            return verdict
    return WindowVerdict(True)


# -- the operator's side --------------------------------------------------------------------


def add_window(
    session: Session,
    who: Principal,
    *,
    node: Optional[str],
    group: Optional[str],
    days: str,
    start: str,
    minutes: int,
    tz: str,
) -> MaintenanceWindow:
    if bool(node) == bool(group):
        raise ValidationFailed("a window belongs to one node or one group: give exactly one")
    fields = check_window(days, start, minutes, tz)
    window = MaintenanceWindow(
        node_id=get_node(session, node).id if node else None,
        group_id=get_group(session, group).id if group else None,
        days=fields[0],
        start=fields[1],
        minutes=fields[2],
        timezone=fields[3],
        created_by=who.actor,
    )
    session.add(window)
    session.flush()
    audit(session, who.actor, "window.add", f"window:{window.id}", **window_dict(session, window))
    session.commit()
    return window


def remove_window(session: Session, window_id: int, who: Principal) -> None:
    window = session.get(MaintenanceWindow, window_id)
    if window is None:
        raise NotFound(f"no maintenance window {window_id}: list them with 'nso-repo window ls'")
    details = window_dict(session, window)
    session.delete(window)
    audit(session, who.actor, "window.remove", f"window:{window_id}", **details)
    session.commit()


def list_windows(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(MaintenanceWindow).order_by(MaintenanceWindow.id))
    return [{"id": w.id, **window_dict(session, w)} for w in rows]


def window_dict(session: Session, window: MaintenanceWindow) -> dict[str, Any]:
    from repo_server.fleet.group_models import HaGroup
    from repo_server.fleet.models import Node

    subject = (
        session.get(Node, window.node_id)
        if window.node_id
        else session.get(HaGroup, window.group_id)
    )
    return {
        "node": subject.name if window.node_id and subject else None,
        "group": subject.name if window.group_id and subject else None,
        "days": window.days,
        "start": window.start,
        "minutes": window.minutes,
        "timezone": window.timezone,
    }
