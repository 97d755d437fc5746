"""The agent's errors. Each message says what went wrong and what to do about it; output of
NSO's own commands is carried verbatim so an operator sees exactly what NSO said."""

from __future__ import annotations

from typing import Any, Optional


class AgentError(Exception):
    """Base of every error the agent reports."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or inconsistent."""


class ServerError(AgentError):
    """The repository server answered with an error (its message is kept verbatim)."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StepFinished(ServerError):
    """A report for a step the server has already finished with another outcome."""


class DownloadError(AgentError):
    """An artifact could not be fetched or did not verify."""


class ChecksumMismatch(DownloadError):
    """The downloaded bytes are not the ones the server announced: never used."""


class NsoError(AgentError):
    """An NSO command failed; ``output`` is what it printed, verbatim."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class CliError(NsoError):
    """The NSO CLI refused a command (``Error:``/``Aborted:`` lines, verbatim)."""


class StepFailed(AgentError):
    """A step could not reach its end state; the message is what the server shows.

    ``result`` travels with the failed report: facts the server needs to decide what comes
    next (``nso_running``: NSO runs and takes writes, so it must not be restored over).
    """

    def __init__(self, message: str, result: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.result = dict(result or {})
