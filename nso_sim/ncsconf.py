"""``/etc/ncs/ncs.conf`` and ``/etc/ncs/ncs.crypto_keys``: writing, reading, start-up checks."""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET  # nosec B405 # the simulator, run by tests and demos only: reads the ncs.conf of a simulated host
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nso_sim import versions
from nso_sim.layout import HostLayout

NCS_CONFIG_NS = "http://tail-f.com/yang/tailf-ncs-config"

# Elements removed from ncs.conf in a release: start-up stops with exit 21 (nso-behaviour.md).
REMOVED_ELEMENTS = {"show-log-directory": "5.5", "large-scale": "5.6"}

DEFAULT_IPC_PORT = 4569
DEFAULT_HA_PORT = 4570
DEFAULT_CLI_PORT = 2024
# NSO listens on every address when ncs.conf names none; simulated hosts in tests name one.
ANY_ADDRESS = "0.0.0.0"  # nosec B104 # a default read from ncs.conf, as NSO has it

# ``AES256CFB128_KEY[1]``: a key of generation 1 in the rotatable ncs.crypto_keys form.
_GENERATION_KEY = re.compile(r"^(\w+)\[(-?\d+)\]$")


class ConfError(Exception):
    """ncs.conf cannot be used: the daemon exits 21."""


def render(address: str, cli_port: int, ipc_port: int, ha_port: int, ha_enabled: bool) -> str:
    ha = "true" if ha_enabled else "false"
    return f"""<!-- -*- nxml -*- -->
<!-- ncs.conf written by nso-sim for a simulated System Install -->
<ncs-config xmlns="{NCS_CONFIG_NS}">
  <ncs-ipc-address>
    <ip>{address}</ip>
    <port>{ipc_port}</port>
  </ncs-ipc-address>
  <load-path>
    <dir>${{NCS_RUN_DIR}}/packages</dir>
    <dir>${{NCS_DIR}}/etc/ncs</dir>
  </load-path>
  <state-dir>${{NCS_RUN_DIR}}/state</state-dir>
  <cdb>
    <db-dir>${{NCS_RUN_DIR}}/cdb</db-dir>
  </cdb>
  <rollback>
    <enabled>true</enabled>
    <directory>${{NCS_RUN_DIR}}/rollbacks</directory>
  </rollback>
  <encrypted-strings>
    <external-keys>
      <command>${{NCS_DIR}}/bin/ncs_crypto_keys</command>
      <command-argument>${{NCS_CONFIG_DIR}}/ncs.crypto_keys</command-argument>
    </external-keys>
  </encrypted-strings>
  <logs>
    <ncs-log>
      <enabled>true</enabled>
      <file>
        <name>${{NCS_LOG_DIR}}/ncs.log</name>
        <enabled>true</enabled>
      </file>
    </ncs-log>
  </logs>
  <cli>
    <ssh>
      <enabled>true</enabled>
      <ip>{address}</ip>
      <port>{cli_port}</port>
    </ssh>
  </cli>
  <ha>
    <enabled>{ha}</enabled>
    <ip>{address}</ip>
    <port>{ha_port}</port>
  </ha>
</ncs-config>
"""


@dataclass
class NcsConf:
    ipc_address: str
    ipc_port: int
    cli_address: str
    cli_port: int
    ha_enabled: bool
    ha_address: str
    ha_port: int
    load_path: list[Path]
    cdb_dir: Path
    state_dir: Path
    crypto_keys: Path
    element_names: set[str]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, path: str) -> Optional[ET.Element]:
    node: Optional[ET.Element] = root
    for part in path.split("/"):
        if node is None:
            return None
        node = next((c for c in node if _local(c.tag) == part), None)
    return node


def _text(root: ET.Element, path: str, default: str) -> str:
    node = _find(root, path)
    return default if node is None or node.text is None else node.text.strip()


def expand(layout: HostLayout, value: str) -> Path:
    """Expand ``${NCS_*}`` the way the real daemon does, then map into the host root."""
    variables = {
        "NCS_DIR": "/opt/ncs/current",
        "NCS_RUN_DIR": "/var/opt/ncs",
        "NCS_CONFIG_DIR": "/etc/ncs",
        "NCS_LOG_DIR": "/var/log/ncs",
    }
    value = re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), value)
    return layout.host_path(value)


def load(layout: HostLayout, path: Optional[Path] = None) -> NcsConf:
    path = path or layout.ncs_conf
    try:
        root = ET.parse(path).getroot()  # nosec B314 # the simulator, run by tests and demos only: the ncs.conf of a simulated host
    except FileNotFoundError:
        raise ConfError(f"{path}: no such file") from None
    except ET.ParseError as exc:
        raise ConfError(f"{path}: {exc}") from None
    names = {_local(el.tag) for el in root.iter()}
    load_path_el = _find(root, "load-path")
    dirs = [] if load_path_el is None else [d.text or "" for d in load_path_el]
    try:
        return NcsConf(
            ipc_address=_text(root, "ncs-ipc-address/ip", "127.0.0.1"),
            ipc_port=int(_text(root, "ncs-ipc-address/port", str(DEFAULT_IPC_PORT))),
            cli_address=_text(root, "cli/ssh/ip", ANY_ADDRESS),
            cli_port=int(_text(root, "cli/ssh/port", str(DEFAULT_CLI_PORT))),
            ha_enabled=_text(root, "ha/enabled", "false") == "true",
            ha_address=_text(root, "ha/ip", ANY_ADDRESS),
            ha_port=int(_text(root, "ha/port", str(DEFAULT_HA_PORT))),
            load_path=[expand(layout, d.strip()) for d in dirs if d.strip()],
            cdb_dir=expand(layout, _text(root, "cdb/db-dir", "${NCS_RUN_DIR}/cdb")),
            state_dir=expand(layout, _text(root, "state-dir", "${NCS_RUN_DIR}/state")),
            crypto_keys=expand(
                layout,
                _text(
                    root,
                    "encrypted-strings/external-keys/command-argument",
                    "${NCS_CONFIG_DIR}/ncs.crypto_keys",
                ),
            ),
            element_names=names,
        )
    except ValueError as exc:
        raise ConfError(f"{path}: {exc}") from None


def check_for_release(conf: NcsConf, vsn: str) -> None:
    for element, removed_in in REMOVED_ELEMENTS.items():
        if element in conf.element_names and versions.at_least(vsn, removed_in):
            raise ConfError(f"/ncs-config/{element}: unknown element (removed in NSO {removed_in})")


def generate_crypto_keys() -> str:
    return f"AESCFB128_KEY={secrets.token_hex(16)}\nAES256CFB128_KEY={secrets.token_hex(32)}\n"


def read_crypto_keys(path: Path) -> dict[str, str]:
    """The active keys of ``ncs.crypto_keys``.

    Two forms exist: plain ``AES256CFB128_KEY=<hex>`` lines, and the rotatable form that
    starts with ``EXTERNAL_KEY_FORMAT=2`` and names a generation per key
    (``AES256CFB128_KEY[0]=<hex>``); there the highest generation is the active one.
    """
    plain: dict[str, str] = {}
    generations: dict[int, dict[str, str]] = {}
    for line in path.read_text().splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        match = _GENERATION_KEY.match(name)
        if match:
            generations.setdefault(int(match.group(2)), {})[match.group(1)] = value
        else:
            plain[name] = value
    if plain.get("EXTERNAL_KEY_FORMAT") == "2" and generations:
        return {**generations[max(generations)], "EXTERNAL_KEY_FORMAT": "2"}
    return plain


def check_crypto_keys(path: Path, vsn: str) -> dict[str, str]:
    try:
        keys = read_crypto_keys(path)
    except FileNotFoundError:
        raise ConfError(f"{path}: no such file (encrypted-strings/external-keys)") from None
    if versions.at_least(vsn, "5.3") and "AES256CFB128_KEY" not in keys:
        raise ConfError(f"{path}: AES256CFB128_KEY missing, required from NSO 5.3")
    return keys
