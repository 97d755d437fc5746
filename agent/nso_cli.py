"""The NSO CLI's transport: SSH (paramiko), one connection, one exec channel per command.

Only ``agent/nso.py`` uses it, behind typed methods; nothing else builds CLI text. A step
may catch ``CliLost``: a command that went out and whose end nobody saw.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Optional

import paramiko

from agent.config import Config
from agent.errors import CliError

# Lines with which the NSO CLI refuses a command.
_CLI_FAILURE = re.compile(r"^\s*(Error:|Aborted:|syntax error:|% Invalid|% Error)", re.MULTILINE)


class CliLost(CliError):
    """The CLI went away after the command went out (the connection dropped or timed out):
    NSO may have run it, in part or whole, and may be running it still. Not a refusal: NSO
    said nothing about how it ended. ``output`` is what arrived before the loss."""


class NsoCli:
    """The NSO CLI over SSH (paramiko): one connection, one exec channel per command.

    Host keys are trusted on first use and kept in ``<state dir>/cli_known_hosts``; a changed
    key is refused (paramiko's BadHostKeyException, surfaced as is).
    """

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.log = log or (lambda _line: None)
        self.known_hosts = config.state_path / "cli_known_hosts"
        self._client: Optional[paramiko.SSHClient] = None
        self.nso_seconds = 0.0  # time spent in NSO's CLI (connecting included)

    def connect(self, timeout: float = 60.0) -> paramiko.SSHClient:
        if self._client is not None and self._transport_ok():
            return self._client
        cfg = self.config
        if not cfg.cli_password and not cfg.key_path:
            # paramiko would say "No authentication methods available", which looks transient.
            raise CliError(
                "no way to log in to the NSO CLI: set [cli] password or key_file in the "
                "agent's configuration"
            )
        deadline = time.monotonic() + timeout
        while True:
            client = paramiko.SSHClient()
            if self.known_hosts.exists():
                client.load_host_keys(str(self.known_hosts))
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy)  # nosec B507 # trust on first use: the key is pinned in cli_known_hosts, a changed one is refused
            try:
                key_path = cfg.key_path
                client.connect(
                    cfg.cli_host,
                    cfg.cli_port,
                    username=cfg.cli_user,
                    password=cfg.cli_password,
                    key_filename=str(key_path) if key_path else None,
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                    banner_timeout=10,
                    auth_timeout=10,
                )
            except (paramiko.BadHostKeyException, paramiko.AuthenticationException) as exc:
                client.close()
                raise CliError(
                    f"NSO CLI at {cfg.cli_host}:{cfg.cli_port} refused the agent: {exc}; check "
                    f"[cli] user/password/key_file (and {self.known_hosts} if the host key "
                    "changed on purpose)"
                ) from None
            except (OSError, paramiko.SSHException) as exc:
                client.close()
                if time.monotonic() >= deadline:
                    raise CliError(
                        f"cannot reach the NSO CLI at {cfg.cli_host}:{cfg.cli_port}: {exc}; "
                        "is NSO started and [cli] host/port right?"
                    ) from None
                time.sleep(0.5)
                continue
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(self.known_hosts))
            self._client = client
            return client

    def _transport_ok(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def run(self, command: str, check: bool = True, timeout: float = 600) -> str:
        """Run one CLI command; its output. Raises CliError with NSO's lines verbatim when
        the CLI refuses it (exit status or ``Error:``/``Aborted:`` lines), and CliLost
        when the connection drops or times out after the command went out."""
        began = time.monotonic()
        try:
            return self._run(command, check, timeout)
        finally:
            self.nso_seconds += time.monotonic() - began

    def _run(self, command: str, check: bool, timeout: float) -> str:
        for attempt in (1, 2):
            try:
                transport = self.connect().get_transport()
                if transport is None:
                    raise paramiko.SSHException("no SSH transport")
                channel = transport.open_session(timeout=timeout)
                break
            except (OSError, paramiko.SSHException, EOFError) as exc:
                # NSO restarted under us before the command went out: one fresh
                # connection, then give up.
                self.close()
                if attempt == 2:
                    raise CliError(
                        f"lost the NSO CLI at {self.config.cli_host}:{self.config.cli_port} "
                        f"before '{command}' ran: {exc or type(exc).__name__}"
                    ) from None
        try:
            channel.settimeout(timeout)
            # Sends the request, then waits for the server's reply: lost in between, the
            # command may be running. Never sent again (paramiko's exec_command would).
            channel.exec_command(command)  # nosec B601 # NSO CLI commands, not a shell; names and versions in them passed agent/trust.py
            stdout, stderr = channel.makefile("r"), channel.makefile_stderr("r")
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise self._lost(command, str(exc) or type(exc).__name__) from None
        try:
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            # Sent, then lost: it may have run, in part or whole. Never sent twice: a
            # `packages ha sync` or a reload run again would do it again.
            self.close()
            raise self._lost(command, str(exc) or type(exc).__name__) from None
        if status == -1:
            # paramiko's "no exit status": the connection closed before NSO said how the
            # command ended (its reads just end), which is a loss, not a refusal.
            self.close()
            raise self._lost(command, "the connection closed before NSO ended it", out + err)
        text = (out + err).rstrip()
        self.log(f"ncs# {command}\n{text}".rstrip())
        if check and (status != 0 or _CLI_FAILURE.search(text)):
            failing = [ln for ln in text.splitlines() if _CLI_FAILURE.match(ln)]
            raise CliError(
                f"NSO CLI refused '{command}': {failing[0].strip() if failing else text[:300]}",
                text,
            )
        return text

    def _lost(self, command: str, why: str, output: str = "") -> CliLost:
        return CliLost(
            f"lost the NSO CLI at {self.config.cli_host}:{self.config.cli_port} while "
            f"'{command}' ran (it may have taken effect): {why}",
            output,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
