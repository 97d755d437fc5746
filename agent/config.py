"""The agent's configuration: one INI file (``/etc/nso-agent/agent.conf`` by default).

INI and ``configparser`` because the agent runs on Python 3.9, where ``tomllib`` does not
exist. Every path on the NSO host is derived from ``[host] root`` (``/`` on a real host); the
tests point it at a simulated host's root folder and the agent drives it exactly as it would
drive ``/``. Paths written in the file (``state_dir``, ``key_file``...) are host paths too,
mapped under the root.

    [server]
    url = https://nso-repo.example.net
    # ca_file = /etc/nso-agent/ca.pem   # the CA that signed the server's certificate
    # allow_insecure_http = false       # plain http beyond loopback: only on a trusted network

    [agent]
    state_dir = /var/lib/nso-agent
    poll_wait = 30
    heartbeat_interval = 60

    [host]
    root = /
    service_manager = auto          # auto | initd | systemd
    start_timeout = 1800            # seconds NSO may take to start (past systemd's 90 s)
    stop_timeout = 300

    [cli]
    host = 127.0.0.1
    port = 2024
    user = admin
    password = admin                # or key_file = /root/.ssh/id_rsa

    [trust]
    # install only releases signed by this key (docs/signed-releases.md)
    release_public_key = /etc/nso-agent/release-signing.pub
"""

from __future__ import annotations

import configparser
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from agent.errors import ConfigError
from agent.fsutil import write_atomic

DEFAULT_CONFIG = "/etc/nso-agent/agent.conf"
CONFIG_ENV = "NSO_AGENT_CONFIG"
SERVICE_MANAGERS = ("auto", "initd", "systemd")
SECTIONS = ("server", "agent", "host", "cli", "trust")


@dataclass(frozen=True)
class HostPaths:
    """Where a System Install keeps its files, under the configured root."""

    root: Path

    def path(self, host_path: str) -> Path:
        """``/var/opt/ncs`` as written on the host -> the real path under the root."""
        return self.root / host_path.lstrip("/")

    def host_path(self, real: str | os.PathLike[str]) -> str:
        """The inverse of ``path``: what an operator on the host would call this file."""
        p = Path(os.path.abspath(real))
        try:
            return "/" + str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    @property
    def install_dir(self) -> Path:
        return self.path("/opt/ncs")

    def release_dir(self, vsn: str) -> Path:
        return self.install_dir / f"ncs-{vsn}"

    @property
    def current(self) -> Path:
        return self.install_dir / "current"

    @property
    def package_store(self) -> Path:
        return self.install_dir / "packages"

    @property
    def config_dir(self) -> Path:
        return self.path("/etc/ncs")

    @property
    def ncs_conf(self) -> Path:
        return self.config_dir / "ncs.conf"

    @property
    def crypto_keys(self) -> Path:
        return self.config_dir / "ncs.crypto_keys"

    @property
    def systemd_conf(self) -> Path:
        return self.config_dir / "ncs.systemd.conf"

    @property
    def systemd_unit(self) -> Path:
        return self.path("/etc/systemd/system/ncs.service")

    @property
    def systemctl(self) -> Path:
        return self.path("/usr/bin/systemctl")

    @property
    def init_script(self) -> Path:
        return self.path("/etc/init.d/ncs")

    @property
    def run_dir(self) -> Path:
        return self.path("/var/opt/ncs")

    @property
    def cdb_dir(self) -> Path:
        return self.run_dir / "cdb"

    @property
    def load_dir(self) -> Path:
        return self.run_dir / "packages"

    @property
    def backups_dir(self) -> Path:
        return self.run_dir / "backups"

    @property
    def ncs_log(self) -> Path:
        return self.path("/var/log/ncs/ncs.log")

    def bin(self, command: str) -> Path:
        """A command of the release ``current`` points at (``ncs``, ``ncs-backup``...)."""
        return self.current / "bin" / command


@dataclass
class Config:
    server_url: str = ""
    ca_file: Optional[str] = None
    # Plain http to a host that is not loopback (agent/transport.py); warned about at start.
    allow_insecure_http: bool = False
    state_dir: str = "/var/lib/nso-agent"
    poll_wait: int = 30
    heartbeat_interval: float = 60.0
    root: str = "/"
    service_manager: str = "auto"
    start_timeout: float = 1800.0
    stop_timeout: float = 300.0
    cli_host: str = "127.0.0.1"
    cli_port: int = 2024
    cli_user: str = "admin"
    cli_password: Optional[str] = None
    cli_key_file: Optional[str] = None
    # [trust]: the release manager's Ed25519 public key (a host path); set: only signed
    # releases are installed (agent/release_signature.py).
    release_public_key: Optional[str] = None
    # Where this file was read from (enroll writes the server URL back into it).
    source: Optional[Path] = field(default=None, compare=False)

    @property
    def paths(self) -> HostPaths:
        return HostPaths(Path(os.path.abspath(self.root)))

    @property
    def state_path(self) -> Path:
        return self.paths.path(self.state_dir)

    @property
    def token_file(self) -> Path:
        return self.state_path / "node-token"

    @property
    def node_file(self) -> Path:
        return self.state_path / "node.json"

    @property
    def journal_file(self) -> Path:
        return self.state_path / "journal.json"

    @property
    def downloads_dir(self) -> Path:
        return self.state_path / "downloads"

    @property
    def ca_path(self) -> Optional[Path]:
        return self.paths.path(self.ca_file) if self.ca_file else None

    @property
    def key_path(self) -> Optional[Path]:
        return self.paths.path(self.cli_key_file) if self.cli_key_file else None

    @property
    def release_key_path(self) -> Optional[Path]:
        return self.paths.path(self.release_public_key) if self.release_public_key else None

    def uses_systemd(self) -> bool:
        """``auto``: systemd when the host has ``ncs.service`` and no init script (NSO >= 6.4)."""
        if self.service_manager == "auto":
            paths = self.paths
            return paths.systemd_unit.exists() and not paths.init_script.exists()
        return self.service_manager == "systemd"

    def read_token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"not enrolled: {self.token_file} does not exist; run "
                "'nso-agent enroll --server URL --token ENROLLMENT_TOKEN' first"
            ) from None

    def to_ini(self) -> configparser.ConfigParser:
        ini = configparser.ConfigParser()
        ini["server"] = {"url": self.server_url}
        if self.ca_file:
            ini["server"]["ca_file"] = self.ca_file
        if self.allow_insecure_http:
            ini["server"]["allow_insecure_http"] = "true"
        ini["agent"] = {
            "state_dir": self.state_dir,
            "poll_wait": str(self.poll_wait),
            "heartbeat_interval": f"{self.heartbeat_interval:g}",
        }
        ini["host"] = {
            "root": self.root,
            "service_manager": self.service_manager,
            "start_timeout": f"{self.start_timeout:g}",
            "stop_timeout": f"{self.stop_timeout:g}",
        }
        ini["cli"] = {"host": self.cli_host, "port": str(self.cli_port), "user": self.cli_user}
        if self.cli_password is not None:
            ini["cli"]["password"] = self.cli_password
        if self.cli_key_file:
            ini["cli"]["key_file"] = self.cli_key_file
        if self.release_public_key:
            ini["trust"] = {"release_public_key": self.release_public_key}
        return ini

    def save(self, path: Path) -> None:
        """Write the file (mode 0600: it may hold the CLI password)."""
        text = io.StringIO()
        self.to_ini().write(text)
        write_atomic(path, text.getvalue(), mode=0o600)
        self.source = path


def config_path(explicit: Optional[str] = None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load(path: Path) -> Config:
    ini = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    try:
        with path.open() as fh:
            ini.read_file(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"no configuration at {path}: run 'nso-agent enroll --server URL --token TOKEN "
            f"--config {path}' or write it (see docs/agent.md)"
        ) from None
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None

    def get(section: str, key: str, default: Optional[str] = None) -> Optional[str]:
        value = ini.get(section, key, fallback=default)
        return value.strip() if isinstance(value, str) and value.strip() else default

    def number(section: str, key: str, default: float) -> float:
        raw = get(section, key)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{path}: [{section}] {key} = {raw!r} is not a number") from None

    def flag(section: str, key: str) -> bool:
        raw = get(section, key)
        if raw is None:
            return False
        if raw.lower() not in ini.BOOLEAN_STATES:
            raise ConfigError(f"{path}: [{section}] {key} = {raw!r}; write true or false")
        return ini.BOOLEAN_STATES[raw.lower()]

    # [trust] decides what this agent installs as root: a section or option it does not
    # know (a typo: [Trust], release_public_keys) or an empty key path must stop it, never
    # leave it installing unsigned releases.
    unknown_sections = sorted(set(ini.sections()) - set(SECTIONS))
    if unknown_sections:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(f'[{n}]' for n in unknown_sections)}; "
            f"the sections are {', '.join(f'[{n}]' for n in SECTIONS)} (names are lower case; "
            "see agent/packaging/agent.conf.example)"
        )
    if ini.has_section("trust"):
        unknown = sorted(set(ini["trust"]) - set(ini.defaults()) - {"release_public_key"})
        if unknown:
            raise ConfigError(
                f"{path}: [trust] {', '.join(unknown)}: unknown option; the only one is "
                "release_public_key = PATH (docs/signed-releases.md)"
            )
        if ini.has_option("trust", "release_public_key") and not get("trust", "release_public_key"):
            raise ConfigError(
                f"{path}: [trust] release_public_key is empty; give the path of the release "
                "manager's public key (.pub), or remove the option to install without "
                "signatures"
            )
    cfg = Config(
        server_url=(get("server", "url") or "").rstrip("/"),
        ca_file=get("server", "ca_file"),
        allow_insecure_http=flag("server", "allow_insecure_http"),
        state_dir=get("agent", "state_dir", Config.state_dir) or Config.state_dir,
        poll_wait=int(number("agent", "poll_wait", Config.poll_wait)),
        heartbeat_interval=number("agent", "heartbeat_interval", Config.heartbeat_interval),
        root=get("host", "root", "/") or "/",
        service_manager=get("host", "service_manager", "auto") or "auto",
        start_timeout=number("host", "start_timeout", Config.start_timeout),
        stop_timeout=number("host", "stop_timeout", Config.stop_timeout),
        cli_host=get("cli", "host", Config.cli_host) or Config.cli_host,
        cli_port=int(number("cli", "port", Config.cli_port)),
        cli_user=get("cli", "user", Config.cli_user) or Config.cli_user,
        cli_password=get("cli", "password"),
        cli_key_file=get("cli", "key_file"),
        release_public_key=get("trust", "release_public_key"),
        source=path,
    )
    if cfg.service_manager not in SERVICE_MANAGERS:
        raise ConfigError(
            f"{path}: [host] service_manager = {cfg.service_manager!r}; "
            f"use one of {', '.join(SERVICE_MANAGERS)}"
        )
    if not 0 <= cfg.poll_wait <= 60:
        raise ConfigError(f"{path}: [agent] poll_wait must be 0..60 (the server's limit)")
    if cfg.release_key_path is not None:
        from agent.release_signature import load_key  # cryptography: only when configured

        load_key(cfg.release_key_path, f"{cfg.release_public_key} ({path})", cfg.release_public_key)
    return cfg
