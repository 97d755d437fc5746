"""``nso-sim make-package``: NSO package tarballs like ``ncs-6.2-router-nc-1.0.2.tar.gz``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import escape

from nso_sim import versions
from nso_sim.archive import Files, reproducible_targz
from nso_sim.package_meta import PACKAGES_NS, Fxs

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def package_file_name(nso: str, name: str, version: str) -> str:
    return f"ncs-{nso}-{name}-{version}.tar.gz"


def render_meta(
    name: str,
    version: str,
    nso: str,
    ned_id: Optional[str],
    description: str,
    requires: list[tuple[str, str]],
    ncs_max_version: Optional[str],
) -> str:
    lines = [
        f'<ncs-package xmlns="{PACKAGES_NS}">',
        f"  <name>{escape(name)}</name>",
        f"  <package-version>{escape(version)}</package-version>",
        f"  <description>{escape(description)}</description>",
        f"  <ncs-min-version>{escape(nso)}</ncs-min-version>",
    ]
    if ncs_max_version:
        lines.append(f"  <ncs-max-version>{escape(ncs_max_version)}</ncs-max-version>")
    for req_name, req_min in requires:
        lines += [
            "  <required-package>",
            f"    <name>{escape(req_name)}</name>",
            f"    <min-version>{escape(req_min)}</min-version>",
            "  </required-package>",
        ]
    lines += ["  <component>", f"    <name>{escape(name)}</name>"]
    if ned_id:
        lines += [
            "    <ned>",
            "      <netconf>",
            f'        <ned-id xmlns:id="http://tail-f.com/ns/ned-id/{escape(ned_id)}">'
            f"id:{escape(ned_id)}</ned-id>",
            "      </netconf>",
            "      <device>",
            "        <vendor>nso-sim</vendor>",
            "      </device>",
            "    </ned>",
        ]
    else:
        lines += [
            "    <application>",
            f"      <python-class-name>{escape(name.replace('-', '_'))}.main.Main"
            "</python-class-name>",
            "    </application>",
        ]
    lines += ["  </component>", "</ncs-package>", ""]
    return "\n".join(lines)


def build_package(
    name: str,
    version: str,
    nso: str,
    out_dir: Path,
    ned_id: Optional[str] = None,
    namespace: Optional[str] = None,
    prefix: Optional[str] = None,
    description: Optional[str] = None,
    requires: Optional[list[tuple[str, str]]] = None,
    ncs_max_version: Optional[str] = None,
    file_prefix: Optional[str] = None,
) -> Path:
    """Write the package; the same arguments always give the same bytes.

    ``nso`` is the release the package is compiled for (``6.2`` or a full ``6.2.3``); its
    ``X.Y`` is stamped into every fxs. ``file_prefix`` overrides the ``ncs-<nso>-`` file
    name prefix's version (vendors sometimes use the full version there).
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"bad package name {name!r}")
    if not versions.is_valid(nso):
        raise ValueError(f"bad NSO version {nso!r}")
    module = prefix or name
    fxs = Fxs(
        module=module,
        namespace=namespace or f"http://example.com/nso-sim/{name}",
        prefix=module,
        compiled_for=versions.major(nso),
    )
    files: Files = {
        "package-meta-data.xml": render_meta(
            name,
            version,
            nso,
            ned_id,
            description or f"{name} package built by nso-sim",
            requires or [],
            ncs_max_version,
        ).encode(),
        f"load-dir/{module}.fxs": fxs.render().encode(),
        "README": f"{name} {version}, compiled for NSO {versions.major(nso)}\n".encode(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package_file_name(file_prefix or nso, name, version)
    target.write_bytes(reproducible_targz({f"{name}/{rel}": data for rel, data in files.items()}))
    return target
