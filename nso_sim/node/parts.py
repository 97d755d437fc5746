"""What the node needs from the parts started on top of it (the HA manager, the CLI).

The node must not import them (the imports go CLI -> HA -> node), so the daemon process
passes a function in (``nso_sim.node.daemon.StartParts``) that starts them, and the node
talks to what it returns through these protocols only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from nso_sim.ipc import Connection


class HaPeer(Protocol):
    """The node's view of its HA manager."""

    mode: str

    def at_start_up(self) -> None: ...

    def broadcast_snapshot(self) -> None: ...

    def shutdown(self) -> None: ...


class Service(Protocol):
    def start(self) -> None: ...

    def shutdown(self) -> None: ...


@dataclass
class Parts:
    ha: HaPeer
    ssh: Service
    # Serves one ``ncs_cli`` console over an IPC connection, for a user.
    console: Callable[[Connection, str], None]
