"""Builders for artifacts the API tests upload: packages, installers, patch bundles."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

PACKAGE_NS = "http://tail-f.com/ns/ncs-packages"


Versions = Union[str, tuple[str, ...], None]
# A required package: its name, or (name, min-version, max-version); None leaves a part out.
Required = Union[str, tuple[Optional[str], Optional[str], Optional[str]]]


def _required_xml(required: Required) -> str:
    name, low, high = (required, None, None) if isinstance(required, str) else required
    inner = "".join(
        f"<{tag}>{text}</{tag}>"
        for tag, text in (("name", name), ("min-version", low), ("max-version", high))
        if text is not None
    )
    return f"  <required-package>{inner}</required-package>"


def package_meta_xml(
    name: str,
    version: str,
    *,
    min_version: Versions = None,
    max_version: Versions = None,
    ned_id: Optional[str] = None,
    requires: tuple[Required, ...] = (),
) -> bytes:
    """package-meta-data.xml; a tuple of min/max versions gives one element per entry."""
    parts = [
        f'<ncs-package xmlns="{PACKAGE_NS}">',
        f"  <name>{name}</name>",
        f"  <package-version>{version}</package-version>",
        f"  <description>{name} for tests</description>",
    ]
    for tag, versions in (("ncs-min-version", min_version), ("ncs-max-version", max_version)):
        for text in (versions,) if isinstance(versions, str) else versions or ():
            parts.append(f"  <{tag}>{text}</{tag}>")
    parts += [_required_xml(required) for required in requires]
    if ned_id:
        parts += [
            "  <component>",
            f"    <name>{name}</name>",
            "    <ned><netconf>",
            f'      <ned-id xmlns:id="http://tail-f.com/ns/ned-id/{ned_id}">id:{ned_id}</ned-id>',
            "    </netconf></ned>",
            "  </component>",
        ]
    parts.append("</ncs-package>")
    return "\n".join(parts).encode()


@contextmanager
def _tar_gz(path: Path) -> Iterator[tarfile.TarFile]:
    """A gzip tarball with a fixed timestamp: the same content always gives the same bytes."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:  # noqa: SIM117
        with tarfile.open(fileobj=gz, mode="w") as tar:
            yield tar


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def make_package(
    out_dir: Path,
    name: str = "router-nc",
    version: str = "1.0.2",
    nso: str = "6.2",
    *,
    filename: Optional[str] = None,
    meta: Optional[bytes] = None,
    payload: bytes = b"",
    **meta_options: object,
) -> Path:
    """A package tarball `ncs-<nso>-<name>-<version>.tar.gz` with package-meta-data.xml."""
    path = out_dir / (filename or f"ncs-{nso}-{name}-{version}.tar.gz")
    xml = (
        meta
        if meta is not None
        else package_meta_xml(
            name,
            version,
            min_version=meta_options.pop("min_version", nso),  # type: ignore[arg-type]
            **meta_options,  # type: ignore[arg-type]
        )
    )
    with _tar_gz(path) as tar:
        _add(tar, f"{name}/package-meta-data.xml", xml)
        _add(tar, f"{name}/load-dir/{name}.fxs", b"fxs compiled for " + nso.encode() + payload)
    return path


def make_installer(out_dir: Path, version: str = "6.2", size: int = 4096) -> Path:
    path = out_dir / f"nso-{version}.linux.x86_64.installer.bin"
    body = b"#!/bin/sh\necho installer\nexit 0\n__ARCHIVE__\n"
    path.write_bytes(body + b"\0" * max(0, size - len(body)))
    return path


def beam_bytes(module: str) -> bytes:
    """A minimal BEAM container: FOR1 <length> BEAM and one chunk naming the module."""
    chunk = b"Atom" + struct.pack(">I", len(module) + 1) + bytes([len(module)]) + module.encode()
    chunk += b"\0" * (-len(chunk) % 4)
    body = b"BEAM" + chunk
    return b"FOR1" + struct.pack(">I", len(body)) + body


def make_patch_bundle(
    out_dir: Path,
    nso: str = "6.2",
    patch_id: str = "PSIRT-1",
    modules: tuple[str, ...] = ("ncs_fix",),
) -> Path:
    path = out_dir / f"nso-{nso}-patch-{patch_id}.tar.gz"
    with _tar_gz(path) as tar:
        for module in modules:
            _add(tar, f"{module}.beam", beam_bytes(module))
        _add(tar, "README", f"Emergency patch {patch_id} for NSO {nso}\n".encode())
    return path
