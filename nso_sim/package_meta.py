"""Reading an NSO package: ``package-meta-data.xml`` and the compiled ``load-dir/*.fxs`` files.

A package is a folder or a ``.tar.gz`` holding exactly one top folder. The ``.fxs`` files of the
simulator are small text files (an invented format, see docs/nso-sim.md) that carry the
namespace they define and the NSO release they were compiled for.
"""

from __future__ import annotations

import io
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

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
                fields["module"], fields["namespace"], fields["prefix"], fields["compiled-for"]
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
        )


@dataclass
class PackageInfo:
    name: str
    version: str
    description: str = ""
    ncs_min_versions: list[str] = field(default_factory=list)
    ncs_max_versions: list[str] = field(default_factory=list)
    required: list[tuple[str, Optional[str]]] = field(default_factory=list)
    ned_ids: list[str] = field(default_factory=list)
    fxs: list[Fxs] = field(default_factory=list)

    @property
    def namespaces(self) -> dict[str, str]:
        """prefix -> namespace URI of every module the package defines."""
        return {f.prefix: f.namespace for f in self.fxs}

    @property
    def is_ned(self) -> bool:
        return bool(self.ned_ids)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "ncs_min_versions": self.ncs_min_versions,
            "ncs_max_versions": self.ncs_max_versions,
            "required": [list(r) for r in self.required],
            "ned_ids": self.ned_ids,
            "fxs": [f.__dict__ for f in self.fxs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackageInfo:
        return cls(
            name=data["name"],
            version=data["version"],
            description=data.get("description", ""),
            ncs_min_versions=list(data.get("ncs_min_versions", [])),
            ncs_max_versions=list(data.get("ncs_max_versions", [])),
            required=[(r[0], r[1]) for r in data.get("required", [])],
            ned_ids=list(data.get("ned_ids", [])),
            fxs=[Fxs(**f) for f in data.get("fxs", [])],
        )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_meta(xml_bytes: bytes, where: str) -> PackageInfo:
    try:
        root = ET.fromstring(xml_bytes)
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
        info.required.append((fields.get("name", ""), fields.get("min-version")))
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
        meta = real / "package-meta-data.xml"
        if not meta.is_file():
            raise PackageError(f"{where}: no package-meta-data.xml")
        info = parse_meta(meta.read_bytes(), where)
        for fxs in sorted((real / "load-dir").glob("*.fxs")):
            info.fxs.append(Fxs.parse(fxs.read_text(errors="replace"), f"{where}/{fxs.name}"))
        return info
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
            by_name = {m.name.lstrip("./"): m for m in members}
            meta_member = by_name.get(f"{top}/package-meta-data.xml")
            if meta_member is None:
                raise PackageError(f"{where}: no {top}/package-meta-data.xml")
            info = parse_meta(_read_member(tar, meta_member), where)
            for name, m in sorted(by_name.items()):
                if name.startswith(f"{top}/load-dir/") and name.endswith(".fxs") and m.isfile():
                    text = _read_member(tar, m).decode(errors="replace")
                    info.fxs.append(Fxs.parse(text, f"{where}/{name}"))
            return info
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"{where}: cannot read archive: {exc}") from None


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
