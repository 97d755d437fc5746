"""The on-disk record of the step in progress (``<state dir>/journal.json``).

A restarted agent reads it to resume: the server hands the same step out again (same id,
``attempt`` + 1) and the journal tells the step what it had done already (its ``phase`` and
``facts``, such as the ``current`` target seen before the installer ran). The report ids are
kept here too, and a final report is written here *before* it is sent: after a crash the
agent resends the same report (same ``report_id``) instead of running the step again, so
the server never applies one outcome twice.

Every write goes to a temporary file beside the journal, is fsynced, then renamed over it.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from agent.fsutil import write_atomic


@dataclass
class Entry:
    step_id: int
    job_id: int
    name: str
    attempt: int = 1
    phase: str = "begun"
    facts: dict[str, Any] = field(default_factory=dict)
    # report ids by purpose ("running-2", "final"), so a retried report reuses its id
    report_ids: dict[str, str] = field(default_factory=dict)
    # the final report's body, kept until the server has acknowledged it
    final_report: Optional[dict[str, Any]] = None

    def report_id(self, purpose: str) -> str:
        if purpose not in self.report_ids:
            self.report_ids[purpose] = uuid.uuid4().hex
        return self.report_ids[purpose]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entry: Optional[Entry] = self._read()

    def _read(self) -> Optional[Entry]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            # Never half-written (atomic rename); unreadable means hand-edited: start clean.
            return None
        if not isinstance(data, dict) or "step_id" not in data:
            return None
        known = {k: v for k, v in data.items() if k in Entry.__dataclass_fields__}
        return Entry(**known)

    def begin(self, step: dict[str, Any]) -> Entry:
        """The entry for ``step``: the existing one when resuming it, else a new one."""
        entry = self.entry
        if entry is None or entry.step_id != int(step["id"]):
            entry = Entry(
                step_id=int(step["id"]), job_id=int(step.get("job_id") or 0), name=step["name"]
            )
        entry.attempt = int(step.get("attempt") or entry.attempt)
        self.entry = entry
        self.save()
        return entry

    def save(self) -> None:
        if self.entry is None:
            return
        write_json_atomic(self.path, asdict(self.entry))

    def update(self, phase: Optional[str] = None, **facts: Any) -> None:
        """Record progress of the current step (a phase reached, facts learnt) durably."""
        if self.entry is None:
            return
        if phase is not None:
            self.entry.phase = phase
        self.entry.facts.update(facts)
        self.save()

    def fact(self, name: str, default: Any = None) -> Any:
        return self.entry.facts.get(name, default) if self.entry else default

    def clear(self) -> None:
        self.entry = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
