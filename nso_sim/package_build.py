"""``nso-sim make-package``: NSO package tarballs like ``ncs-6.2-router-nc-1.0.2.tar.gz``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import escape  # nosec B406 # escape() writes XML, it parses nothing

from nso_sim import versions
from nso_sim.archive import Files, reproducible_targz
from nso_sim.package_meta import (
    PACKAGES_NS,
    Fxs,
    Requirement,
    UpgradeComponent,
    is_leaf_name,
    render_upgrade_module,
)

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def package_file_name(nso: str, name: str, version: str) -> str:
    return f"ncs-{nso}-{name}-{version}.tar.gz"


def upgrade_component(name: str) -> UpgradeComponent:
    module = name.replace("-", "_").replace(".", "_") + "_upgrade"
    return UpgradeComponent(f"{name}-upgrade", f"{module}.upgrade.Upgrade")


def render_meta(
    name: str,
    version: str,
    ned_id: Optional[str],
    description: str,
    ncs_min_versions: list[str],
    ncs_max_versions: list[str],
    requires: list[Requirement],
    upgrade: Optional[UpgradeComponent],
) -> str:
    lines = [
        f'<ncs-package xmlns="{PACKAGES_NS}">',
        f"  <name>{escape(name)}</name>",
        f"  <package-version>{escape(version)}</package-version>",
        f"  <description>{escape(description)}</description>",
    ]
    lines += [f"  <ncs-min-version>{escape(v)}</ncs-min-version>" for v in ncs_min_versions]
    lines += [f"  <ncs-max-version>{escape(v)}</ncs-max-version>" for v in ncs_max_versions]
    for req in requires:
        lines += ["  <required-package>", f"    <name>{escape(req.name)}</name>"]
        if req.min_version:
            lines.append(f"    <min-version>{escape(req.min_version)}</min-version>")
        if req.max_version:
            lines.append(f"    <max-version>{escape(req.max_version)}</max-version>")
        lines.append("  </required-package>")
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
    lines.append("  </component>")
    if upgrade is not None:
        lines += [
            "  <component>",
            f"    <name>{escape(upgrade.name)}</name>",
            "    <upgrade>",
            f"      <python-class-name>{escape(upgrade.python_class_name)}</python-class-name>",
            "    </upgrade>",
            "  </component>",
        ]
    lines += ["</ncs-package>", ""]
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
    requires: Optional[list[Requirement]] = None,
    ncs_min_versions: Optional[list[str]] = None,
    ncs_max_versions: Optional[list[str]] = None,
    upgrade_sets: Optional[list[tuple[str, str]]] = None,
    file_prefix: Optional[str] = None,
    ned_leaves: Optional[list[str]] = None,
) -> Path:
    """Write the package; the same arguments always give the same bytes.

    ``nso`` is the release the package is compiled for (``6.2`` or a full ``6.2.3``); its
    ``X.Y`` is stamped into every fxs, and it is the ``ncs-min-version`` unless
    ``ncs_min_versions`` are given. ``upgrade_sets`` (leaf, value) add an upgrade component
    that sets them on the package's data when NSO loads this build in place of another.
    ``file_prefix`` overrides the ``ncs-<nso>-`` file name prefix's version (vendors
    sometimes use the full version there). ``ned_leaves`` (a NED only): the config leaves
    its device model defines, stamped into its fxs (invented).
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"bad package name {name!r}")
    for vsn in (nso, *(ncs_min_versions or []), *(ncs_max_versions or [])):
        if not versions.is_valid(vsn):
            raise ValueError(f"bad NSO version {vsn!r}")
    for leaf, _value in upgrade_sets or []:
        if not is_leaf_name(leaf):
            raise ValueError(f"bad leaf name {leaf!r} for the upgrade component")
    if ned_leaves and not ned_id:
        raise ValueError("--ned-leaf describes a NED's device model: give --ned-id too")
    for leaf in ned_leaves or []:
        if not is_leaf_name(leaf):
            raise ValueError(f"bad leaf name {leaf!r} for the NED's model")
    module = prefix or name
    fxs = Fxs(
        module=module,
        namespace=namespace or f"http://example.com/nso-sim/{name}",
        prefix=module,
        compiled_for=versions.major(nso),
        leaves=sorted(set(ned_leaves or [])),
    )
    upgrade = upgrade_component(name) if upgrade_sets else None
    files: Files = {
        "package-meta-data.xml": render_meta(
            name,
            version,
            ned_id,
            description or f"{name} package built by nso-sim",
            ncs_min_versions or [nso],
            ncs_max_versions or [],
            requires or [],
            upgrade,
        ).encode(),
        f"load-dir/{module}.fxs": fxs.render().encode(),
        "README": f"{name} {version}, compiled for NSO {versions.major(nso)}\n".encode(),
    }
    if upgrade is not None:
        code = render_upgrade_module(name, version, upgrade_sets or [])
        files[upgrade.module_path] = code.encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package_file_name(file_prefix or nso, name, version)
    target.write_bytes(reproducible_targz({f"{name}/{rel}": data for rel, data in files.items()}))
    return target
