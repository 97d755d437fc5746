"""``ncs-backup`` and ``ncs-backup --restore`` of a System Install.

The backup holds ``/etc/ncs`` and the run dir (``/var/opt/ncs``, without its ``backups/``) but,
as upstream warns, not ``/opt/ncs/packages``: links in ``/var/opt/ncs/packages`` are kept as
links and dangle if their targets are gone. When ``/var/opt/ncs/packages`` is itself a symlink
(the load path kept on another volume), the link is kept and what it points at is not backed
up. The archive layout and its manifest member are the simulator's own (docs/nso-sim.md).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from nso_sim import cdb_lock, faults, ipc
from nso_sim.archive import UnsafeArchive, check_member, check_not_through_links
from nso_sim.layout import HostConfig, HostLayout, root_of_release_file
from nso_sim.timings import TIMINGS

MANIFEST = "nso-sim-backup.json"
LOAD_PATH = "var/opt/ncs/packages"
# Not data: the running daemon's lock on CDB (see cdb_lock).
SKIPPED = ("var/opt/ncs/backups", f"var/opt/ncs/cdb/{cdb_lock.LOCK_FILE}")


def main(script: str, vsn: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ncs-backup")
    p.add_argument("--restore", nargs="?", const="", default=None, metavar="BACKUP")
    p.add_argument("--install-dir", default="/opt/ncs")
    p.add_argument("--non-interactive", action="store_true")
    p.add_argument("--no-compress", action="store_true")
    args = p.parse_args(argv)
    layout = HostLayout(root_of_release_file(script))
    if args.restore is None:
        return create_backup(layout, vsn, compress=not args.no_compress)
    return restore_backup(layout, vsn, args.restore or None, args.non_interactive)


def _backup_name(vsn: str, compress: bool) -> str:
    stamp = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    return f"ncs-{vsn}@{stamp}.backup" + (".gz" if compress else "")


def create_backup(layout: HostLayout, vsn: str, compress: bool = True) -> int:
    layout.backups_dir.mkdir(parents=True, exist_ok=True)
    target = layout.backups_dir / _backup_name(vsn, compress)
    while target.exists():  # one backup per second, as the names have no finer stamp
        time.sleep(0.2)
        target = layout.backups_dir / _backup_name(vsn, compress)
    try:
        faults.check_disk(layout, str(target))
    except faults.DiskFull as exc:
        print(f"ERROR  Backup failed: {exc}", file=sys.stderr)
        return 1
    buf = io.BytesIO()
    archived = 0

    def keep(member: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
        nonlocal archived
        if member.name.startswith(SKIPPED):
            return None
        archived += member.size
        return member

    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tar:
        manifest = json.dumps({"version": vsn, "created": target.name}).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        tar.add(layout.config_dir, arcname="etc/ncs", filter=keep)
        tar.add(layout.run_dir, arcname="var/opt/ncs", filter=keep)
    # The backup takes the table's time for what it archived, before the file appears.
    time.sleep(HostConfig.load_or_default(layout).scaled(TIMINGS.backup(archived)))
    data = buf.getvalue()
    if faults.fire(layout, "backup-corrupt") is not None:
        data = data[: len(data) // 2]
    target.write_bytes(data)
    print(f"INFO  Backup {target} created successfully")
    return 0


def _choose(layout: HostLayout, name: Optional[str], non_interactive: bool) -> Optional[Path]:
    if name:
        candidate = Path(name)
        if not candidate.is_absolute():
            candidate = layout.backups_dir / name
        return candidate
    found = sorted(layout.backups_dir.glob("ncs-*.backup*"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    if non_interactive:
        return found[-1]
    for i, path in enumerate(found, 1):
        print(f"{i}) {path.name}")
    answer = input("Select backup to restore: ").strip()
    try:
        return found[int(answer) - 1]
    except (ValueError, IndexError):
        return None


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Optional[bytes]:
    if not member.isfile():
        return None
    fh = tar.extractfile(member)
    return None if fh is None else fh.read()


def _nso_running(layout: HostLayout) -> Optional[str]:
    """Why NSO counts as running (it holds CDB, or answers on its IPC port), or None."""
    try:
        with cdb_lock.held(layout.cdb_dir):
            pass
    except cdb_lock.CdbLocked as exc:
        return str(exc)
    try:
        ipc.request(layout, {"op": "status"}, timeout=5)
    except OSError:
        return None
    return "it answers on its IPC port"


def _is_load_path_link(name: str) -> bool:
    """The load path itself or a package link in it: the only symlinks a backup holds."""
    return name == LOAD_PATH or name.startswith(LOAD_PATH + "/")


def restore_backup(layout: HostLayout, vsn: str, name: Optional[str], non_interactive: bool) -> int:
    running = _nso_running(layout)
    if running:
        print(f"ERROR  NSO is running ({running}); stop it before restoring", file=sys.stderr)
        return 1
    backup = _choose(layout, name, non_interactive)
    if backup is None or not backup.is_file():
        print(f"ERROR  No such backup: {name or '(none found)'}", file=sys.stderr)
        return 1
    if "_local@" in backup.name:
        # ncs-backup(1): local-install backups carry "_local" and cannot be restored into a
        # system install (nor the reverse).
        print(
            f"ERROR  {backup.name} is a local install backup; it cannot be restored into a"
            " system install",
            file=sys.stderr,
        )
        return 1
    try:
        with tarfile.open(backup, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                check_member(m, backup.name, allow_link=_is_load_path_link(m.name))
            check_not_through_links(members, backup.name)
            manifest_member = tar.extractfile(MANIFEST)
            if manifest_member is None:
                raise tarfile.TarError("no manifest")
            manifest = json.loads(manifest_member.read())
            payload = {m.name: (m, _member_bytes(tar, m)) for m in members}
    except (tarfile.TarError, UnsafeArchive, OSError, EOFError, ValueError, KeyError) as exc:
        print(f"ERROR  Restore failed: {backup.name} is corrupt: {exc}", file=sys.stderr)
        return 1
    if manifest.get("version") != vsn:
        print(
            f"ERROR  Backup was made with NSO {manifest.get('version')}, "
            f"but {layout.current} is NSO {vsn}",
            file=sys.stderr,
        )
        return 1
    if not non_interactive:
        answer = input(f"Restore {backup.name}? Current data will be moved away [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("INFO  Restore aborted")
            return 1
    print(f"INFO  Restoring from {backup}")
    old = layout.run_dir.with_name(layout.run_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    layout.run_dir.rename(old)
    shutil.rmtree(layout.config_dir, ignore_errors=True)
    for member_name, (member, data) in sorted(payload.items()):
        if member_name == MANIFEST:
            continue
        dest = layout.root / member_name
        if member.isdir():
            dest.mkdir(parents=True, exist_ok=True)
        elif member.issym():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(member.linkname)
        elif data is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(member.mode & 0o777)
    # Backups stay where they were: they are not part of what is restored.
    if (old / "backups").is_dir():
        shutil.rmtree(layout.backups_dir, ignore_errors=True)
        shutil.move(str(old / "backups"), str(layout.backups_dir))
    print(f"INFO  Old run directory moved to {old}")
    print("INFO  Restore completed successfully")
    return 0
