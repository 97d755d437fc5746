"""Why the node refuses or stops; the HA manager and the CLI turn these into their output."""

from __future__ import annotations

from typing import Optional


class StartupFailure(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ReloadRefused(Exception):
    """A reload that must not proceed; ``lines`` are what the CLI prints."""

    def __init__(self, lines: list[str], per_package: Optional[dict[str, str]] = None) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.per_package = per_package or {}


class WriteRefused(Exception):
    pass


class StopDuringStart(Exception):
    pass
