"""Loading packages the way NSO does: from the load path on reload, else from the copy of
what was last loaded (``state/packages-in-use.cur``), with the checks that make upgrades fail.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nso_sim import versions
from nso_sim.cdb import Tree
from nso_sim.layout import HostLayout, write_json_atomic
from nso_sim.package_meta import PackageError, PackageInfo, read_package, safe_extract

IN_USE_DIR = "packages-in-use.cur"
IN_USE_FILE = "packages-in-use.json"


@dataclass
class LoadedPackage:
    info: PackageInfo
    source: str  # file or folder name in the load path
    oper_status: str = "up"
    error_info: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "info": self.info.to_json(),
            "source": self.source,
            "oper_status": self.oper_status,
            "error_info": self.error_info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadedPackage:
        return cls(
            PackageInfo.from_json(data["info"]),
            data["source"],
            data.get("oper_status", "up"),
            data.get("error_info"),
        )


@dataclass
class ScanResult:
    found: list[tuple[Path, PackageInfo]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def is_package_entry(path: Path) -> bool:
    if path.name.endswith(".tar.gz"):
        return True
    return path.is_dir() and (path / "package-meta-data.xml").is_file()


def scan_load_path(load_path: list[Path]) -> ScanResult:
    result = ScanResult()
    for directory in load_path:
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or not is_package_entry(entry):
                continue
            try:
                result.found.append((entry, read_package(entry)))
            except PackageError as exc:
                result.errors.append(f"Failed to load NCS package: {entry.name}; {exc}")
    return result


def load_error(info: PackageInfo, running: str, loaded: dict[str, str]) -> Optional[str]:
    """Why this package cannot load on ``running`` next to ``loaded`` (name -> version of the
    packages in the set), or None when it can."""
    prefix = f"Failed to load NCS package: {info.name}; "
    branch = versions.major(running)
    for fxs in info.fxs:
        # Maintenance releases of one branch are binary compatible; other branches are not.
        if fxs.compiled_for != branch:
            return prefix + f"requires NCS version {fxs.compiled_for}"
    bound = versions.failed_min_version(running, info.ncs_min_versions)
    bound = bound or versions.failed_max_version(running, info.ncs_max_versions)
    if bound:
        return prefix + f"requires NCS version {bound}"
    for req in info.required:
        if req.name not in loaded:
            return prefix + f"required package {req.name} is not loaded"
        have = loaded[req.name]
        if not versions.package_version_within(have, req.min_version, req.max_version):
            wanted = " and ".join(
                f"{word} {v}"
                for word, v in (("at least", req.min_version), ("at most", req.max_version))
                if v
            )
            return prefix + f"required package {req.name} has version {have}, needs {wanted}"
    return None


def check_set(infos: list[PackageInfo], running: str) -> list[str]:
    names = [i.name for i in infos]
    errors = [
        f"Failed to load NCS package: {n}; duplicate package"
        for n in sorted({n for n in names if names.count(n) > 1})
    ]
    loaded = {i.name: i.version for i in infos}
    for info in infos:
        err = load_error(info, running, loaded)
        if err:
            errors.append(err)
    return errors


def service_prefixes(infos: list[PackageInfo]) -> list[str]:
    return [f.prefix for i in infos if not i.is_ned for f in i.fxs]


def namespaces_with_data(tree: Tree, infos: list[PackageInfo]) -> dict[str, str]:
    """Namespace URI -> what holds data in it (a top-level prefix or a device's config)."""
    by_prefix = {f.prefix: f.namespace for i in infos if not i.is_ned for f in i.fxs}
    by_ned = {n: [f.namespace for f in i.fxs] for i in infos for n in i.ned_ids}
    used: dict[str, str] = {}
    for top, value in tree.items():
        if top in by_prefix and value:
            used.setdefault(by_prefix[top], f"/{top}")
    for name, dev in _devices(tree).items():
        if not dev.get("config"):
            continue
        for ns in by_ned.get(device_ned_id(dev) or "", []):
            used.setdefault(ns, f"/devices/device{{{name}}}/config")
    return used


def _devices(tree: Tree) -> dict[str, Any]:
    return tree.get("devices", {}).get("device", {}) or {}


def device_ned_id(dev: dict[str, Any]) -> Optional[str]:
    for kind in ("netconf", "cli", "generic"):
        ned = (dev.get("device-type") or {}).get(kind, {}).get("ned-id")
        if ned:
            return str(ned).split(":", 1)[-1]
    return None


def namespaces_to_delete(tree: Tree, old: list[PackageInfo], new: list[PackageInfo]) -> list[str]:
    provided = {f.namespace for i in new for f in i.fxs}
    return sorted(ns for ns in namespaces_with_data(tree, old) if ns not in provided)


def delete_namespaces(tree: Tree, old: list[PackageInfo], doomed: list[str]) -> None:
    """What a forced upgrade does to data whose namespace is gone: it is deleted."""
    for info in old:
        for fxs in info.fxs:
            if fxs.namespace not in doomed:
                continue
            if not info.is_ned:
                tree.pop(fxs.prefix, None)
                continue
            for dev in _devices(tree).values():
                if device_ned_id(dev) in info.ned_ids:
                    dev.pop("config", None)


def upgrade_rewrites(
    tree: Tree, old: list[PackageInfo], new: list[PackageInfo]
) -> list[tuple[str, int]]:
    """Run the upgrade components of every package whose loaded build is being replaced by
    another (a new package version, or one compiled for another NSO branch).

    Each component's SETS go on the package's data in ``tree``: every instance of a service
    package's list, the config of every device using one of a NED's ned-ids. Returns
    (what was done, how many entries) for the log.
    """
    before = {i.name: i.build for i in old}
    done = []
    for info in new:
        if info.name not in before or before[info.name] == info.build:
            continue
        for comp in info.upgrades:
            entries = _upgrade_targets(tree, info)
            for entry in entries:
                for leaf, value in comp.sets:
                    entry[leaf] = value
            sets = ", ".join(f"{leaf} {value}" for leaf, value in comp.sets)
            done.append(
                (f"{info.name} {info.version} component {comp.name}: set {sets}", len(entries))
            )
    return done


def _upgrade_targets(tree: Tree, info: PackageInfo) -> list[dict[str, Any]]:
    if info.is_ned:
        return [
            dev.setdefault("config", {})
            for dev in _devices(tree).values()
            if device_ned_id(dev) in info.ned_ids
        ]
    return [
        entry
        for f in info.fxs
        for entry in (tree.get(f.prefix) or {}).values()
        if isinstance(entry, dict)
    ]


def read_in_use(layout: HostLayout) -> Optional[list[LoadedPackage]]:
    path = layout.state_dir / IN_USE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return [LoadedPackage.from_json(p) for p in data["packages"]]


def write_in_use(layout: HostLayout, found: list[tuple[Path, PackageInfo]]) -> list[LoadedPackage]:
    """Copy the packages into the private tree and record them, as a successful reload does."""
    target = layout.state_dir / IN_USE_DIR
    staging = layout.state_dir / (IN_USE_DIR + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    loaded = []
    for entry, info in found:
        real = entry.resolve()
        if real.is_dir():
            shutil.copytree(real, staging / info.name)
        else:
            safe_extract(real, staging / ".unpack")
            top = next((staging / ".unpack").iterdir())
            top.rename(staging / info.name)
            shutil.rmtree(staging / ".unpack")
        loaded.append(LoadedPackage(info, entry.name))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    save_in_use(layout, loaded)
    return loaded


def save_in_use(layout: HostLayout, loaded: list[LoadedPackage]) -> None:
    write_json_atomic(layout.state_dir / IN_USE_FILE, {"packages": [p.to_json() for p in loaded]})


def package_matches(file_name: str, wanted: str) -> bool:
    """``software packages install package router-nc-1.0.2`` names a file with or without
    its ``ncs-X.Y-`` prefix and with or without ``.tar.gz``."""
    base = file_name[: -len(".tar.gz")] if file_name.endswith(".tar.gz") else file_name
    wanted = wanted[: -len(".tar.gz")] if wanted.endswith(".tar.gz") else wanted
    if base == wanted:
        return True
    if base.startswith("ncs-"):
        rest = base[4:]
        vsn, _, tail = rest.partition("-")
        return versions.is_valid(vsn) and tail == wanted
    return False
