"""``nso-sim make-installer`` and what the installer does when run on a host.

The installer is a real self-extracting file: a short ``sh`` header followed by a tar.gz of
the release folder. The header hands itself to the simulator's Python, which unpacks the
payload into ``<root>/opt/ncs/ncs-<VSN>``. The host root is, in order: ``--root DIR``,
``$NSO_SIM_ROOT``, the nearest folder above the working directory holding ``.nso-sim/``,
the nearest such folder above the installer file.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

from nso_sim import faults, ncsconf, scripts, systemd, versions
from nso_sim.archive import Files, UnsafeArchive, check_member, reproducible_targz
from nso_sim.layout import HostConfig, HostLayout, find_root
from nso_sim.timings import TIMINGS

MARKER = b"__NSO_SIM_PAYLOAD__\n"
ARCHES = ("x86_64", "arm64")
SYSTEMD_FROM = "6.4"
# The CLI's SSH host key, under /etc/ncs (any type paramiko reads; generated as RSA).
HOST_KEY = "ssh/ssh_host_rsa_key"


def installer_name(vsn: str, arch: str = "x86_64") -> str:
    return f"nso-{vsn}.linux.{arch}.installer.bin"


def _header(vsn: str, arch: str) -> bytes:
    return (
        f"""#!/bin/sh
# NSO {vsn} installer for linux.{arch} (simulated by nso-sim).
# Usage: sh {installer_name(vsn, arch)} --system-install [--non-interactive] [--root DIR]
# A tar.gz of the release follows the marker line below.
exec '{sys.executable}' -c 'import sys; sys.path.insert(0, sys.argv[1]); \
from nso_sim.installer import run_installer; sys.exit(run_installer(sys.argv[2], sys.argv[3:]))' \
'{scripts.SIM_PATH}' "$0" "$@"
""".encode()
        + MARKER
    )


def _payload(vsn: str) -> bytes:
    top = f"ncs-{vsn}"
    files: Files = {
        "VERSION": (f"{vsn}\n".encode(), 0o644),
        "ncsrc": (scripts.ncsrc(vsn).encode(), 0o644),
        "etc/ncs/ncs.conf": (
            ncsconf.render(
                "127.0.0.1",
                ncsconf.DEFAULT_CLI_PORT,
                ncsconf.DEFAULT_IPC_PORT,
                ncsconf.DEFAULT_HA_PORT,
                False,
            ).encode(),
            0o644,
        ),
        "etc/init.d/ncs": (scripts.INIT_SCRIPT.encode(), 0o755),
        "lib/ncs/patches/.keep": (b"", 0o644),
    }
    for command in scripts.BIN_COMMANDS:
        files[f"bin/{command}"] = (scripts.bin_script(command, vsn).encode(), 0o755)
    return reproducible_targz({f"{top}/{rel}": entry for rel, entry in files.items()})


def build_installer(vsn: str, out_dir: Path, arch: str = "x86_64") -> Path:
    if not versions.is_valid(vsn):
        raise ValueError(f"bad NSO version {vsn!r}")
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / installer_name(vsn, arch)
    target.write_bytes(_header(vsn, arch) + _payload(vsn))
    target.chmod(0o755)
    return target


def _split(installer: Path) -> bytes:
    data = installer.read_bytes()
    at = data.find(MARKER)
    if at < 0:
        raise ValueError(f"{installer}: not an nso-sim installer (no payload)")
    return data[at + len(MARKER) :]


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="installer.bin", add_help=True)
    p.add_argument("--system-install", action="store_true")
    p.add_argument("--local-install", metavar="DIR")
    p.add_argument("--non-interactive", action="store_true")
    p.add_argument("--run-as-user")
    p.add_argument("--install-dir", default="/opt/ncs")
    p.add_argument("--config-dir", default="/etc/ncs")
    p.add_argument("--run-dir", default="/var/opt/ncs")
    p.add_argument("--log-dir", default="/var/log/ncs")
    p.add_argument("--ignore-init-scripts", action="store_true")
    p.add_argument("--ignore-systemd-script", action="store_true")
    p.add_argument("--keep-ncs-setup", action="store_true")
    p.add_argument("--root", help="nso-sim: the simulated host's root folder")
    return p.parse_args(argv)


def resolve_root(explicit: Optional[str], installer: Path) -> Optional[Path]:
    if explicit:
        return Path(explicit).resolve()
    if os.environ.get("NSO_SIM_ROOT"):
        return Path(os.environ["NSO_SIM_ROOT"]).resolve()
    return find_root(Path.cwd()) or find_root(installer.resolve().parent)


def run_installer(installer_path: str, argv: list[str]) -> int:
    """Entry point of the installer file; prints the installer's lines, returns its exit code."""
    installer = Path(installer_path)
    args = _parse_args(argv)
    if args.local_install or not args.system_install:
        print("ERROR  nso-sim simulates only --system-install", file=sys.stderr)
        return 1
    defaults = {"install_dir": "/opt/ncs", "config_dir": "/etc/ncs", "run_dir": "/var/opt/ncs"}
    for opt, default in {**defaults, "log_dir": "/var/log/ncs"}.items():
        if getattr(args, opt).rstrip("/") != default:
            print(f"ERROR  nso-sim supports only the default --{opt.replace('_', '-')}")
            return 1
    root = resolve_root(args.root, installer)
    if root is None:
        print(
            "ERROR  no simulated host root: pass --root DIR, set NSO_SIM_ROOT, "
            "or run from inside a host root",
            file=sys.stderr,
        )
        return 1
    layout = HostLayout.at(root)
    try:
        install(layout, _split(installer), args.non_interactive, args.ignore_systemd_script)
    except faults.DiskFull as exc:
        print(f"ERROR  {exc}", file=sys.stderr)
        return 1
    except InstallFailed as exc:
        print(f"ERROR  {exc}", file=sys.stderr)
        return 1
    # The installer command takes the table's time (host create installs without it).
    nominal = TIMINGS.install(installer.stat().st_size)
    time.sleep(HostConfig.load_or_default(layout).scaled(nominal))
    return 0


class InstallFailed(Exception):
    pass


def install(
    layout: HostLayout,
    payload: bytes,
    non_interactive: bool = True,
    ignore_systemd_script: bool = False,
) -> str:
    """Unpack the release and do the first-install set-up. Returns the installed version."""
    message = faults.fire(layout, "installer-fail")
    if message is not None:
        raise InstallFailed(message if isinstance(message, str) else "installation failed")
    faults.check_disk(layout, str(layout.install_dir))
    layout.install_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ncs_installer.", dir=layout.install_dir) as tmp:
        print(f"INFO  Using temporary directory {tmp} to stage NSO installation bundle")
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(tops) != 1:
                raise InstallFailed("corrupt installer payload")
            for m in tar.getmembers():
                try:
                    check_member(m, "installer payload")
                except UnsafeArchive as exc:
                    raise InstallFailed(str(exc)) from None
                tar.extract(m, tmp)
        top = tops.pop()
        vsn = (Path(tmp) / top / "VERSION").read_text().strip()
        target = layout.release_dir(vsn)
        if target.exists():
            print(f"INFO  Replacing existing {target}")
            shutil.rmtree(target)
        os.replace(Path(tmp) / top, target)
    print(f"INFO  Unpacked ncs-{vsn} in {target}")

    first_install = not layout.current.exists() and not layout.current.is_symlink()
    config = HostConfig.load_or_default(layout)
    if first_install or config.installer_moves_current:
        switch_current(layout, vsn)
        print(f"INFO  Set {layout.current} -> ncs-{vsn}")

    for d in (
        layout.config_dir,
        layout.package_store,
        layout.cdb_dir,
        layout.load_dir,
        layout.state_dir,
        layout.backups_dir,
        layout.run_dir / "rollbacks",
        layout.log_dir,
        layout.init_script.parent,
    ):
        if not d.is_symlink():  # a linked load path stays a link, even a dangling one
            d.mkdir(parents=True, exist_ok=True)
    if not layout.ncs_conf.exists():
        shutil.copy(target / "etc" / "ncs" / "ncs.conf", layout.ncs_conf)
        print(f"INFO  Installed {layout.ncs_conf}")
    else:
        print(f"INFO  Found config file {layout.ncs_conf}, not overwriting")
    if not layout.crypto_keys.exists():
        layout.crypto_keys.write_text(ncsconf.generate_crypto_keys())
        layout.crypto_keys.chmod(0o600)
        print(f"INFO  Generated {layout.crypto_keys}")
    host_key = layout.config_dir / HOST_KEY
    if not host_key.exists():
        print("INFO  Generating default SSH hostkey (this may take some time)")
        generate_host_key(host_key)
    if versions.at_least(vsn, SYSTEMD_FROM) and not ignore_systemd_script:
        install_systemd(layout)
    else:
        shutil.copy(target / "etc" / "init.d" / "ncs", layout.init_script)
        layout.init_script.chmod(0o755)
        print(f"INFO  Installed init script {layout.init_script}")
    print("INFO  NSO installation script finished")
    return vsn


def install_systemd(layout: HostLayout) -> None:
    """From 6.4 a systemd unit replaces the init script (nso-behaviour.md)."""
    unit = systemd.unit_path(layout)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(systemd.UNIT_TEXT)
    conf = layout.config_dir / systemd.SYSTEMD_CONF
    if not conf.exists():
        conf.write_text(systemd.CONF_TEXT)
    systemctl = layout.root / "usr" / "bin" / "systemctl"
    systemctl.parent.mkdir(parents=True, exist_ok=True)
    systemctl.write_text(scripts.systemctl_script())
    systemctl.chmod(0o755)
    print(f"INFO  Installed systemd unit {unit}")


def switch_current(layout: HostLayout, vsn: str) -> None:
    """Point ``current`` at ``ncs-<vsn>`` atomically (new link beside it, then rename)."""
    tmp = layout.install_dir / f".current.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(f"ncs-{vsn}")
    os.replace(tmp, layout.current)


def generate_host_key(path: Path) -> None:
    import paramiko

    path.parent.mkdir(parents=True, exist_ok=True)
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path))
    path.chmod(0o600)
