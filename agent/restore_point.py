"""The restore point: a cold copy of NSO's data and configuration, taken after NSO stopped.

Why not restore ``ncs-backup``'s archive: NSO takes writes while ``ncs-backup`` runs and
until it stops, so the archive misses every commit acknowledged in between. Once NSO has
stopped nothing can write, so a copy of its folders taken then holds every acknowledged
write. The archive is still made, and proven readable, as the operator's familiar backup;
recovery restores this copy.

What is copied ("areas"): the run directory without ``backups/``, ``/etc/ncs``, and every
folder NSO's data lives in elsewhere: a run-dir entry that is a link to a folder on another
volume (``/var/opt/ncs/cdb -> /data/cdb``), a mount point, and the CDB folder ``ncs.conf``
names (``/ncs-config/cdb/db-dir``) when it is outside them. Layout::

    manifest.json               token, areas, every file's sha256, size, mode and owner
    var/opt/ncs/...             the run directory (links as links)
    etc/ncs/...
    elsewhere/<host path>/...   the other areas

The copy is built under a ``.partial`` name, synced, every byte read back and compared with
the checksum of what was read from NSO's files, and only then renamed into place: a restore
point that exists is whole. The manifest carries a token the job knows, so a restore point
left by another job is never taken for this one's.

Restoring is two passes. ``stage``: every top-level entry of every area is copied from the
restore point to a hidden name beside it (same file system), each file checked against the
manifest; nothing NSO uses is touched, so this may run before NSO is stopped. ``swap``: with
NSO stopped, entry by entry, what is there is moved aside (same file system, never deleted)
and the staged copy renamed into place. Both passes are journaled by the caller through
``progress``, so a crash at any point resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import xml.etree.ElementTree as ET  # nosec B405 # parses ncs.conf only, see _conf_db_dir
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from agent.config import HostPaths
from agent.errors import StepFailed
from agent.fsutil import copy_hashed, fsync_dir, sha256_file, sync_filesystem, write_atomic

MANIFEST = "manifest.json"
HIDDEN = ".nso-agent-"  # our own names inside the areas: never copied, never replaced
STAGED = HIDDEN + "restore-"
REPLACED = HIDDEN + "replaced-"
# Free space kept on top of a copy: logs and NSO's own files must still fit.
MARGIN = 64 << 20

Log = Callable[[str], None]
Progress = dict[str, str]
Save = Callable[[Progress], None]


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

    def same_content(self, other: Record) -> bool:
        return (self.kind, self.sha256, self.target, self.mode) == (
            other.kind,
            other.sha256,
            other.target,
            other.mode,
        )


@dataclass(frozen=True)
class Area:
    """A folder of the host whose top-level entries the restore point holds."""

    rel: str  # where its copy lives in the restore point: "var/opt/ncs", "elsewhere/data/cdb"
    host_path: str  # "/var/opt/ncs"
    exclude: tuple[str, ...] = ()

    def path(self, paths: HostPaths) -> Path:
        return paths.path(self.host_path)

    def entries(self, paths: HostPaths) -> list[str]:
        try:
            names = os.listdir(self.path(paths))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if self.holds(n))

    def holds(self, name: str) -> bool:
        return name not in self.exclude and not name.startswith(HIDDEN)


@dataclass
class Manifest:
    token: str
    areas: list[Area] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "areas": [asdict(a) for a in self.areas],
                "records": [asdict(r) for r in self.records],
            }
        )


# -- what to copy -------------------------------------------------------------------------


def _conf_db_dir(paths: HostPaths) -> Optional[str]:
    """The CDB folder ncs.conf names (``/ncs-config/cdb/db-dir``), as a host path."""
    try:
        root = ET.parse(paths.ncs_conf).getroot()  # nosec B314 # ncs.conf is root's own file on this host, not input from the server; expat >= 2.4.1 stops entity bombs and etree fetches no external entities
    except (OSError, ET.ParseError):
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "db-dir" and el.text:
            text = el.text.strip().replace("${NCS_RUN_DIR}", "/var/opt/ncs")
            return text if text.startswith("/") else None
    return None


def discover(paths: HostPaths) -> list[Area]:
    """The areas of this host: the run dir, /etc/ncs, and the folders their data lives in
    elsewhere (linked or mounted run-dir entries, the CDB folder of ncs.conf)."""
    areas: list[Area] = []
    elsewhere: list[str] = []
    for rel, host, exclude in (
        ("var/opt/ncs", "/var/opt/ncs", [paths.backups_dir.name]),
        ("etc/ncs", "/etc/ncs", []),
    ):
        real = paths.path(host)
        for name in sorted(os.listdir(real)) if real.is_dir() else []:
            entry = real / name
            if name in exclude or name.startswith(HIDDEN):
                continue
            if entry.is_symlink() and entry.is_dir():
                elsewhere.append(paths.host_path(entry.resolve()))
            elif not entry.is_symlink() and entry.is_dir() and os.path.ismount(entry):
                exclude.append(name)  # its content is an area of its own
                elsewhere.append(paths.host_path(entry))
        areas.append(Area(rel, host, tuple(exclude)))
    db_dir = _conf_db_dir(paths)
    if db_dir:
        elsewhere.append(db_dir)
    for host in elsewhere:
        found = os.path.realpath(paths.path(host))
        if os.path.isdir(found) and not any(_covers(paths, a, found) for a in areas):
            areas.append(Area(f"elsewhere{paths.host_path(found)}", paths.host_path(found)))
    return areas


def _covers(paths: HostPaths, area: Area, real: str) -> bool:
    """Whether copying ``area`` copies the folder at ``real`` (not excluded from it)."""
    top = os.path.realpath(area.path(paths))
    if real == top:
        return True
    if not real.startswith(top + os.sep):
        return False
    return area.holds(os.path.relpath(real, top).split(os.sep)[0])


# -- copying ----------------------------------------------------------------------------


def _tree_size(path: Path) -> int:
    total = 0
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total
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


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _need_room(paths: HostPaths, where: Path, need: int, what: str, margin: int = MARGIN) -> None:
    free = _free(where)
    if free < need + margin:
        raise StepFailed(
            f"{paths.host_path(where)} has {free >> 20} MiB free; {what} needs "
            f"{-(-(need + margin) >> 20)} MiB: free space there (old backups) and retry"
        )


def exists(dest: Path) -> bool:
    return (dest / MANIFEST).is_file()


def read_manifest(dest: Path) -> Manifest:
    try:
        data = json.loads((dest / MANIFEST).read_text())
        return Manifest(
            str(data["token"]),
            [Area(a["rel"], a["host_path"], tuple(a["exclude"])) for a in data["areas"]],
            [Record(**r) for r in data["records"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepFailed(
            f"the restore point {dest} has no readable manifest ({exc}); it cannot be trusted"
        ) from None


def check(dest: Path) -> list[str]:
    """What is wrong with a restore point: missing files, other sizes, other checksums."""
    problems = []
    for rec in read_manifest(dest).records:
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


def _set_aside(dest: Path) -> Path:
    n = 1
    while dest.with_name(f"{dest.name}.stale-{n}").exists():
        n += 1
    aside = dest.with_name(f"{dest.name}.stale-{n}")
    os.rename(dest, aside)
    return aside


def take(paths: HostPaths, dest: Path, token: str, log: Log) -> dict[str, int]:
    """Copy NSO's data (NSO must be stopped) to ``dest``, proven by checksum.

    Idempotent: a whole restore point with this ``token`` already at ``dest`` is kept. One
    with another token (left by another job) is moved aside, never used nor deleted.
    """
    if exists(dest):
        with contextlib.suppress(StepFailed):
            if read_manifest(dest).token == token and not check(dest):
                log(f"the restore point {paths.host_path(dest)} exists and checks out")
                return _summary(read_manifest(dest).records)
        moved = _set_aside(dest)
        log(f"{paths.host_path(dest)} was not this job's whole restore point: kept as {moved.name}")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    areas = discover(paths)
    dest.parent.mkdir(parents=True, exist_ok=True)
    need = sum(_tree_size(a.path(paths) / name) for a in areas for name in a.entries(paths))
    _need_room(paths, dest.parent, need, "the restore point")
    manifest = Manifest(token, areas)
    try:
        for area in areas:
            (partial / area.rel).mkdir(parents=True)
            for name in area.entries(paths):
                source = area.path(paths) / name
                _copy(
                    source, partial / area.rel / name, f"{area.rel}/{name}", manifest.records, log
                )
        write_atomic(partial / MANIFEST, manifest.to_json())
        sync_filesystem(partial)
        problems = check(partial)  # re-read every byte written: the copy proves itself
        if problems:
            raise StepFailed(
                "the restore point did not read back as written: " + "; ".join(problems[:5])
            )
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    summary = _summary(manifest.records)
    elsewhere = [a.host_path for a in areas if a.rel.startswith("elsewhere/")]
    log(
        f"restore point {paths.host_path(dest)}: {summary['files']} files, "
        f"{summary['bytes']} bytes, every checksum verified"
        + (f"; also holds {', '.join(elsewhere)}" if elsewhere else "")
    )
    return summary


def _summary(records: list[Record]) -> dict[str, int]:
    files = [r for r in records if r.kind == "file"]
    return {"files": len(files), "bytes": sum(r.size for r in files)}


# -- restoring --------------------------------------------------------------------------


def trusted(dest: Path, token: str) -> Manifest:
    """The manifest of the restore point at ``dest``, if it is this job's."""
    if not exists(dest):
        raise StepFailed(f"there is no restore point at {dest}")
    manifest = read_manifest(dest)
    if manifest.token != token:
        raise StepFailed(
            f"the restore point at {dest} belongs to another job (token {manifest.token!r}, "
            f"expected {token!r}): it is not used"
        )
    return manifest


def _entries(paths: HostPaths, dest: Path, manifest: Manifest) -> list[tuple[Area, str]]:
    """Every (area, top-level name) the restore touches: what the copy holds and what is there."""
    out = []
    for area in manifest.areas:
        folder = dest / area.rel
        saved = {n for n in os.listdir(folder) if area.holds(n)} if folder.is_dir() else set()
        for name in sorted(saved | set(area.entries(paths))):
            out.append((area, name))
    return out


def _key(area: Area, name: str) -> str:
    return f"{area.rel}/{name}"


def stage(
    paths: HostPaths, dest: Path, token: str, progress: Progress, save: Save, log: Log
) -> None:
    """Copy every saved entry beside its live one under a hidden name, each file checked
    against the manifest as it is read. Touches nothing NSO uses. Resumable: copies staged
    by an earlier attempt are checked again (a power loss may have cut them) and redone
    when they differ."""
    manifest = trusted(dest, token)
    wanted = {r.path: r for r in manifest.records}
    todo = [
        (a, n) for a, n in _entries(paths, dest, manifest) if progress.get(_key(a, n)) != "placed"
    ]
    if not progress:
        need: dict[int, tuple[Path, int]] = {}
        for area, name in todo:
            folder = area.path(paths)
            folder.mkdir(parents=True, exist_ok=True)
            device = os.stat(folder).st_dev
            size = _tree_size(dest / area.rel / name)
            where, total = need.get(device, (folder, 0))
            need[device] = (where, total + size)
        for where, total in need.values():
            # A small margin: /etc may be a small partition of its own.
            _need_room(paths, where, total, "staging the restore point's copy", 1 << 20)
    staged_now: list[Path] = []
    seen: set[str] = set()
    try:
        for area, name in todo:
            key = _key(area, name)
            staged = area.path(paths) / f"{STAGED}{name}"
            saved = dest / area.rel / name
            under = {p for p in wanted if p == key or p.startswith(key + "/")}
            if not os.path.lexists(saved):
                continue
            placed = not os.path.lexists(staged) and os.path.lexists(area.path(paths) / name)
            if progress.get(key) == "aside" and placed:
                seen |= under  # renamed into place just before a crash: not staged again
                continue
            if progress.get(key) and _staged_matches(staged, key, under, wanted):
                seen |= under
                continue
            _remove(staged)
            copied: list[Record] = []
            staged_now.append(staged)
            _copy(saved, staged, key, copied, log)
            seen |= {r.path for r in copied}
            bad = [
                r.path for r in copied if r.path not in wanted or not r.same_content(wanted[r.path])
            ]
            if bad:
                raise _damaged(paths, dest, [f"{p}: differs from the manifest" for p in bad])
        todo_keys = {_key(a, n) for a, n in todo}
        missing = [p for p in wanted if p not in seen and _top_key(manifest, p) in todo_keys]
        if missing:
            raise _damaged(paths, dest, [f"{p}: missing" for p in missing])
        for device_path in {os.stat(a.path(paths)).st_dev: a.path(paths) for a, _ in todo}.values():
            sync_filesystem(device_path)
    except BaseException:
        if not progress:  # a first attempt that failed leaves nothing behind
            for path in staged_now:
                _remove(path)
        raise
    for area, name in todo:
        progress.setdefault(_key(area, name), "staged")
    save(progress)


def _damaged(paths: HostPaths, dest: Path, problems: list[str]) -> StepFailed:
    return StepFailed(
        f"the restore point {paths.host_path(dest)} is damaged ("
        + "; ".join(problems[:5])
        + "): nothing was restored"
    )


def _top_key(manifest: Manifest, path: str) -> str:
    """``var/opt/ncs/cdb`` for ``var/opt/ncs/cdb/A.cdb``: the entry a record belongs to."""
    for area in sorted(manifest.areas, key=lambda a: -len(a.rel)):
        if path.startswith(area.rel + "/"):
            return f"{area.rel}/{path[len(area.rel) + 1 :].split('/')[0]}"
    return path


def _staged_matches(staged: Path, key: str, under: set[str], wanted: dict[str, Record]) -> bool:
    """An earlier attempt's staged copy still equals the restore point's."""
    if not os.path.lexists(staged):
        return False
    for rel in under:
        rec = wanted[rel]
        path = staged / rel[len(key) + 1 :] if rel != key else staged
        if rec.kind == "file":
            if not path.is_file() or sha256_file(path) != rec.sha256:
                return False
        elif rec.kind == "link":
            if not path.is_symlink() or os.readlink(path) != rec.target:
                return False
        elif not path.is_dir():
            return False
    return True


def swap(
    paths: HostPaths,
    dest: Path,
    aside: Callable[[Area], Path],
    progress: Progress,
    save: Save,
    guard: Callable[[], None],
    log: Log,
) -> list[str]:
    """With NSO stopped (``guard`` raises otherwise, before every move), move each live
    entry into ``aside(area)`` and the staged copy into its place. Returns the host paths
    of the folders that now hold what was replaced."""
    manifest = read_manifest(dest)
    kept_in: set[str] = set()
    for area, name in _entries(paths, dest, manifest):
        key = _key(area, name)
        phase = progress.get(key, "staged")
        if phase == "placed":
            continue
        folder = area.path(paths)
        live, staged = folder / name, folder / f"{STAGED}{name}"
        kept = aside(area) / name
        if phase == "staged":
            if os.path.lexists(live):
                guard()
                if os.path.lexists(kept):
                    raise StepFailed(f"both {live} and {kept} exist: move one away by hand, retry")
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.rename(live, kept)
                fsync_dir(folder)
                kept_in.add(paths.host_path(kept.parent))
            progress[key] = phase = "aside"
            save(progress)
        if phase == "aside":
            if os.path.lexists(staged):
                guard()
                if os.path.lexists(live):
                    raise StepFailed(f"{live} appeared while it was being restored; retry")
                os.rename(staged, live)
                fsync_dir(folder)
            progress[key] = "placed"
            save(progress)
    log(f"restored {paths.host_path(dest)}")
    return sorted(kept_in)


def aside_folder(paths: HostPaths, job_dir: Path, tag: str) -> Callable[[Area], Path]:
    """Where an area's replaced entries go: under the job's folder in backups/ when that is
    on the same file system (a rename), else a hidden folder inside the area itself."""

    def where(area: Area) -> Path:
        folder = area.path(paths)
        job_dir.mkdir(parents=True, exist_ok=True)
        if os.stat(folder).st_dev == os.stat(job_dir).st_dev:
            return job_dir / tag / area.rel
        return folder / f"{REPLACED}{re.sub(r'[^A-Za-z0-9_.-]', '-', tag)}"

    return where
