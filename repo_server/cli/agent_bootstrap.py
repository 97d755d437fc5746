"""Install and enroll nso-agent on an NSO host over SSH (paramiko): `nso-repo agent
bootstrap HOST`.

What it does on the host, in order, each step safe to repeat:

1. checks the host's Python (3.9 or later, with venv);
2. uploads the wheelhouse (nso-fleet and the agent's dependencies: NSO networks are often
   offline, so nothing is fetched from an index) to a private temporary folder;
3. makes (or reuses) a virtual environment under ``prefix`` and installs nso-fleet into it
   from the uploaded wheels only;
4. writes the agent's configuration (mode 0600, atomically), then enrolls the agent with a
   fresh one-time token from the server, passed on stdin (never on a command line);
5. writes the systemd unit and, where systemd runs, enables and starts it; then waits for
   the node's first heartbeat.

The host key must be known (the user's and the system's known_hosts, or ``known_hosts``);
an unknown key is refused with its fingerprint unless the operator accepts it explicitly,
and a changed key is always refused. The SSH password, if any, and the NSO CLI password
come from environment variables, never from the command line.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import io
import posixpath
import shlex
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import paramiko

from repo_server.client import ApiError, RepoClient
from repo_server.errors import AppError

DISTRIBUTION = "nso_fleet"
MIN_PYTHON = (3, 9)
COMMAND_TIMEOUT = 600


class BootstrapFailed(AppError):
    status = 400  # never served over HTTP; a refusal of what was asked
    code = "bootstrap_failed"


@dataclass
class SshTarget:
    host: str
    port: int = 22
    user: str = "root"
    key_file: Optional[str] = None
    password: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_key: bool = False


@dataclass
class HostLayout:
    python: str = "python3"
    prefix: str = "/opt/nso-agent"
    config_dir: str = "/etc/nso-agent"
    unit_dir: str = "/etc/systemd/system"
    state_dir: str = "/var/lib/nso-agent"
    host_root: str = "/"
    cli_host: str = "127.0.0.1"
    cli_port: int = 2024
    cli_user: str = "admin"
    cli_password: Optional[str] = None
    ca_file: Optional[str] = None  # a local PEM file, copied to the host

    def checked(self) -> HostLayout:
        for name in ("prefix", "config_dir", "unit_dir", "state_dir", "host_root"):
            value = getattr(self, name)
            # They go into the systemd unit and agent.conf too: nothing either would read
            # otherwise (a space splits ExecStart, % is a unit specifier or an interpolation).
            if (
                not posixpath.isabs(value)
                or ".." in value.split("/")
                or any(c.isspace() or c in UNSAFE_IN_FILES for c in value)
            ):
                raise BootstrapFailed(
                    f"--{name.replace('_', '-')} {value!r} must be an absolute path without "
                    f"'..', spaces or any of {UNSAFE_IN_FILES!r}"
                )
        for name in ("cli_host", "cli_user", "cli_password"):
            value = getattr(self, name)
            if value is not None and not ini_safe(value):
                raise BootstrapFailed(
                    f"the {name.replace('_', ' ')} cannot be written to agent.conf as it is "
                    "(it starts or ends with a space, or holds '%', ' #', ' ;' or a line "
                    "break, which the agent's configuration reader would change): choose "
                    "another, or write agent.conf by hand"
                )
        return self

    @property
    def config_file(self) -> str:
        return posixpath.join(self.config_dir, "agent.conf")


UNSAFE_IN_FILES = "%\"'\\;#$`"


def ini_safe(value: str) -> bool:
    """Whether agent.conf's reader (configparser, with interpolation and inline comments)
    reads ``value`` back exactly."""
    return (
        value == value.strip()
        and "%" not in value
        and " #" not in value
        and " ;" not in value
        and not any(c in value for c in "\r\n\0")
    )


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise BootstrapFailed(
            f"the SSH host key of {hostname} is unknown ({fingerprint(key)}): nothing was done. "
            "Check that fingerprint with the host's owner (ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub on the host), then add the key to known_hosts "
            "(--known-hosts FILE) or run again with --accept-new-host-key"
        )


def wheels(wheelhouse: Path) -> list[Path]:
    found = sorted(wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []
    if not any(p.name.startswith(f"{DISTRIBUTION}-") for p in found):
        raise BootstrapFailed(
            f"the wheelhouse {wheelhouse} holds no {DISTRIBUTION} wheel: make one with "
            f"'pip wheel -w {wheelhouse} nso-fleet' (or from the source tree: 'pip wheel -w "
            f"{wheelhouse} .') on a machine that reaches a package index (docs/agent-bootstrap.md)"
        )
    return found


class Bootstrap:
    def __init__(
        self, client: RepoClient, target: SshTarget, layout: HostLayout, echo: Callable[[str], None]
    ) -> None:
        self.client = client
        self.target = target
        self.layout = layout.checked()
        self.echo = echo
        self.ssh: Optional[paramiko.SSHClient] = None

    # -- the whole procedure ------------------------------------------------------------

    def run(self, node: str, server_url: str, wheelhouse: Path, start: bool) -> dict[str, Any]:
        found = wheels(wheelhouse)
        self._connect()
        try:
            self._check_python()
            staging = self._sh("mktemp -d /tmp/nso-agent-bootstrap.XXXXXXXX").strip()
            try:
                self._upload(found, staging)
                self._install(staging)
            finally:
                self._sh(f"rm -rf -- {shlex.quote(staging)}")
            self._write_config(server_url)
            enrolled = self._enroll(node, server_url)
            unit = self._write_unit()
            before = self.client.call("GET", f"/api/v1/nodes/{node}").get("inventory_at")
            started = start and self._start()
        finally:
            self.close()
        heartbeat = self._wait_heartbeat(node, before) if started else None
        return {
            "node": node,
            "enrolled": enrolled,
            "unit": unit,
            "started": started,
            "heartbeat": heartbeat,
        }

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None

    # -- SSH ----------------------------------------------------------------------------

    def _connect(self) -> None:
        t = self.target
        ssh = paramiko.SSHClient()
        known = Path(t.known_hosts).expanduser() if t.known_hosts else None
        for path in (Path("/etc/ssh/ssh_known_hosts"), Path("~/.ssh/known_hosts").expanduser()):
            self._load_keys(ssh.load_system_host_keys, path)
        if known is not None and known.exists():
            self._load_keys(ssh.load_host_keys, known)
        ssh.set_missing_host_key_policy(
            paramiko.AutoAddPolicy() if t.accept_new_host_key else _RefuseUnknown()
        )
        try:
            ssh.connect(
                t.host,
                port=t.port,
                username=t.user,
                key_filename=t.key_file,
                password=t.password,
                look_for_keys=t.key_file is None and t.password is None,
                allow_agent=t.key_file is None and t.password is None,
                timeout=20,
                banner_timeout=20,
                auth_timeout=20,
            )
        except paramiko.BadHostKeyException as exc:
            raise BootstrapFailed(
                f"the SSH host key of {t.host} is not the one known_hosts holds (it is now "
                f"{fingerprint(exc.key)}): nothing was done. A reinstalled host has a new key; "
                "anything else may be someone in between. Find out which before you remove "
                "the old entry"
            ) from None
        except paramiko.AuthenticationException:
            raise BootstrapFailed(
                f"SSH to {t.user}@{t.host}:{t.port} refused our credentials: give the key "
                "(--ssh-key) or the password's environment variable (--ssh-password-env)"
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            raise BootstrapFailed(f"cannot open SSH to {t.host}:{t.port}: {exc}") from None
        if t.accept_new_host_key and known is not None:
            ssh.save_host_keys(str(known))
        self.ssh = ssh
        remote_key = ssh.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        self.echo(f"connected to {t.user}@{t.host}:{t.port} (host key {fingerprint(remote_key)})")

    def _client(self) -> paramiko.SSHClient:
        if self.ssh is None:
            raise BootstrapFailed("not connected to the host (a bug: report it)")
        return self.ssh

    @staticmethod
    def _load_keys(load: Callable[[str], None], path: Path) -> None:
        if not path.exists():
            return
        try:
            load(str(path))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise BootstrapFailed(
                f"cannot read the host keys in {path}: {exc}. Markers such as @revoked and "
                "@cert-authority are not supported: give a known_hosts file without them "
                "(--known-hosts)"
            ) from None

    def _sh(self, command: str, what: str = "", stdin: Optional[str] = None) -> str:
        """Run ``command`` on the host; its stdout, or BootstrapFailed with its stderr."""
        # Every value put into a command is shlex.quote()d by its caller.
        chan_in, out, err = self._client().exec_command(  # nosec B601
            command, timeout=COMMAND_TIMEOUT
        )
        if stdin is not None:
            chan_in.write(stdin)
            chan_in.flush()
        chan_in.channel.shutdown_write()
        text = out.read().decode(errors="replace")
        problem = err.read().decode(errors="replace")
        status = out.channel.recv_exit_status()
        if status != 0:
            tail = "\n".join((problem or text).strip().splitlines()[-8:])
            raise BootstrapFailed(
                f"{what or command} failed on {self.target.host} (exit {status}): {tail}"
            )
        return text

    # -- the steps ----------------------------------------------------------------------

    def _check_python(self) -> None:
        py = shlex.quote(self.layout.python)
        found = self._sh(
            f"{py} -c 'import sys, venv; print(\"%d.%d\" % sys.version_info[:2])'",
            f"looking for {self.layout.python} with venv",
        ).strip()
        version = tuple(int(x) for x in found.split(".")[:2])
        if version < MIN_PYTHON:
            raise BootstrapFailed(
                f"{self.layout.python} on {self.target.host} is Python {found}; nso-agent "
                "needs 3.9 or later (--python PATH)"
            )
        self.echo(f"{self.layout.python} is Python {found}")

    def _upload(self, found: list[Path], staging: str) -> None:
        with self._client().open_sftp() as sftp:
            for path in found:
                sftp.put(str(path), posixpath.join(staging, path.name))
        size = sum(p.stat().st_size for p in found)
        self.echo(f"uploaded {len(found)} wheels ({size / 1e6:.1f} MB)")

    def _install(self, staging: str) -> None:
        layout = self.layout
        prefix = shlex.quote(layout.prefix)
        self._sh(
            f"test -x {prefix}/bin/python || {shlex.quote(layout.python)} -m venv {prefix}",
            f"making the virtual environment {layout.prefix}",
        )
        self._sh(
            f"{prefix}/bin/python -m pip install --quiet --disable-pip-version-check "
            f"--no-index --find-links {shlex.quote(staging)} --upgrade {DISTRIBUTION}",
            "installing nso-fleet from the uploaded wheels",
        )
        version = self._sh(f"{prefix}/bin/nso-agent --version || true").strip()
        self.echo(f"installed {version or 'nso-agent'} into {layout.prefix}")

    def _write_config(self, server_url: str) -> None:
        layout = self.layout
        if not ini_safe(server_url) or any(c.isspace() for c in server_url):
            raise BootstrapFailed(f"--server-url {server_url!r} is not a URL agent.conf can hold")
        ini = configparser.ConfigParser()
        ini["server"] = {"url": server_url.rstrip("/")}
        if layout.ca_file:
            ini["server"]["ca_file"] = posixpath.join(layout.config_dir, "ca.pem")
        ini["agent"] = {"state_dir": layout.state_dir}
        ini["host"] = {"root": layout.host_root}
        ini["cli"] = {
            "host": layout.cli_host,
            "port": str(layout.cli_port),
            "user": layout.cli_user,
        }
        if layout.cli_password is not None:
            ini["cli"]["password"] = layout.cli_password
        text = io.StringIO()
        ini.write(text)
        self._sh(
            f"umask 077 && mkdir -p {shlex.quote(layout.config_dir)}", "making the config folder"
        )
        if layout.ca_file:
            self._put_text(
                posixpath.join(layout.config_dir, "ca.pem"), Path(layout.ca_file).read_text(), 0o644
            )
        self._put_text(layout.config_file, text.getvalue(), 0o600)
        self.echo(f"wrote {layout.config_file}")

    def _put_text(self, path: str, text: str, mode: int) -> None:
        """Write a file on the host atomically: a private temporary file, then a rename."""
        temporary = f"{path}.bootstrap-tmp"
        with self._client().open_sftp() as sftp:
            with sftp.open(temporary, "w") as handle:
                handle.chmod(mode)  # before a byte is written: the password never shows
                handle.write(text)
            sftp.posix_rename(temporary, path)

    def _enroll(self, node: str, server_url: str) -> str:
        try:
            answer = self.client.call("POST", f"/api/v1/nodes/{node}/enrollment-token")
        except ApiError as exc:
            if exc.status != 404:
                raise
            answer = self.client.call("POST", "/api/v1/nodes", json={"name": node})
            self.echo(f"registered node {node}")
        layout = self.layout
        out = self._sh(
            f"{shlex.quote(layout.prefix)}/bin/nso-agent --config {shlex.quote(layout.config_file)} "
            f"enroll --server {shlex.quote(server_url)} --token -",
            "nso-agent enroll",
            stdin=answer["enrollment_token"] + "\n",
        )
        self.echo(out.strip().splitlines()[0] if out.strip() else f"enrolled {node}")
        return node

    def _write_unit(self) -> str:
        layout = self.layout
        template = resources.files("agent").joinpath("packaging/nso-agent.service").read_text()
        unit = template.replace(
            "ExecStart=/usr/local/bin/nso-agent run",
            f"ExecStart={layout.prefix}/bin/nso-agent run",
        ).replace(
            "Environment=NSO_AGENT_CONFIG=/etc/nso-agent/agent.conf",
            f"Environment=NSO_AGENT_CONFIG={layout.config_file}",
        )
        if f"ExecStart={layout.prefix}/" not in unit or layout.config_file not in unit:
            raise BootstrapFailed(
                "the packaged nso-agent.service no longer has the ExecStart and Environment "
                "lines this command rewrites: a bug, report it"
            )
        path = posixpath.join(layout.unit_dir, "nso-agent.service")
        self._sh(f"mkdir -p {shlex.quote(layout.unit_dir)}", "making the unit folder")
        self._put_text(path, unit, 0o644)
        self.echo(f"wrote {path}")
        return path

    def _start(self) -> bool:
        running = self._sh("test -d /run/systemd/system && command -v systemctl || true").strip()
        if not running:
            self.echo(
                "systemd does not run on the host: start the agent with "
                f"'{self.layout.prefix}/bin/nso-agent --config {self.layout.config_file} run' "
                "under the host's service manager"
            )
            return False
        self._sh(
            "systemctl daemon-reload && systemctl enable --now nso-agent && "
            "systemctl restart nso-agent",
            "starting nso-agent (systemctl enable --now nso-agent)",
        )
        self.echo("started nso-agent (systemctl enable --now nso-agent)")
        return True

    def _wait_heartbeat(
        self, node: str, before: Optional[str], timeout: float = 90
    ) -> Optional[dict[str, Any]]:
        """The first heartbeat after the start: one newer than ``before`` (an agent that
        ran before a re-run already sent some)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.client.call("GET", f"/api/v1/nodes/{node}")
            inventory = info.get("inventory") or {}
            if info.get("inventory_at") and info.get("inventory_at") != before and inventory:
                self.echo(
                    f"heartbeat from {node}: NSO {inventory.get('running_version') or 'not running'}"
                )
                return dict(inventory)
            time.sleep(1)
        raise BootstrapFailed(
            f"{node} is enrolled and nso-agent started, but no heartbeat came within "
            f"{timeout:.0f} s: look at 'journalctl -u nso-agent' on the host"
        )
