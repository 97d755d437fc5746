"""Reading an NSO package: ``package-meta-data.xml``, the compiled ``load-dir/*.fxs`` files
and the code of its upgrade components.

A package is a folder or a ``.tar.gz`` holding exactly one top folder. The ``.fxs`` files of the
simulator are small text files (an invented format, see docs/nso-sim.md) that carry the
namespace they define and the NSO release they were compiled for. An upgrade component's
``python-class-name`` names a module under ``python/`` whose ``SETS`` (invented) say which
leaves the component rewrites when NSO loads the package in place of another build.
"""

from __future__ import annotations

import ast
import io
import tarfile
import xml.etree.ElementTree as ET  # nosec B405 # the simulator, run by tests and demos only: reads the metadata of packages it built
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from nso_sim.archive import UnsafeArchive, check_member

PACKAGES_NS = "http://tail-f.com/ns/ncs-packages"
FXS_MAGIC = "# tail-f fxs (nso-sim)"


class PackageError(Exception):
    pass


@dataclass
class Fxs:
    module: str
    namespace: str
    prefix: str
    compiled_for: str
    # A NED's device model: the config leaves it defines (invented; empty: any leaf). A NED
    # migration deletes, and reports as lost, the leaves the new ned-id's model lacks.
    leaves: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, where: str) -> Fxs:
        if not text.startswith(FXS_MAGIC):
            raise PackageError(f"{where}: not a compiled fxs file")
        fields = {}
        for line in text.splitlines()[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        try:
            return cls(
                fields["module"],
                fields["namespace"],
                fields["prefix"],
                fields["compiled-for"],
                fields.get("leaves", "").split(),
            )
        except KeyError as exc:
            raise PackageError(f"{where}: fxs lacks {exc.args[0]}") from None

    def render(self) -> str:
        return (
            f"{FXS_MAGIC}\n"
            f"module: {self.module}\n"
            f"namespace: {self.namespace}\n"
            f"prefix: {self.prefix}\n"
            f"compiled-for: {self.compiled_for}\n"
            + (f"leaves: {' '.join(self.leaves)}\n" if self.leaves else "")
        )


@dataclass
class Requirement:
    """``required-package { name min-version max-version }``."""

    name: str
    min_version: Optional[str] = None
    max_version: Optional[str] = None


@dataclass
class UpgradeComponent:
    """``component { name upgrade { python-class-name } }`` and what its code does."""

    name: str
    python_class_name: str
    # (leaf, value) pairs set on the package's data (invented stand-in for real code)
    sets: list[tuple[str, str]] = field(default_factory=list)

    @property
    def module_path(self) -> str:
        """``l3vpn_upgrade.upgrade.Upgrade`` -> ``python/l3vpn_upgrade/upgrade.py``."""
        module = self.python_class_name.rsplit(".", 1)[0]
        return "python/" + module.replace(".", "/") + ".py"


@dataclass
class PackageInfo:
    name: str
    version: str
    description: str = ""
    ncs_min_versions: list[str] = field(default_factory=list)
    ncs_max_versions: list[str] = field(default_factory=list)
    required: list[Requirement] = field(default_factory=list)
    ned_ids: list[str] = field(default_factory=list)
    fxs: list[Fxs] = field(default_factory=list)
    upgrades: list[UpgradeComponent] = field(default_factory=list)

    @property
    def namespaces(self) -> dict[str, str]:
        """prefix -> namespace URI of every module the package defines."""
        return {f.prefix: f.namespace for f in self.fxs}

    @property
    def is_ned(self) -> bool:
        return bool(self.ned_ids)

    @property
    def ned_leaves(self) -> Optional[set[str]]:
        """The config leaves a NED's device model defines; None when it declares none
        (then it takes any leaf)."""
        declared = {leaf for f in self.fxs for leaf in f.leaves}
        return declared or None

    @property
    def build(self) -> tuple[str, tuple[str, ...]]:
        """What makes two copies of a package the same build: version and compiled-for."""
        return self.version, tuple(sorted({f.compiled_for for f in self.fxs}))

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "ncs_min_versions": self.ncs_min_versions,
            "ncs_max_versions": self.ncs_max_versions,
            "required": [r.__dict__ for r in self.required],
            "ned_ids": self.ned_ids,
            "fxs": [f.__dict__ for f in self.fxs],
            "upgrades": [{**u.__dict__, "sets": [list(s) for s in u.sets]} for u in self.upgrades],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackageInfo:
        return cls(
            name=data["name"],
            version=data["version"],
            description=data.get("description", ""),
            ncs_min_versions=list(data.get("ncs_min_versions", [])),
            ncs_max_versions=list(data.get("ncs_max_versions", [])),
            required=[_requirement_from_json(r) for r in data.get("required", [])],
            ned_ids=list(data.get("ned_ids", [])),
            fxs=[Fxs(**f) for f in data.get("fxs", [])],
            upgrades=[
                UpgradeComponent(
                    u["name"], u["python_class_name"], [(k, v) for k, v in u.get("sets", [])]
                )
                for u in data.get("upgrades", [])
            ],
        )


def _requirement_from_json(data: Any) -> Requirement:
    # packages-in-use.json written before max-version was kept holds [name, min] pairs.
    if isinstance(data, list):
        return Requirement(*data)
    return Requirement(**data)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_meta(xml_bytes: bytes, where: str) -> PackageInfo:
    try:
        root = ET.fromstring(xml_bytes)  # nosec B314 # the simulator, run by tests and demos only: the metadata of packages it built
    except ET.ParseError as exc:
        raise PackageError(f"{where}: package-meta-data.xml: {exc}") from None
    if _local(root.tag) != "ncs-package":
        raise PackageError(f"{where}: package-meta-data.xml: root is not ncs-package")

    def texts(name: str) -> list[str]:
        return [(c.text or "").strip() for c in root if _local(c.tag) == name]

    names, vsns = texts("name"), texts("package-version")
    if not names or not vsns:
        raise PackageError(f"{where}: package-meta-data.xml lacks name or package-version")
    info = PackageInfo(
        name=names[0],
        version=vsns[0],
        description=(texts("description") or [""])[0],
        ncs_min_versions=texts("ncs-min-version"),
        ncs_max_versions=texts("ncs-max-version"),
    )
    for req in (c for c in root if _local(c.tag) == "required-package"):
        fields = {_local(c.tag): (c.text or "").strip() for c in req}
        info.required.append(
            Requirement(
                fields.get("name", ""), fields.get("min-version"), fields.get("max-version")
            )
        )
    for comp in (c for c in root if _local(c.tag) == "component"):
        upgrade = next((c for c in comp if _local(c.tag) == "upgrade"), None)
        if upgrade is None:
            continue
        fields = {_local(c.tag): (c.text or "").strip() for c in comp}
        class_name = next(
            ((c.text or "").strip() for c in upgrade if _local(c.tag) == "python-class-name"), ""
        )
        if not class_name:
            raise PackageError(f"{where}: upgrade component lacks python-class-name")
        info.upgrades.append(UpgradeComponent(fields.get("name", ""), class_name))
    for el in root.iter():
        if _local(el.tag) == "ned-id" and el.text:
            # "id:router-nc-1.0" -> "router-nc-1.0"
            info.ned_ids.append(el.text.strip().split(":", 1)[-1])
    return info


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    try:
        check_member(member, where)
    except UnsafeArchive as exc:
        raise PackageError(str(exc)) from None


def read_package(path: Path) -> PackageInfo:
    """Read a package from a folder or a ``.tar.gz`` (following a symlink in the load path)."""
    where = path.name
    real = path.resolve()
    if real.is_dir():

        def read_file(rel: str) -> Optional[bytes]:
            file = real / rel
            return file.read_bytes() if file.is_file() else None

        fxs = sorted(p.relative_to(real).as_posix() for p in (real / "load-dir").glob("*.fxs"))
        return _read_parts(read_file, fxs, where)
    if not real.is_file():
        raise PackageError(f"{where}: no such file or folder")
    try:
        with tarfile.open(real, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, where)
            tops = {Path(m.name).parts[0] for m in members if m.name.strip("./")}
            if len(tops) != 1:
                raise PackageError(f"{where}: must hold exactly one top folder, has {len(tops)}")
            top = tops.pop()
            files = {
                m.name.lstrip("./")[len(top) + 1 :]: m
                for m in members
                if m.isfile() and m.name.lstrip("./").startswith(f"{top}/")
            }

            def read_member(rel: str) -> Optional[bytes]:
                member = files.get(rel)
                return None if member is None else _read_member(tar, member)

            fxs = sorted(r for r in files if r.startswith("load-dir/") and r.endswith(".fxs"))
            return _read_parts(read_member, fxs, where)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"{where}: cannot read archive: {exc}") from None


def _read_parts(
    read: Callable[[str], Optional[bytes]], fxs_files: list[str], where: str
) -> PackageInfo:
    meta = read("package-meta-data.xml")
    if meta is None:
        raise PackageError(f"{where}: no package-meta-data.xml")
    info = parse_meta(meta, where)
    for rel in fxs_files:
        text = (read(rel) or b"").decode(errors="replace")
        info.fxs.append(Fxs.parse(text, f"{where}/{rel}"))
    for comp in info.upgrades:
        code = read(comp.module_path)
        if code is None:
            raise PackageError(f"{where}: upgrade component {comp.name}: no {comp.module_path}")
        comp.sets = parse_upgrade_sets(code.decode(errors="replace"), f"{where}/{comp.module_path}")
    return info


def render_upgrade_module(package: str, version: str, sets: list[tuple[str, str]]) -> str:
    """The code of an upgrade component: a Python module whose ``SETS`` is what it does."""
    pairs = "".join(f"    ({leaf!r}, {value!r}),\n" for leaf, value in sets)
    return f'''"""Upgrade component of {package} {version}, written by nso-sim.

When NSO loads this build in place of another build of {package}, it sets each (leaf, value)
of SETS on the package's data: on every instance of a service package's list, in the config
of every device using a NED's ned-id. (An invented stand-in for real upgrade code.)
"""

SETS = [
{pairs}]


class Upgrade:  # a real component derives from ncs.upgrade.Upgrade
    pass
'''


def parse_upgrade_sets(source: str, where: str) -> list[tuple[str, str]]:
    """``SETS`` of an upgrade module, read without running it."""
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise PackageError(f"{where}: {exc.msg}") from None
    for node in module.body:
        if not (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "SETS" for t in node.targets)
        ):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            value = None
        if isinstance(value, (list, tuple)) and all(_is_leaf_value(p) for p in value):
            return [(str(leaf), str(val)) for leaf, val in value]
        raise PackageError(f"{where}: SETS must be a list of (leaf, value) pairs")
    raise PackageError(f"{where}: no SETS")


def _is_leaf_value(pair: Any) -> bool:
    return (
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(isinstance(x, str) for x in pair)
        and is_leaf_name(pair[0])
    )


def is_leaf_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() for c in name) and name != "!"


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    if fh is None:
        raise PackageError(f"{member.name}: not a regular file")
    with fh:
        return fh.read()


def package_file_bytes(path: Path) -> bytes:
    """The package as a tar.gz (folders are packed), as ``packages ha sync`` ships it."""
    real = path.resolve()
    if real.is_file():
        return real.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(real, arcname=real.name)
    return buf.getvalue()


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract after checking every member (no links, no absolute paths, no ``..``)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m, archive.name)
        dest.mkdir(parents=True, exist_ok=True)
        # Members were checked above; the "data" filter (where Python has it) checks again.
        extra: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for m in members:
            tar.extract(m, dest, **extra)
