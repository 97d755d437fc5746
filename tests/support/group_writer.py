"""A steady writer for an HA group, or for one node (a group of one): commits one new device
every ~50 ms to whichever member takes writes (the one that acknowledged last, else the next
one that does), over the NSO CLI (real SSH). It keeps every commit NSO acknowledged with `Commit complete.`, with the member
and the moment, so a test can check that every acknowledged write is on every member at the
end, and a benchmark can see when writes were refused.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import paramiko

WRITE_EVERY = 0.05


@dataclass
class Ack:
    name: str
    member: int
    at: float  # time.monotonic() when NSO acknowledged it


@dataclass
class GroupWriter:
    members: list[tuple[str, int]]  # (address, CLI port)
    every: float = WRITE_EVERY
    prefix: str = "inv"
    acknowledged: list[Ack] = field(default_factory=list)
    refused: int = 0
    unreachable: int = 0
    target: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: Optional[threading.Thread] = None
    clients: dict[int, paramiko.SSHClient] = field(default_factory=dict)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        assert self.thread is not None
        self.thread.join(timeout=60)
        for client in self.clients.values():
            client.close()

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.acknowledged]

    def _connect(self, member: int) -> paramiko.SSHClient:
        client = self.clients.get(member)
        if client is not None:
            transport = client.get_transport()
            if transport is not None and transport.is_active():
                return client
            client.close()
        address, port = self.members[member]
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            address,
            port,
            username="admin",
            password="admin",
            look_for_keys=False,
            allow_agent=False,
            timeout=2,
            banner_timeout=2,
            auth_timeout=2,
        )
        self.clients[member] = client
        return client

    def _commit(self, member: int, name: str, n: int) -> bool:
        try:
            client = self._connect(member)
            _, out, _ = client.exec_command(
                f"config\ndevices device {name} address 192.0.2.{n % 250 + 1}\ncommit",
                timeout=10,
            )
            text = out.read().decode(errors="replace")
            status = out.channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException):
            self.unreachable += 1
            dead = self.clients.pop(member, None)
            if dead is not None:
                dead.close()
            return False
        if status == 0 and "Commit complete." in text:
            self.acknowledged.append(Ack(name, member, time.monotonic()))
            return True
        self.refused += 1
        return False

    def _run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            name = f"{self.prefix}-{n}"
            # One try per tick on the member that took the last write; on a refusal the
            # next tick tries the next member, so a new primary is found within a round.
            if not self._commit(self.target, name, n):
                self.target = (self.target + 1) % len(self.members)
            self.stop_event.wait(self.every)
