"""Maintenance windows: weekly times, in a time zone, when work may start on a node or an
HA group. A target with no window may start at any time; a target with windows only
inside one, and only when its job can finish before that window closes."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.errors import NotFound, ValidationFailed
from repo_server.fleet.groups import get_group
from repo_server.fleet.service import get_node
from repo_server.rollouts.models import MaintenanceWindow

log = logging.getLogger(__name__)
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
    closes: Optional[datetime] = None  # when ok inside a window: when it closes


def allows(windows: list[MaintenanceWindow], now: datetime, needed: timedelta) -> WindowVerdict:
    """Whether work that takes ``needed`` may start ``now``: no window at all, or one open
    now that stays open that long. Else when the next window long enough opens."""
    if not windows:
        return WindowVerdict(True)
    now = now.astimezone(timezone.utc)
    later: list[datetime] = []
    too_short = False
    closes: Optional[datetime] = None
    for window in windows:
        try:
            found = list(openings(window, now))
        except ValidationFailed:  # a zone the system no longer knows: this window never opens
            log.warning(
                "maintenance window %s: time zone %r is unknown", window.id, window.timezone
            )
            continue
        for opening in found:
            if opening.start <= now < opening.end:
                if now + needed <= opening.end:
                    closes = max(closes or opening.end, opening.end)
                else:
                    too_short = True
            elif opening.start > now and opening.end - opening.start >= needed:
                later.append(opening.start)
    if closes is not None:
        return WindowVerdict(True, closes=closes)
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


class WindowBook:
    """Every maintenance window, and the members of the given groups, read once: the driver
    checks thousands of targets in a pass with no query per target."""

    def __init__(self, session: Session, group_ids: set[int]) -> None:
        from repo_server.fleet.group_models import HaGroupMember

        self.by_node: dict[int, list[MaintenanceWindow]] = {}
        self.by_group: dict[int, list[MaintenanceWindow]] = {}
        for window in session.scalars(select(MaintenanceWindow)):
            if window.node_id is not None:
                self.by_node.setdefault(window.node_id, []).append(window)
            elif window.group_id is not None:
                self.by_group.setdefault(window.group_id, []).append(window)
        self.members: dict[int, list[int]] = {}
        if group_ids and (self.by_node or self.by_group):
            rows = session.execute(
                select(HaGroupMember.group_id, HaGroupMember.node_id).where(
                    HaGroupMember.group_id.in_(sorted(group_ids))
                )
            )
            for group_id, node_id in rows:
                self.members.setdefault(group_id, []).append(node_id)

    def allows(
        self, node_id: Optional[int], group_id: Optional[int], now: datetime, needed: timedelta
    ) -> WindowVerdict:
        """A standalone node's windows, or a group's and each of its members'."""
        if not self.by_node and not self.by_group:
            return WindowVerdict(True)
        node_ids = [node_id] if node_id is not None else self.members.get(group_id or 0, [])
        found = [w for n in node_ids for w in self.by_node.get(n, [])]
        if group_id is not None:
            found += self.by_group.get(group_id, [])
        return target_allows(found, now, needed)


def target_allows(
    windows: list[MaintenanceWindow], now: datetime, needed: timedelta
) -> WindowVerdict:
    """Every subject (a node, a group) with windows must allow the start."""
    by_subject: dict[tuple[Optional[int], Optional[int]], list[MaintenanceWindow]] = {}
    for window in windows:
        by_subject.setdefault((window.node_id, window.group_id), []).append(window)
    closes: Optional[datetime] = None
    for subject_windows in by_subject.values():
        verdict = allows(subject_windows, now, needed)
        if not verdict.ok:
            return verdict
        if verdict.closes is not None:
            closes = min(closes or verdict.closes, verdict.closes)
    return WindowVerdict(True, closes=closes)


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
