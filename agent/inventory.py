"""The heartbeat's inventory (docs/agent-protocol.md, "Heartbeat and inventory").

Every field is best effort: a fact that cannot be read is left out (or null), never a reason
to skip the heartbeat, since the server needs ``running_version`` and ``status`` above all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import subprocess
import xml.etree.ElementTree as ET  # nosec B405 # parses ncs.conf only, see _read_conf
from typing import Any, Optional

from agent import packages as pkgs
from agent.config import Config
from agent.errors import AgentError
from agent.nso import STARTED, Nso
from agent.patch_bundle import LoadedPatch


def _os_release(path: str) -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open(path) as fh:
            for line in fh:
                if "=" in line:
                    key, value = line.rstrip("\n").split("=", 1)
                    info[key.lower()] = value.strip().strip('"')
    except OSError:
        pass
    return {k: info[k] for k in ("id", "version_id") if k in info}


def _java_version() -> Optional[str]:
    try:
        out = subprocess.run(  # nosec B603, B607 # fixed argv, no shell: java from root's PATH, as NSO finds it
            ["java", "-version"], capture_output=True, text=True, timeout=20
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "([^"]+)"', out)
    return match.group(1) if match else None


def _glibc() -> Optional[str]:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None
    return value.split()[-1] if value else None


def _disk_free(path: str) -> Optional[int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _dir_size(path: str) -> Optional[int]:
    """Bytes in the files under ``path``; None (unknown) when a folder cannot be read."""
    total = 0
    failed: list[OSError] = []
    if not os.path.isdir(path):
        return None
    for base, _dirs, files in os.walk(path, onerror=failed.append):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # gone since it was listed
                total += os.lstat(os.path.join(base, name)).st_size
    return None if failed else total


def _read_conf(path: str) -> Optional[ET.Element]:
    """ncs.conf's root element; None (unknown) when it cannot be read."""
    try:
        return ET.parse(path).getroot()  # nosec B314 # ncs.conf is root's own file on this host, not input from the server; expat >= 2.4.1 stops entity bombs and etree fetches no external entities
    except (OSError, ET.ParseError):
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _conf_children(el: ET.Element, *path: str) -> list[ET.Element]:
    """The elements at ``path`` below ``el``, by local name (ncs.conf has a namespace)."""
    found = [el]
    for part in path:
        found = [c for f in found for c in f if _local(c.tag) == part]
    return found


def _load_paths(root: ET.Element) -> list[str]:
    """``/ncs-config/load-path/dir`` as written (``${NCS_RUN_DIR}/packages``): HA members
    must load packages from the same places (``packages ha sync`` refuses otherwise)."""
    return [(d.text or "").strip() for d in _conf_children(root, "load-path", "dir")]


# ncs.conf's variables as an NSO System Install sets them (its init script and unit).
_CONF_VARIABLES = {
    "NCS_DIR": "/opt/ncs/current",
    "NCS_CONFIG_DIR": "/etc/ncs",
    "NCS_RUN_DIR": "/var/opt/ncs",
    "NCS_LOG_DIR": "/var/log/ncs",
}


def _crypto_keys_fingerprint(config: Config, root: ET.Element) -> Optional[str]:
    """``sha256:<hex>`` of the keys file ncs.conf names (``encrypted-strings/external-keys/
    command-argument``): HA members must hold the same keys, and the server compares this,
    never the key material. None when ncs.conf names no file or it cannot be read."""
    named = _conf_children(root, "encrypted-strings", "external-keys", "command-argument")
    if not named or not (named[0].text or "").strip():
        return None
    host_path = re.sub(
        r"\$\{(\w+)\}",
        lambda m: _CONF_VARIABLES.get(m.group(1), m.group(0)),
        (named[0].text or "").strip(),
    )
    if "${" in host_path or not host_path.startswith("/"):
        return None  # a variable this agent does not know: unknown, not guessed
    try:
        data = config.paths.path(host_path).read_bytes()
    except OSError:
        return None
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _crypto_keys(path: str) -> Optional[list[str]]:
    """Key names in ncs.crypto_keys; None (unknown) when the file cannot be read."""
    try:
        with open(path) as fh:
            return sorted(
                line.split("=", 1)[0].strip()
                for line in fh
                if "=" in line and not line.lstrip().startswith("#")
            )
    except OSError:
        return None


def _packages(config: Config, oper: dict[str, str]) -> list[dict[str, Any]]:
    """The load path's packages; ``oper_status`` only where NSO told it (absent: unknown)."""
    load_dir = config.paths.load_dir
    out = []
    for entry, target in pkgs.current_links(load_dir).items():
        path = load_dir / entry
        name, version = pkgs.package_identity(path)
        item: dict[str, Any] = {"name": name, "version": version, "file": entry}
        if target:
            item["target"] = config.paths.host_path(path.resolve())
        if name in oper:
            item["oper_status"] = oper[name]
        out.append(item)
    return out


def _patches(config: Config, loaded: Optional[dict[str, LoadedPatch]]) -> list[dict[str, Any]]:
    """The patches of the release ``current`` points at: each module with a file in its
    ``lib/ncs/patches/`` or loaded by NSO. ``loaded`` (with NSO's patch id and release)
    only where NSO's listing was read (None: unknown, left out); ``file`` null for a module
    NSO still runs whose file is gone."""
    folder = config.paths.current / "lib" / "ncs" / "patches"
    files = {p.stem: p.name for p in sorted(folder.glob("*.beam"))} if folder.is_dir() else {}
    out = []
    for module in sorted(set(files) | set(loaded or {})):
        item: dict[str, Any] = {"module": module, "file": files.get(module)}
        if loaded is not None:
            row = loaded.get(module)
            item["loaded"] = row is not None
            if row is not None:
                item["patch_id"] = row.patch_id
                item["nso_version"] = row.version
        out.append(item)
    return out


def _run_dir_bytes(config: Config) -> Optional[int]:
    """What a restore point copies: the run dir without its backups (None: unknown)."""
    paths = config.paths
    total = 0
    try:
        names = os.listdir(paths.run_dir)
    except OSError:
        return None
    for name in names:
        if name == paths.backups_dir.name:
            continue
        entry = paths.run_dir / name
        size = _dir_size(str(entry)) if entry.is_dir() else _file_size(entry)
        if size is None:
            return None
        total += size
    return total


def _file_size(path: os.PathLike[str]) -> Optional[int]:
    try:
        return os.lstat(path).st_size
    except OSError:
        return None


def collect(config: Config, with_cli: bool = True) -> dict[str, Any]:
    """The inventory. A fact that cannot be read is left out, never guessed: the server
    refuses to plan on unknowns (an empty list would read as "none")."""
    paths = config.paths
    nso = Nso(config)
    errors: list[str] = []
    try:
        status, running = nso.daemon()
    except AgentError as exc:  # unknown, not "stopped": the server refuses to plan on it
        status, running = "unknown", None
        errors.append(str(exc))
    inv: dict[str, Any] = {
        "installed_releases": nso.installed_releases(),
        "current": nso.current_version(),
        "running_version": running if status == STARTED else None,
        "status": status,
        "disk_free_bytes": {
            "/opt/ncs": _disk_free(str(paths.install_dir)),
            "/var/opt/ncs": _disk_free(str(paths.run_dir)),
        },
        "os": _os_release(str(paths.path("/etc/os-release")))
        or _os_release("/etc/os-release")
        or {"id": platform.system().lower()},
        "java": _java_version(),
        "glibc": _glibc(),
    }
    for key, size in (
        ("cdb_bytes", _dir_size(str(paths.cdb_dir))),
        ("run_dir_bytes", _run_dir_bytes(config)),
    ):
        if size is not None:
            inv[key] = size
    conf = _read_conf(str(paths.ncs_conf))
    if conf is not None:
        inv["ncs_conf_elements"] = sorted({_local(el.tag) for el in conf.iter()})
        inv["load_paths"] = _load_paths(conf)
        keys_fingerprint = _crypto_keys_fingerprint(config, conf)
        if keys_fingerprint is not None:
            inv["crypto_keys_fingerprint"] = keys_fingerprint
    keys = _crypto_keys(str(paths.crypto_keys))
    if keys is not None:
        inv["crypto_keys"] = keys
    oper: dict[str, str] = {}
    loaded: Optional[dict[str, LoadedPatch]] = None
    if with_cli and status == STARTED:
        try:
            oper = nso.packages_oper_status()
            inv["ha"] = dict(nso.show_ha_status())
            loaded = nso.loaded_patches()
        except AgentError as exc:
            inv["cli_error"] = str(exc)
        finally:
            nso.close()
    inv["packages"] = _packages(config, oper)
    inv["patches"] = _patches(config, loaded)
    if errors:
        inv["errors"] = errors
    return inv
