"""What a step function gets: the step the server handed out, the host, NSO, the journal."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from agent import trust
from agent.config import Config, HostPaths
from agent.download import Downloader
from agent.errors import StepFailed
from agent.journal import Journal
from agent.nso import Nso

LOG_LINES = 400


@dataclass
class StepContext:
    config: Config
    step: dict[str, Any]
    journal: Journal
    downloader: Optional[Downloader] = None
    on_progress: Optional[Callable[[int, str], None]] = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))

    def __post_init__(self) -> None:
        # The NSO adapter, logging into this step's log: all a step knows of NSO.
        self.nso = Nso(self.config, self.log)

    @property
    def paths(self) -> HostPaths:
        return self.config.paths

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.step.get("params") or {})

    @property
    def context(self) -> dict[str, Any]:
        return dict(self.step.get("context") or {})

    @property
    def job(self) -> dict[str, Any]:
        return dict(self.step.get("job") or {})

    @property
    def job_id(self) -> int:
        return int(self.step.get("job_id") or self.job.get("id") or 0)

    def param(self, name: str, default: Any = None) -> Any:
        """A step parameter, else what an earlier step put into the job's context."""
        value = self.params.get(name)
        if value is None:
            value = self.context.get(name, default)
        return value

    def log(self, text: str) -> None:
        # NUL never reaches a report: the server refuses JSON holding it.
        for line in str(text).replace("\x00", "").splitlines() or [""]:
            self.lines.append(line)

    def progress(self, percent: int, message: str) -> None:
        self.log(message)
        if self.on_progress is not None:
            self.on_progress(percent, message)

    def log_tail(self, limit: int = 16000) -> str:
        return "\n".join(self.lines)[-limit:]

    def require_downloader(self) -> Downloader:
        if self.downloader is None:
            raise StepFailed("this step downloads artifacts but the agent has no server to ask")
        return self.downloader

    def start_timeout(self) -> float:
        return trust.seconds(
            self.params.get("start_timeout"), "start_timeout", self.config.start_timeout
        )

    def close(self) -> None:
        self.nso.close()
