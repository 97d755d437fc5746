"""``nso-sim host create|start|stop|status``: set up and drive one simulated host."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from nso_sim import encrypted_strings, ncsconf, systemd
from nso_sim.cdb import CdbStore, Tree
from nso_sim.installer import HOST_KEY, _split, build_installer, install
from nso_sim.layout import HostConfig, HostLayout, hash_password
from nso_sim.package_meta import PackageInfo, read_package

# INVENTED default, so that hosts made alike form a cluster as Cisco's examples configure it.
DEFAULT_HA_TOKEN = "nso-sim-ha-token"  # nosec B105 # a simulated cluster's shared HA token, no secret


@dataclass
class HaNode:
    node_id: str
    address: str
    role: str  # primary | secondary | none
    failover_primary: bool = False

    @classmethod
    def parse(cls, spec: str) -> HaNode:
        """``n1=127.0.1.1:primary`` or ``n2=127.0.1.2:secondary:failover``."""
        try:
            node_id, rest = spec.split("=", 1)
            parts = rest.split(":")
            address, role = parts[0], parts[1]
        except (ValueError, IndexError):
            raise ValueError(f"bad --ha-node {spec!r}; want ID=ADDRESS:ROLE[:failover]") from None
        if role not in ("primary", "secondary", "none"):
            raise ValueError(f"bad role {role!r} in --ha-node {spec!r}")
        return cls(node_id, address, role, "failover" in parts[2:])


@dataclass
class HostSpec:
    root: Path
    version: str
    address: str = "127.0.1.1"
    cli_port: int = ncsconf.DEFAULT_CLI_PORT
    ipc_port: int = ncsconf.DEFAULT_IPC_PORT
    ha_port: int = ncsconf.DEFAULT_HA_PORT
    ha_id: Optional[str] = None
    ha_nodes: list[HaNode] = field(default_factory=list)
    # /high-availability/token, the secret HA nodes must share (stored encrypted).
    ha_token: str = DEFAULT_HA_TOKEN
    enable_failover: bool = True
    start_up: bool = True
    packages: list[Path] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)
    authorized_keys: dict[str, list[str]] = field(default_factory=dict)
    crypto_keys: Optional[Path] = None
    installer: Optional[Path] = None
    devices_per_ned: int = 2
    services_per_package: int = 3
    time_scale: float = 1.0
    installer_moves_current: bool = False
    # A provisioned SSH host key for the CLI (else the installer generates one).
    ssh_host_key: Optional[Path] = None
    # A host path (``/srv/ncs-packages``): /var/opt/ncs/packages becomes a symlink to it.
    packages_dir_link: Optional[str] = None


def create_host(spec: HostSpec) -> HostLayout:
    layout = HostLayout.at(spec.root)
    if layout.host_file.exists():
        raise FileExistsError(f"{layout.root} already holds a simulated host")
    link_target = load_dir_link_target(layout, spec.packages_dir_link)
    layout.sim_dir.mkdir(parents=True, exist_ok=True)
    users = spec.users or {"admin": "admin"}
    HostConfig(
        address=spec.address,
        ha_id=spec.ha_id,
        time_scale=spec.time_scale,
        installer_moves_current=spec.installer_moves_current,
        users={u: hash_password(p) for u, p in users.items()},
    ).save(layout)

    if spec.ssh_host_key is not None:
        key = layout.config_dir / HOST_KEY
        key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(spec.ssh_host_key, key)
        key.chmod(0o600)
    installer = spec.installer or build_installer(spec.version, layout.sim_dir / "installers")
    install(layout, _split(installer))
    if link_target is not None:
        link_load_dir(layout, link_target)

    layout.ncs_conf.write_text(
        ncsconf.render(
            spec.address, spec.cli_port, spec.ipc_port, spec.ha_port, bool(spec.ha_nodes)
        )
    )
    if spec.crypto_keys is not None:
        shutil.copy(spec.crypto_keys, layout.crypto_keys)
    for user in users:
        ssh_dir = layout.homes_dir(user) / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        keys = spec.authorized_keys.get(user, [])
        (ssh_dir / "authorized_keys").write_text("".join(k.strip() + "\n" for k in keys))

    infos: list[PackageInfo] = []
    for pkg in spec.packages:
        stored = layout.package_store / pkg.name
        shutil.copy(pkg, stored)
        link = layout.load_dir / pkg.name
        if not link.is_symlink():
            link.symlink_to(stored)
        infos.append(read_package(stored))

    tree = initial_data(spec, infos)
    if spec.ha_nodes:
        crypto = ncsconf.read_crypto_keys(layout.crypto_keys)
        tree["high-availability"]["token"] = encrypted_strings.encrypt(crypto, spec.ha_token)
    CdbStore(layout.cdb_dir).write_snapshot(tree, 1)
    return layout


def load_dir_link_target(layout: HostLayout, host_path: Optional[str]) -> Optional[Path]:
    """Where ``--packages-dir-link`` points: "/srv/ncs-packages" and "srv/ncs-packages" both
    mean <root>/srv/ncs-packages."""
    if not host_path:
        return None
    target = layout.host_path("/" + host_path.lstrip("/"))
    if target == layout.load_dir or layout.load_dir in target.parents:
        raise ValueError(f"--packages-dir-link {host_path!r}: must lie outside the load path")
    return target


def link_load_dir(layout: HostLayout, target: Path) -> None:
    """Make the load path a symlink to a folder elsewhere, as operators do when
    /var/opt/ncs lives on another volume; the package links then live in that folder."""
    target.mkdir(parents=True, exist_ok=True)
    if layout.load_dir.is_symlink():
        layout.load_dir.unlink()
    elif layout.load_dir.is_dir():
        for entry in layout.load_dir.iterdir():
            entry.rename(target / entry.name)
        layout.load_dir.rmdir()
    layout.load_dir.symlink_to(target)


def initial_data(spec: HostSpec, infos: list[PackageInfo]) -> Tree:
    """Devices for each NED and service instances for each service package, plus HA config."""
    tree: Tree = {}
    devices: dict[str, dict[str, object]] = {}
    n = 0
    for info in infos:
        for ned_id in info.ned_ids:
            for i in range(1, spec.devices_per_ned + 1):
                n += 1
                devices[f"{info.name}-{i}"] = {
                    "address": f"10.0.{n // 250}.{n % 250 + 1}",
                    "port": "830",
                    "authgroup": "default",
                    "device-type": {"netconf": {"ned-id": ned_id}},
                    "state": {"admin-state": "unlocked"},
                    "config": {"hostname": f"{info.name}-{i}", "mtu": "1500"},
                }
    if devices:
        tree["devices"] = {"device": devices}
    first_device = next(iter(devices), "none")
    for info in infos:
        if info.is_ned:
            continue
        for fxs in info.fxs:
            tree[fxs.prefix] = {
                f"{fxs.prefix}-{i}": {"customer": f"customer-{i}", "device": first_device}
                for i in range(1, spec.services_per_package + 1)
            }
    if spec.ha_nodes:
        nodes = {}
        for node in spec.ha_nodes:
            entry = {"address": node.address, "nominal-role": node.role}
            if node.failover_primary:
                entry["failover-primary"] = "true"
            nodes[node.node_id] = entry
        settings: dict[str, object] = {
            "enable-failover": "true" if spec.enable_failover else "false"
        }
        if spec.start_up:
            settings["start-up"] = {"assume-nominal-role": "true", "join-ha": "true"}
        tree["high-availability"] = {"ha-node": nodes, "settings": settings}
    return tree


def run_init(layout: HostLayout, verb: str) -> int:
    """Run ``<root>/etc/init.d/ncs VERB`` exactly as an operator would, or ``systemctl VERB
    ncs`` on a host whose only service manager is systemd (NSO >= 6.4)."""
    if not layout.init_script.exists() and systemd.unit_path(layout).exists():
        if verb.endswith("-with-package-reload"):
            raise ValueError("with systemd, set NCS_RELOAD_PACKAGES in /etc/ncs/ncs.systemd.conf")
        argv = [str(layout.root / "usr" / "bin" / "systemctl"), verb, "ncs"]
    else:
        argv = [str(layout.init_script), verb]
    return subprocess.call(argv)  # nosec B603 # the simulator, run by tests and demos only: the host's own script, no shell


def status(layout: HostLayout) -> int:
    current = layout.current_release()
    print(f"root: {layout.root}")
    print(f"installed: {' '.join(layout.installed_versions()) or '-'}")
    print(f"current: {current.name if current else '-'}")
    if current is None:
        return 1
    argv = [str(layout.current / "bin" / "ncs"), "--status"]
    return subprocess.call(argv)  # nosec B603 # the simulator, run by tests and demos only: the host's own script, no shell
