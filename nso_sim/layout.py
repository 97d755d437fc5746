"""Where a simulated System Install keeps its files.

Every absolute path of a real System Install (``/opt/ncs``, ``/etc/ncs``, ``/var/opt/ncs``,
``/var/log/ncs``, ``/etc/init.d/ncs``) lives under a per-host root folder, so many hosts share
one machine. Simulator-only state (knobs, faults, the daemon's pid) lives in ``<root>/.nso-sim``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

SIM_DIR = ".nso-sim"
HOST_FILE = "host.json"


@dataclass(frozen=True)
class HostLayout:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> HostLayout:
        return cls(Path(os.path.abspath(root)))

    # /opt/ncs
    @property
    def install_dir(self) -> Path:
        return self.root / "opt" / "ncs"

    def release_dir(self, vsn: str) -> Path:
        return self.install_dir / f"ncs-{vsn}"

    @property
    def current(self) -> Path:
        return self.install_dir / "current"

    @property
    def package_store(self) -> Path:
        return self.install_dir / "packages"

    # /etc
    @property
    def config_dir(self) -> Path:
        return self.root / "etc" / "ncs"

    @property
    def ncs_conf(self) -> Path:
        return self.config_dir / "ncs.conf"

    @property
    def crypto_keys(self) -> Path:
        return self.config_dir / "ncs.crypto_keys"

    @property
    def init_script(self) -> Path:
        return self.root / "etc" / "init.d" / "ncs"

    # /var/opt/ncs and /var/log/ncs
    @property
    def run_dir(self) -> Path:
        return self.root / "var" / "opt" / "ncs"

    @property
    def cdb_dir(self) -> Path:
        return self.run_dir / "cdb"

    @property
    def load_dir(self) -> Path:
        return self.run_dir / "packages"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    @property
    def backups_dir(self) -> Path:
        return self.run_dir / "backups"

    def homes_dir(self, user: str) -> Path:
        return self.run_dir / "homes" / user

    @property
    def log_dir(self) -> Path:
        return self.root / "var" / "log" / "ncs"

    @property
    def ncs_log(self) -> Path:
        return self.log_dir / "ncs.log"

    # simulator-only
    @property
    def sim_dir(self) -> Path:
        return self.root / SIM_DIR

    @property
    def host_file(self) -> Path:
        return self.sim_dir / HOST_FILE

    @property
    def faults_file(self) -> Path:
        return self.sim_dir / "faults.json"

    @property
    def pid_file(self) -> Path:
        return self.sim_dir / "ncs.pid"

    @property
    def exit_file(self) -> Path:
        """How the last daemon that held CDB ended (pid, status), for ``systemctl status``."""
        return self.sim_dir / "ncs.exit"

    def current_release(self) -> Optional[Path]:
        """The release folder ``current`` points at, or None when it is missing or dangling."""
        if not self.current.exists():
            return None
        return Path(os.path.realpath(self.current))

    def installed_versions(self) -> list[str]:
        if not self.install_dir.is_dir():
            return []
        return sorted(
            p.name[len("ncs-") :]
            for p in self.install_dir.iterdir()
            if p.name.startswith("ncs-") and (p / "VERSION").is_file()
        )

    def host_path(self, path: str) -> Path:
        """Map an absolute path as written on a real host (``/var/opt/ncs/x``) into the root."""
        p = Path(path)
        if str(p).startswith(str(self.root) + os.sep) or p == self.root:
            return p
        if p.is_absolute():
            return self.root / str(p).lstrip("/")
        return self.run_dir / p

    def find_file(self, path: str) -> Path:
        """A file an operator names: under the root first, else as given (shared artifacts)."""
        mapped = self.host_path(path)
        return mapped if mapped.exists() or not Path(path).exists() else Path(path)


def release_version(release_dir: Path) -> str:
    return (release_dir / "VERSION").read_text().strip()


def root_of_release_file(path: str) -> Path:
    """``<root>/opt/ncs/ncs-VSN/bin/ncs`` (even reached through ``current``) -> ``<root>``."""
    return Path(os.path.realpath(path)).parents[4]


def find_root(start: Path) -> Optional[Path]:
    """Walk up from ``start`` to the folder holding ``.nso-sim/host.json``."""
    here = Path(os.path.abspath(start))
    for candidate in (here, *here.parents):
        if (candidate / SIM_DIR / HOST_FILE).is_file():
            return candidate
    return None


def hash_password(password: str, salt: Optional[str] = None) -> str:
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 10_000).hex()
    return f"pbkdf2-sha256${salt}${digest}"


def check_password(stored: str, password: str) -> bool:
    try:
        _, salt, _digest = stored.split("$", 2)
    except ValueError:
        return False
    return secrets.compare_digest(stored, hash_password(password, salt))


@dataclass
class HostConfig:
    """Simulator knobs of one host (``<root>/.nso-sim/host.json``); not part of real NSO."""

    address: str = "127.0.1.1"
    ha_id: Optional[str] = None
    # Multiplies every simulated duration: 0.01 makes a "95 s" start take about 1 s.
    time_scale: float = 1.0
    # Whether the installer re-points an existing /opt/ncs/current (undocumented upstream).
    installer_moves_current: bool = False
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, layout: HostLayout) -> HostConfig:
        data: dict[str, Any] = json.loads(layout.host_file.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def load_or_default(cls, layout: HostLayout) -> HostConfig:
        """The host's knobs, or the defaults (time scale 1) for a root that has none yet."""
        return cls.load(layout) if layout.host_file.exists() else cls()

    def save(self, layout: HostLayout) -> None:
        write_json_atomic(layout.host_file, asdict(self))

    def scaled(self, nominal_seconds: float) -> float:
        return max(0.0, nominal_seconds * self.time_scale)


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write beside the target and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
