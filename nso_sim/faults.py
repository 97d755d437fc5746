"""Per-host fault injection, kept in ``<root>/.nso-sim/faults.json``.

Each fault is ``{"value": ..., "once": bool}``, and ``"skip": N`` when set. A ``once``
fault disarms itself the first time it fires, so a test can script "the first start fails,
the retry works"; one with ``skip`` lets its first N occasions pass, so a test can fail the
second of two identical commands.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from nso_sim.layout import HostLayout, write_json_atomic

# name -> (what it does, what its value means)
FAULTS: dict[str, tuple[str, str]] = {
    "installer-fail": ("the installer exits 1 before touching anything", "message printed"),
    "start-exit": ("the daemon dies during start-up with this exit code", "exit code (int)"),
    "start-slow": ("start-up takes this many extra nominal seconds", "seconds (float)"),
    "reload-crash": ("the daemon dies in the middle of a package reload", "exit code (int)"),
    "disk-full": ("writes by installer, ncs-backup and fetch fail with ENOSPC", "ignored"),
    "backup-corrupt": ("ncs-backup writes a truncated file; restore of it fails", "ignored"),
    "ha-link-down": ("the HA connections of this node drop and cannot be made", "ignored"),
    "ha-sync-reload-fails": (
        "on a secondary: the reload `packages ha sync` asks of it fails, nothing loaded",
        "NSO's reason (text)",
    ),
    "ha-sync-cli-lost": (
        "on the primary: once `packages ha sync` holds the node read-only, the CLI's SSH "
        "connection drops; the sync runs this much longer, then ends as it would have",
        "nominal seconds (float)",
    ),
    "ha-sync-cli-lost-copying": (
        "on the primary: while `packages ha sync` copies the packages to the secondaries (the "
        "primary not read-only yet), the CLI's SSH connection drops; the copying takes this "
        "much longer, then the sync goes on as it would have",
        "nominal seconds (float)",
    ),
    "ha-sync-primary-reload-unsaid": (
        "on the primary: `packages ha sync` reloads the secondaries, the primary's own reload "
        "fails, and the answer says so in no form a client knows (exit status 0, no error "
        "line); the primary is left read-write, as NSO leaves it on error",
        "ignored",
    ),
    "cli-exec-reply-lost": (
        "the SSH connection drops after an exec request whose command holds this text has "
        "run, before the server confirms the request (the client cannot tell it ran)",
        "text the command contains",
    ),
    "migrate-answer-wrapped": (
        "`migrate` on a device group prints its answer inside one `migrate-result { ... }` "
        "block, each device's blocks nested in it (another form the answer might take)",
        "ignored",
    ),
}


def _read(layout: HostLayout) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(layout.faults_file.read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def list_faults(layout: HostLayout) -> dict[str, Any]:
    return _read(layout)


# Faults that hold while armed (read, never fired): no occasion to skip or to count.
STATES = frozenset({"ha-link-down"})


def set_fault(
    layout: HostLayout, name: str, value: Any = True, once: bool = False, skip: int = 0
) -> None:
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
    if name in STATES and (skip or once):
        raise ValueError(f"{name} holds while it is armed: clear it instead of --once or --skip")
    data = _read(layout)
    data[name] = {"value": value, "once": once, **({"skip": skip} if skip > 0 else {})}
    write_json_atomic(layout.faults_file, data)


def clear_fault(layout: HostLayout, name: Optional[str] = None) -> None:
    data = _read(layout)
    if name is None:
        data = {}
    else:
        data.pop(name, None)
    write_json_atomic(layout.faults_file, data)


def active(layout: HostLayout, name: str) -> Optional[Any]:
    """The fault's value if armed (without firing it), else None."""
    entry = _read(layout).get(name)
    return None if entry is None else entry.get("value", True)


def fire(layout: HostLayout, name: str) -> Optional[Any]:
    """Like ``active`` but disarms a ``once`` fault: call where the fault takes effect.
    None, and one occasion fewer to skip, while the fault skips occasions."""
    data = _read(layout)
    entry = data.get(name)
    if entry is None:
        return None
    skip = entry.get("skip", 0)
    if isinstance(skip, int) and skip > 0:
        entry["skip"] = skip - 1
        write_json_atomic(layout.faults_file, data)
        return None
    if entry.get("once"):
        data.pop(name)
        write_json_atomic(layout.faults_file, data)
    return entry.get("value", True)


class DiskFull(OSError):
    def __init__(self, what: str) -> None:
        super().__init__(28, f"No space left on device: {what}")


def check_disk(layout: HostLayout, what: str) -> None:
    if fire(layout, "disk-full") is not None:
        raise DiskFull(what)
