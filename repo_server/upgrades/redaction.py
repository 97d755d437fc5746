"""What a role without ``job:details`` (a viewer, a dashboard's token) sees of a job's words.

Such a role does not get a job's context, its steps' results and log tails (README,
"Roles"). The job's ``error`` and its steps' ``message`` stay readable, since they say what
happened, but they name files on the hosts too (a member's proven backup, a saved package
folder, an undo save): those paths are masked here, so a viewer learns what went wrong and
an operator where things are. So are the words that repeat a job's error elsewhere: a fleet
rollout target's reason, and a node's rollout status.
"""

from __future__ import annotations

import re
from typing import Any

# An absolute path on a host: a slash not inside a word, a URL or another path, then path
# characters. (A YANG path such as /ncs:devices/device{r1} is masked too: no loss to a viewer.)
HOST_PATH = re.compile(r"(?<![\w:/.~-])/[\w.@+:~{}-]+(?:/[\w.@+:~{}-]*)*")
MASK = "[a path on the host]"


def masked(text: Any) -> Any:
    """``text`` with every absolute path replaced; anything that is not text as it is."""
    return HOST_PATH.sub(MASK, text) if isinstance(text, str) else text


def job_for_viewer(job: dict[str, Any]) -> dict[str, Any]:
    """A dumped job (a summary or the whole job) with its error, step messages and options
    masked: options carry host paths too (an HA package rollback names the backups of the
    upgrade it undoes)."""
    shown = {**job, "error": masked(job.get("error"))} if "error" in job else dict(job)
    if "options" in shown:
        shown["options"] = _masked_tree(shown["options"])
    return _masked_in(shown, "steps")


def _masked_tree(value: Any) -> Any:
    """``value`` with every string in it, at any depth, masked."""
    if isinstance(value, dict):
        return {k: _masked_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked_tree(v) for v in value]
    return masked(value)


def rollout_for_viewer(rollout: dict[str, Any]) -> dict[str, Any]:
    """A dumped patch rollout with each node's message masked."""
    return _masked_in(dict(rollout), "nodes")


def fleet_rollout_for_viewer(rollout: dict[str, Any]) -> dict[str, Any]:
    """A fleet rollout as the API shows it, each target's reason masked: a target that
    ended names its job's error."""
    return _masked_in(dict(rollout), "targets", "reason")


def _masked_in(shown: dict[str, Any], key: str, field: str = "message") -> dict[str, Any]:
    """``shown`` with ``field`` of each entry of its list ``key`` masked."""
    if isinstance(shown.get(key), list):
        shown[key] = [
            {**e, field: masked(e.get(field))} if isinstance(e, dict) else e for e in shown[key]
        ]
    return shown
