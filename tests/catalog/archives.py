"""Build artifacts for the catalog tests: a good package or patch bundle that each test
spoils in exactly one way. Everything is made with tarfile/gzip in the test's tmp_path."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

NS = "http://tail-f.com/ns/ncs-packages"


@dataclass
class Member:
    """One tar member; `type` is a tarfile type constant (REGTYPE, DIRTYPE, SYMTYPE...)."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.type
        info.linkname = self.linkname
        info.mode = 0o755 if self.type == tarfile.DIRTYPE else 0o644
        info.size = len(self.data) if self.type == tarfile.REGTYPE else 0
        return info


def directory(name: str) -> Member:
    return Member(name, type=tarfile.DIRTYPE)


def symlink(name: str, target: str) -> Member:
    return Member(name, type=tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str) -> Member:
    return Member(name, type=tarfile.LNKTYPE, linkname=target)


def tar_bytes(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for member in members:
            tar.addfile(member.tarinfo(), io.BytesIO(member.data) if member.data else None)
    return buffer.getvalue()


def write_tar_gz(path: Path, members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> Path:
    path.write_bytes(gzip.compress(tar_bytes(members, fmt)))
    return path


def meta_xml(
    name: str = "router-nc",
    version: str = "1.0.2",
    *,
    min_versions: tuple[str, ...] = ("6.2",),
    max_versions: tuple[str, ...] = (),
    namespace: Optional[str] = NS,
    body: Optional[str] = None,
) -> bytes:
    """A realistic package-meta-data.xml; `body` replaces everything inside the root."""
    if body is None:
        lines = [f"<name>{name}</name>", f"<package-version>{version}</package-version>"]
        lines.append("<description>Router NETCONF NED</description>")
        lines += [f"<ncs-min-version>{v}</ncs-min-version>" for v in min_versions]
        lines += [f"<ncs-max-version>{v}</ncs-max-version>" for v in max_versions]
        lines += [
            "<required-package><name>resource-manager</name>",
            "  <min-version>4.2</min-version></required-package>",
            "<component><name>router</name><ned><netconf>",
            '  <ned-id xmlns:id="http://tail-f.com/ns/ned-id/router-nc-1.0">id:router-nc-1.0'
            "</ned-id>",
            "</netconf><device><vendor>Acme</vendor></device></ned></component>",
            "<component><name>upgrade</name><upgrade><java-class-name>x.Up</java-class-name>",
            "</upgrade></component>",
        ]
        body = "\n  ".join(lines)
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    return f'<?xml version="1.0"?>\n<ncs-package{xmlns}>\n  {body}\n</ncs-package>\n'.encode()


@dataclass
class PackageSpec:
    """A good package: `members()` gives its tar members, `filename` its upload name."""

    name: str = "router-nc"
    version: str = "1.0.2"
    nso: str = "6.2"
    top: str = "router-nc"
    meta: bytes = field(default_factory=meta_xml)

    @property
    def filename(self) -> str:
        return f"ncs-{self.nso}-{self.name}-{self.version}.tar.gz"

    def members(self) -> list[Member]:
        top = self.top
        return [
            directory(top),
            Member(f"{top}/package-meta-data.xml", self.meta),
            directory(f"{top}/load-dir"),
            Member(f"{top}/load-dir/router.fxs", b"fxs" * 100),
            directory(f"{top}/python/router"),
            Member(f"{top}/python/router/main.py", b"print('hi')\n"),
            # Links that stay inside the package are fine.
            symlink(f"{top}/python/router/latest.fxs", "../../load-dir/router.fxs"),
            hardlink(f"{top}/load-dir/copy.fxs", f"{top}/load-dir/router.fxs"),
        ]


def beam(body: bytes = b"Atom\x00\x00\x00\x00") -> bytes:
    """A minimal BEAM container: FOR1, length of what follows, BEAM, chunks."""
    return b"FOR1" + (len(body) + 4).to_bytes(4, "big") + b"BEAM" + body


@dataclass
class PatchSpec:
    nso: str = "6.2.1"
    patch_id: str = "ps1234"

    @property
    def filename(self) -> str:
        return f"nso-{self.nso}-patch-{self.patch_id}.tar.gz"

    def members(self) -> list[Member]:
        return [
            Member("ncs_fix.beam", beam()),
            Member("ncs_other_fix.beam", beam(b"Code" + b"\x00" * 20)),
            Member("README", "Fixes CSCxx12345 — load with ncs-state patches.\n".encode()),
        ]
