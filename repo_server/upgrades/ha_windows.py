"""The write windows of an HA group upgrade, from the moments its marked steps ended.

- write-unavailable: no member takes writes, from the end of the step that made the
  primary read-only (``writes_stop``) to the end of the step after which the primary takes
  writes again (``writes_resume``: its start under ``available``, read-only off under
  ``safe``);
- unprotected: writes are accepted with no secondary connected, from ``writes_resume``
  to the end of the step that saw the failover secondary connected (``protected``), when
  writes resumed first.

Times are the server's, when each step's report arrived: one clock for the whole group
(so a window opened by NSO a moment before the step's report is counted from the report).
A window still open is measured to now; on the way back, writes resume when the primary is
recovered or leaves read-only mode; a job that ended ``needs_attention`` leaves its open
windows open.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from repo_server.db import utcnow
from repo_server.upgrades.ha_recovery import handed
from repo_server.upgrades.models import Job


def _ended(job: Job, mark: str) -> Optional[datetime]:
    seq = (job.plan.get("marks") or {}).get(mark)
    step = next((s for s in job.steps if s.seq == seq), None)
    if step is None or step.state != "succeeded":
        return None
    return step.finished_at


def _way_back(job: Job) -> tuple[Optional[datetime], Optional[datetime]]:
    """When the way back let the primary take writes again (read-only mode off), and when
    a secondary was behind it again: at once if the primary never stopped (its secondaries
    never left it), else when it saw them rejoin."""
    planned = int(job.plan.get("step_count") or 0)
    primary = int(job.options.get("primary") or 0)
    stopped = handed(job, primary, "stop")
    resume = protected = None
    for step in job.steps:
        if step.seq <= planned or step.node_id != primary or step.state != "succeeded":
            continue
        # A recovered primary starts read-only (ha_recovery.py): read-only off lets
        # writes in, on either way back.
        if resume is None and step.name == "ha_read_only" and step.params.get("mode") is False:
            resume = step.finished_at
            if not stopped:
                protected = resume
        elif resume is not None and protected is None and step.name == "ha_wait_secondaries":
            protected = step.finished_at
    return resume, protected


def _moments(
    job: Job,
) -> tuple[Optional[datetime], Optional[datetime], Optional[datetime], bool, datetime]:
    """When writes stopped, resumed and were protected again; whether the job still holds
    the group; and the moment an open window is measured to."""
    stop, protected = _ended(job, "writes_stop"), _ended(job, "protected")
    resume = _ended(job, "writes_resume")
    if resume is None:
        resume, protected = _way_back(job)
    ongoing = job.finished_at is None or job.outcome == "needs_attention"
    end = utcnow() if ongoing else job.finished_at or utcnow()
    return stop, resume, protected, ongoing, end


def spans(job: Job) -> list[dict[str, Any]]:
    """The windows as intervals to draw on a timeline: ``kind`` (write_unavailable or
    unprotected), ``start``, ``end`` (now for an open one) and ``open``."""
    if job.kind != "ha_upgrade":
        return []
    stop, resume, protected, ongoing, end = _moments(job)
    out = []
    if stop is not None:
        out.append(
            {
                "kind": "write_unavailable",
                "start": stop,
                "end": resume or end,
                "open": resume is None and ongoing,
            }
        )
    if resume is not None and (protected is None or protected > resume):
        out.append(
            {
                "kind": "unprotected",
                "start": resume,
                "end": protected or end,
                "open": protected is None and ongoing,
            }
        )
    return out


def windows(job: Job) -> Optional[dict[str, Any]]:
    """``write_unavailable_s``, ``unprotected_s`` (None until the window opened) and whether
    each is still ``open``; None for a job that is not an HA group upgrade. A job that
    ended ``needs_attention`` leaves the group as it is: its open windows stay open."""
    if job.kind != "ha_upgrade":
        return None
    stop, resume, protected, ongoing, end = _moments(job)
    answer: dict[str, Any] = {
        "write_policy": job.options.get("write_policy"),
        "write_unavailable_s": None,
        "write_unavailable_open": False,
        "unprotected_s": None,
        "unprotected_open": False,
    }
    if stop is not None:
        until = resume or end
        answer["write_unavailable_s"] = round(max(0.0, (until - stop).total_seconds()), 3)
        answer["write_unavailable_open"] = resume is None and ongoing
    if resume is not None:
        if protected is not None and protected <= resume:
            answer["unprotected_s"] = 0.0
        else:
            until = protected or end
            answer["unprotected_s"] = round(max(0.0, (until - resume).total_seconds()), 3)
            answer["unprotected_open"] = protected is None and ongoing
    elif stop is not None:
        answer["unprotected_s"] = 0.0
    return answer
