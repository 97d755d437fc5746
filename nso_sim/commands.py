"""``nso-sim``: build NSO artifacts, create and drive simulated hosts, inject faults."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import click

from nso_sim import beam, faults, host, installer, package_build
from nso_sim.layout import HostConfig, HostLayout, find_root
from nso_sim.package_meta import Requirement
from nso_sim.timings import DESCRIPTIONS, TIMINGS


@click.group()
def main() -> None:
    """A faithful stand-in for Cisco NSO System Installs (see docs/nso-sim.md)."""


@main.command("make-installer")
@click.argument("vsn")
@click.option("--arch", default="x86_64", type=click.Choice(installer.ARCHES))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def make_installer(vsn: str, arch: str, out_dir: str) -> None:
    """Write nso-VSN.linux.ARCH.installer.bin (self-extracting)."""
    try:
        click.echo(installer.build_installer(vsn, Path(out_dir), arch))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("make-package")
@click.argument("name")
@click.argument("version")
@click.option("--nso", required=True, help="release the package is compiled for (X.Y)")
@click.option("--ned-id", help="make a NED package with this ned-id")
@click.option("--namespace", help="YANG namespace URI of the package's module")
@click.option("--prefix", help="module prefix, the top CLI keyword (default: NAME)")
@click.option("--description")
@click.option(
    "--requires",
    multiple=True,
    metavar="NAME:MIN[:MAX]",
    help="a required-package with min-version (and max-version)",
)
@click.option(
    "--ncs-min-version",
    "ncs_min_versions",
    multiple=True,
    metavar="VSN",
    help="one per branch (default: --nso)",
)
@click.option("--ncs-max-version", "ncs_max_versions", multiple=True, metavar="VSN")
@click.option(
    "--upgrade-set",
    "upgrade_sets",
    multiple=True,
    metavar="LEAF=VALUE",
    help="add an upgrade component that sets LEAF to VALUE on the package's data when NSO "
    "loads this build in place of another",
)
@click.option("--file-prefix", help="version in the file name prefix if not --nso")
@click.option(
    "--ned-leaf",
    "ned_leaves",
    multiple=True,
    metavar="LEAF",
    help="with --ned-id: a config leaf the NED's device model defines (repeat; default: any "
    "leaf); migrating a device to this ned-id deletes the leaves it lacks",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def make_package(
    name: str,
    version: str,
    nso: str,
    ned_id: Optional[str],
    namespace: Optional[str],
    prefix: Optional[str],
    description: Optional[str],
    requires: tuple[str, ...],
    ncs_min_versions: tuple[str, ...],
    ncs_max_versions: tuple[str, ...],
    upgrade_sets: tuple[str, ...],
    file_prefix: Optional[str],
    ned_leaves: tuple[str, ...],
    out_dir: str,
) -> None:
    """Write ncs-NSO-NAME-VERSION.tar.gz with package-meta-data.xml and compiled fxs."""
    reqs = []
    for r in requires:
        req_name, _, bounds = r.partition(":")
        req_min, _, req_max = bounds.partition(":")
        if not req_name:
            raise click.BadParameter(f"--requires {r!r}: want NAME:MIN[:MAX]")
        reqs.append(Requirement(req_name, req_min or "0", req_max or None))
    sets = []
    for spec in upgrade_sets:
        leaf, sep, value = spec.partition("=")
        if not sep:
            raise click.BadParameter(f"--upgrade-set {spec!r}: want LEAF=VALUE")
        sets.append((leaf, value))
    if ned_id and not namespace:
        namespace = f"http://tail-f.com/ned/{ned_id}"
    try:
        path = package_build.build_package(
            name,
            version,
            nso,
            Path(out_dir),
            ned_id=ned_id,
            namespace=namespace,
            prefix=prefix,
            description=description,
            requires=reqs,
            ncs_min_versions=list(ncs_min_versions),
            ncs_max_versions=list(ncs_max_versions),
            upgrade_sets=sets,
            file_prefix=file_prefix,
            ned_leaves=list(ned_leaves),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(path)


@main.command("make-patch")
@click.argument("vsn")
@click.argument("patch_id")
@click.option("--module", "modules", multiple=True, required=True)
@click.option("--beam-only", is_flag=True, help="write bare .beam files, no bundle")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def make_patch(
    vsn: str, patch_id: str, modules: tuple[str, ...], beam_only: bool, out_dir: str
) -> None:
    """Write nso-VSN-patch-ID.tar.gz holding MODULE.beam files (or the bare files)."""
    try:
        for path in beam.make_patch(vsn, patch_id, list(modules), Path(out_dir), beam_only):
            click.echo(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.group("host")
def host_group() -> None:
    """Create and drive simulated hosts."""


_root = click.option("--root", required=True, type=click.Path(file_okay=False))


@host_group.command("create")
@_root
@click.option("--version", "vsn", required=True)
@click.option("--address", default="127.0.1.1", show_default=True)
@click.option("--cli-port", default=2024, show_default=True, type=int)
@click.option("--ipc-port", default=4569, show_default=True, type=int)
@click.option("--ha-port", default=4570, show_default=True, type=int)
@click.option("--ha-id", help="this node's HA id")
@click.option("--ha-node", "ha_nodes", multiple=True, metavar="ID=ADDRESS:ROLE[:failover]")
@click.option(
    "--ha-token",
    default=host.DEFAULT_HA_TOKEN,
    show_default=True,
    help="/high-availability/token: HA nodes must share it (and their crypto keys)",
)
@click.option("--enable-failover/--no-enable-failover", default=True, show_default=True)
@click.option(
    "--start-up/--no-start-up",
    default=True,
    show_default=True,
    help="ha settings start-up assume-nominal-role and join-ha",
)
@click.option("--package", "pkgs", multiple=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD")
@click.option("--authorized-key", "auth_keys", multiple=True, metavar="USER:PUBKEYFILE")
@click.option(
    "--crypto-keys",
    type=click.Path(dir_okay=False, exists=True),
    help="copy this ncs.crypto_keys (HA nodes must share keys)",
)
@click.option("--installer", "installer_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--devices", default=2, show_default=True, help="devices per NED package")
@click.option("--services", default=3, show_default=True, help="instances per service package")
@click.option(
    "--time-scale",
    type=float,
    default=None,
    help="multiplies simulated durations (default $NSO_SIM_TIME_SCALE or 1)",
)
@click.option("--installer-moves-current", is_flag=True)
@click.option(
    "--ssh-host-key",
    type=click.Path(dir_okay=False, exists=True),
    help="provision this private key as the CLI's SSH host key (else one is generated)",
)
@click.option(
    "--packages-dir-link",
    metavar="DIR",
    help="make /var/opt/ncs/packages a symlink to this host folder (e.g. /srv/ncs-packages)",
)
@click.option("--start", is_flag=True, help="start the daemon afterwards")
def host_create(
    root: str,
    vsn: str,
    address: str,
    cli_port: int,
    ipc_port: int,
    ha_port: int,
    ha_id: Optional[str],
    ha_nodes: tuple[str, ...],
    ha_token: str,
    enable_failover: bool,
    start_up: bool,
    pkgs: tuple[str, ...],
    users: tuple[str, ...],
    auth_keys: tuple[str, ...],
    crypto_keys: Optional[str],
    installer_file: Optional[str],
    devices: int,
    services: int,
    time_scale: Optional[float],
    installer_moves_current: bool,
    ssh_host_key: Optional[str],
    packages_dir_link: Optional[str],
    start: bool,
) -> None:
    """Install VSN under ROOT, write ncs.conf, keys and an initial CDB with data."""
    try:
        nodes = [host.HaNode.parse(s) for s in ha_nodes]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    user_map = {}
    for u in users:
        name, sep, password = u.partition(":")
        if not sep:
            raise click.BadParameter(f"--user {u!r}: want NAME:PASSWORD")
        user_map[name] = password
    key_map: dict[str, list[str]] = {}
    for k in auth_keys:
        name, sep, path = k.partition(":")
        if not sep:
            raise click.BadParameter(f"--authorized-key {k!r}: want USER:FILE")
        key_map.setdefault(name, []).append(Path(path).read_text())
    scale = (
        time_scale if time_scale is not None else float(os.environ.get("NSO_SIM_TIME_SCALE", "1"))
    )
    spec = host.HostSpec(
        root=Path(root),
        version=vsn,
        address=address,
        cli_port=cli_port,
        ipc_port=ipc_port,
        ha_port=ha_port,
        ha_id=ha_id,
        ha_nodes=nodes,
        ha_token=ha_token,
        enable_failover=enable_failover,
        start_up=start_up,
        packages=[Path(p) for p in pkgs],
        users=user_map,
        authorized_keys=key_map,
        crypto_keys=Path(crypto_keys) if crypto_keys else None,
        installer=Path(installer_file) if installer_file else None,
        devices_per_ned=devices,
        services_per_package=services,
        time_scale=scale,
        installer_moves_current=installer_moves_current,
        ssh_host_key=Path(ssh_host_key) if ssh_host_key else None,
        packages_dir_link=packages_dir_link,
    )
    try:
        layout = host.create_host(spec)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"host created at {layout.root}")
    if start:
        raise SystemExit(host.run_init(layout, "start"))


@host_group.command("start")
@_root
@click.option("--with-package-reload", is_flag=True)
def host_start(root: str, with_package_reload: bool) -> None:
    """Start the daemon through the host's init script."""
    verb = "start-with-package-reload" if with_package_reload else "start"
    try:
        code = host.run_init(HostLayout.at(root), verb)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


@host_group.command("stop")
@_root
def host_stop(root: str) -> None:
    """Stop the daemon through the host's init script."""
    raise SystemExit(host.run_init(HostLayout.at(root), "stop"))


@host_group.command("status")
@_root
def host_status(root: str) -> None:
    """Show the installed releases, current, and the daemon's status."""
    raise SystemExit(host.status(HostLayout.at(root)))


@host_group.command("set")
@_root
@click.option("--installer-moves-current/--installer-keeps-current", default=None)
@click.option("--time-scale", type=float)
def host_set(
    root: str, installer_moves_current: Optional[bool], time_scale: Optional[float]
) -> None:
    """Change a host's simulator knobs."""
    layout = HostLayout.at(root)
    config = HostConfig.load(layout)
    if installer_moves_current is not None:
        config.installer_moves_current = installer_moves_current
    if time_scale is not None:
        config.time_scale = time_scale
    config.save(layout)


@main.command("timings")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, name -> seconds")
def timings(as_json: bool) -> None:
    """Print the nominal seconds each slow NSO operation takes (times a host's time scale)."""
    table = TIMINGS.as_dict()
    if as_json:
        click.echo(json.dumps(table, sort_keys=True))
        return
    width = max(len(name) for name in table)
    click.echo(f"{'NAME':{width}}  {'NOMINAL S':>9}  WHAT")
    for name, seconds in table.items():
        click.echo(f"{name:{width}}  {seconds:9g}  {DESCRIPTIONS[name]}")


@main.command("copy")
@click.argument("src", type=click.Path(dir_okay=False, exists=True))
@click.argument("dst", type=click.Path())
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True),
    help="the host whose time scale applies (default: the host root DST lies in)",
)
def copy(src: str, dst: str, root: Optional[str]) -> None:
    """Copy SRC to DST (a file or a folder) taking the time an scp of it would take."""
    target = Path(dst)
    if target.is_dir():
        target = target / Path(src).name
    host_root = Path(root) if root else find_root(target.parent)
    if host_root is not None:
        scale = HostConfig.load_or_default(HostLayout.at(host_root)).time_scale
    else:
        scale = float(os.environ.get("NSO_SIM_TIME_SCALE", "1"))
    time.sleep(max(0.0, TIMINGS.copy(Path(src).stat().st_size) * scale))
    try:
        shutil.copyfile(src, target)
    except OSError as exc:
        raise click.ClickException(f"cannot copy {src} to {target}: {exc.strerror}") from None


@main.group("fault")
def fault_group() -> None:
    """Inject faults into a simulated host."""


@fault_group.command("set")
@_root
@click.argument("name", type=click.Choice(sorted(faults.FAULTS)))
@click.argument("value", required=False)
@click.option("--once", is_flag=True, help="disarm after firing once")
@click.option(
    "--skip", type=click.IntRange(min=0), default=0, help="let the first N occasions pass"
)
def fault_set(root: str, name: str, value: Optional[str], once: bool, skip: int) -> None:
    """Arm fault NAME (VALUE: an exit code, seconds or a message)."""
    parsed: object = True
    if value is not None:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
    try:
        faults.set_fault(HostLayout.at(root), name, parsed, once, skip)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@fault_group.command("clear")
@_root
@click.argument("name", required=False)
def fault_clear(root: str, name: Optional[str]) -> None:
    """Disarm fault NAME, or all faults."""
    faults.clear_fault(HostLayout.at(root), name)


@fault_group.command("list")
@_root
def fault_list(root: str) -> None:
    """Show armed faults, then every known fault."""
    armed = faults.list_faults(HostLayout.at(root))
    for name, (what, value) in sorted(faults.FAULTS.items()):
        mark = "ARMED " + json.dumps(armed[name]) if name in armed else "-"
        click.echo(f"{name:15} {mark:30} {what} (value: {value})")
