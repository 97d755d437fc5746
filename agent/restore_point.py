"""The restore point: a cold copy of NSO's data and configuration, taken after NSO stopped.

Why not restore ``ncs-backup``'s archive: NSO takes writes while ``ncs-backup`` runs and
until it stops, so the archive misses every commit acknowledged in between. Once NSO has
stopped nothing can write, so a copy of the run directory and ``/etc/ncs`` taken then holds
every acknowledged write. The archive is still made, and proven readable, as the operator's
familiar backup; recovery restores this copy.

Layout under ``<backups>/nso-agent-job-<id>/restore-point/``::

    manifest.json            every file with its sha256, size, mode and owner
    var/opt/ncs/...          the run directory without backups/ (packages/ as links)
    etc/ncs/...

The copy is built under a ``.partial`` name, every file re-read and compared with the
checksum of the bytes read from NSO's files, and only then renamed into place: a restore
point that exists is whole. Restoring checks every checksum again before touching the host,
and moves what it replaces aside (never deletes it): data the upgraded release wrote is
kept for the operator.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from agent.config import HostPaths
from agent.errors import StepFailed
from agent.fsutil import copy_hashed, fsync_dir, sha256_file, sync_filesystem, write_atomic

MANIFEST = "manifest.json"
STAGED = ".nso-agent-restore-"
# Free space kept on top of the copy itself: logs and NSO's own files must still fit.
MARGIN = 64 << 20

Log = Callable[[str], None]


@dataclass
class Record:
    path: str  # relative to the restore point, e.g. "var/opt/ncs/cdb/A.cdb"
    kind: str  # "file" | "dir" | "link"
    mode: int = 0
    uid: int = -1
    gid: int = -1
    size: int = 0
    sha256: str = ""
    target: str = ""


@dataclass(frozen=True)
class Area:
    """A folder of the host the restore point holds, and what in it is not NSO's data."""

    rel: str  # "var/opt/ncs"
    path: Path
    exclude: frozenset[str]

    def entries(self) -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n not in self.exclude and not n.startswith(STAGED))


def areas(paths: HostPaths) -> list[Area]:
    # backups/ holds the archives and this very copy: never part of what is copied or replaced.
    return [
        Area("var/opt/ncs", paths.run_dir, frozenset({paths.backups_dir.name})),
        Area("etc/ncs", paths.config_dir, frozenset()),
    ]


# -- copying ----------------------------------------------------------------------------


def _tree_size(path: Path) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(base, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def _copy(src: Path, dst: Path, rel: str, records: list[Record], log: Log) -> None:
    """Copy ``src`` (a file, a folder or a link, never followed) to ``dst``, recording each."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(src)
        os.symlink(target, dst)
        with contextlib.suppress(PermissionError):
            os.lchown(dst, st.st_uid, st.st_gid)
        records.append(Record(rel, "link", uid=st.st_uid, gid=st.st_gid, target=target))
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        records.append(Record(rel, "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        for name in sorted(os.listdir(src)):
            _copy(src / name, dst / name, f"{rel}/{name}", records, log)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(PermissionError):
            os.chown(dst, st.st_uid, st.st_gid)
    elif stat.S_ISREG(st.st_mode):
        # Made durable all at once by the caller (sync_filesystem): an fsync per file costs
        # seconds of downtime with thousands of package files.
        digest, size = copy_hashed(src, dst, fsync=False)
        records.append(
            Record(rel, "file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, digest)
        )
    else:  # sockets and pipes are recreated by NSO; they hold no data
        log(f"note: {rel} is neither a file, a folder nor a link: not copied")


def exists(dest: Path) -> bool:
    return (dest / MANIFEST).is_file()


def read_manifest(dest: Path) -> list[Record]:
    try:
        data = json.loads((dest / MANIFEST).read_text())
        return [Record(**r) for r in data["records"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepFailed(
            f"the restore point {dest} has no readable manifest ({exc}); it cannot be trusted"
        ) from None


def check(dest: Path) -> list[str]:
    """What is wrong with a restore point: missing files, other sizes, other checksums."""
    problems = []
    for rec in read_manifest(dest):
        path = dest / rec.path
        if rec.kind == "link":
            if not path.is_symlink() or os.readlink(path) != rec.target:
                problems.append(f"{rec.path}: the link is missing or changed")
        elif rec.kind == "dir":
            if not path.is_dir() or path.is_symlink():
                problems.append(f"{rec.path}: the folder is missing")
        elif not path.is_file():
            problems.append(f"{rec.path}: missing")
        elif path.stat().st_size != rec.size or sha256_file(path) != rec.sha256:
            problems.append(f"{rec.path}: its checksum differs from the one taken at the copy")
    return problems


def take(paths: HostPaths, dest: Path, log: Log) -> dict[str, int]:
    """Copy NSO's data (NSO must be stopped) to ``dest``, proven by checksum.

    Idempotent: a complete restore point already at ``dest`` is checked and kept.
    """
    if exists(dest):
        problems = check(dest)
        if not problems:
            log(f"the restore point {paths.host_path(dest)} exists and checks out")
            return _summary(read_manifest(dest))
        log(f"the restore point at {paths.host_path(dest)} is damaged; taking it again")
        shutil.rmtree(dest)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    need = sum(_tree_size(a.path / name) for a in areas(paths) for name in a.entries())
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(dest.parent)
    free = st.f_bavail * st.f_frsize
    if free < need + MARGIN:
        raise StepFailed(
            f"{paths.host_path(dest.parent)} has {free >> 20} MiB free; the restore point needs "
            f"{(need + MARGIN) >> 20} MiB: free space there (old backups) and retry"
        )
    records: list[Record] = []
    for area in areas(paths):
        (partial / area.rel).mkdir(parents=True)
        for name in area.entries():
            _copy(area.path / name, partial / area.rel / name, f"{area.rel}/{name}", records, log)
    write_atomic(partial / MANIFEST, json.dumps({"records": [asdict(r) for r in records]}))
    sync_filesystem(partial)
    problems = check(partial)  # re-read every byte written: the copy proves itself
    if problems:
        raise StepFailed(
            "the restore point did not read back as written: " + "; ".join(problems[:5])
        )
    os.rename(partial, dest)
    fsync_dir(dest.parent)
    summary = _summary(records)
    log(
        f"restore point {paths.host_path(dest)}: {summary['files']} files, "
        f"{summary['bytes']} bytes, every checksum verified"
    )
    return summary


def _summary(records: list[Record]) -> dict[str, int]:
    files = [r for r in records if r.kind == "file"]
    return {"files": len(files), "bytes": sum(r.size for r in files)}


# -- restoring --------------------------------------------------------------------------


def restore(
    paths: HostPaths,
    dest: Path,
    aside: Path,
    progress: dict[str, str],
    save: Callable[[dict[str, str]], None],
    log: Log,
) -> None:
    """Put the host's data and configuration back as the restore point holds them.

    First every top-level entry of each area is copied from the restore point to a hidden
    name beside it, each file checked against the manifest as it is read (a damaged restore
    point fails here, with nothing on the host changed). Then, entry by entry, what is there
    now is moved to ``aside`` and the copy renamed into place. ``progress`` (entry ->
    ``staged`` | ``aside`` | ``placed``, kept by the caller in the journal through ``save``)
    makes the restore resumable after a crash at any point.
    """
    entries = [
        (area, name)
        for area in areas(paths)
        for name in sorted(set(_saved_names(dest, area)) | set(area.entries()))
    ]
    if not progress:
        _stage_all(dest, entries, log)
        progress.update({f"{area.rel}/{name}": "staged" for area, name in entries})
        save(progress)
    for area, name in entries:
        _swap_entry(area, name, dest, aside, f"{area.rel}/{name}", progress, save)
    log(f"restored {len(entries)} entries from {paths.host_path(dest)}")


def _saved_names(dest: Path, area: Area) -> list[str]:
    folder = dest / area.rel
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _stage_all(dest: Path, entries: list[tuple[Area, str]], log: Log) -> None:
    """Copy every saved entry beside its live one, verified against the manifest."""
    wanted = {r.path: r for r in read_manifest(dest)}
    copied: list[Record] = []
    staged: list[Path] = []
    try:
        for area, name in entries:
            path = area.path / f"{STAGED}{name}"
            _remove(path)
            saved = dest / area.rel / name
            if os.path.lexists(saved):
                area.path.mkdir(parents=True, exist_ok=True)
                staged.append(path)
                _copy(saved, path, f"{area.rel}/{name}", copied, log)
        problems = [
            f"{rec.path}: not in the manifest, or its checksum differs from the one taken"
            for rec in copied
            if rec.path not in wanted
            or (rec.kind, rec.sha256) != (wanted[rec.path].kind, wanted[rec.path].sha256)
        ]
        problems += [f"{path}: missing" for path in sorted(set(wanted) - {r.path for r in copied})]
        if problems:
            raise StepFailed(
                f"the restore point {dest} is damaged (" + "; ".join(problems[:5]) + "): "
                "nothing was restored"
            )
        if staged:
            sync_filesystem(staged[0].parent)
    except BaseException:
        for path in staged:
            _remove(path)
        raise


def _swap_entry(
    area: Area,
    name: str,
    dest: Path,
    aside: Path,
    key: str,
    progress: dict[str, str],
    save: Callable[[dict[str, str]], None],
) -> None:
    live = area.path / name
    staged = area.path / f"{STAGED}{name}"
    kept = aside / area.rel / name
    phase = progress.get(key, "staged")
    if phase == "staged":
        if os.path.lexists(live):
            if os.path.lexists(kept):
                raise StepFailed(f"both {live} and {kept} exist: move one away by hand and retry")
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.rename(live, kept)
            fsync_dir(area.path)
        phase = _advance(progress, save, key, "aside")
    if phase == "aside":
        if os.path.lexists(staged):
            if os.path.lexists(live):
                raise StepFailed(f"{live} appeared while it was being restored; retry")
            os.rename(staged, live)
            fsync_dir(area.path)
        _advance(progress, save, key, "placed")


def _advance(
    progress: dict[str, str], save: Callable[[dict[str, str]], None], key: str, phase: str
) -> str:
    progress[key] = phase
    save(progress)
    return phase


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
