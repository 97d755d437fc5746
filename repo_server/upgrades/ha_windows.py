"""The write windows of an HA group upgrade, from the moments its marked steps ended.

- write-unavailable: no member takes writes, from the end of the step that made the
  primary read-only (``writes_stop``) to the end of the step after which the primary takes
  writes again (``writes_resume``: its start under ``available``, read-only off under
  ``safe``);
- unprotected: writes are accepted with no secondary connected, from ``writes_resume``
  to the end of the step that saw the failover secondary connected (``protected``), when
  writes resumed first.

Times are the server's, when each step's report arrived: one clock for the whole group.
A window still open is measured to now; a job that ended on the way back closes it where
it ended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from repo_server.db import utcnow
from repo_server.upgrades.models import Job


def _ended(job: Job, mark: str) -> Optional[datetime]:
    seq = (job.plan.get("marks") or {}).get(mark)
    step = next((s for s in job.steps if s.seq == seq), None)
    if step is None or step.state != "succeeded":
        return None
    return step.finished_at


def windows(job: Job) -> Optional[dict[str, Any]]:
    """``write_unavailable_s``, ``unprotected_s`` (None until the window opened) and whether
    each is still ``open``; None for a job that is not an HA group upgrade."""
    if job.kind != "ha_upgrade":
        return None
    stop, resume, protected = (
        _ended(job, m) for m in ("writes_stop", "writes_resume", "protected")
    )
    end = job.finished_at or utcnow()
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
        answer["write_unavailable_open"] = resume is None and job.finished_at is None
    if resume is not None:
        if protected is not None and protected <= resume:
            answer["unprotected_s"] = 0.0
        else:
            until = protected or end
            answer["unprotected_s"] = round(max(0.0, (until - resume).total_seconds()), 3)
            answer["unprotected_open"] = protected is None and job.finished_at is None
    elif stop is not None:
        answer["unprotected_s"] = 0.0
    return answer
