"""Preflight: may this node be upgraded to this release now? Every reason at once.

Each rule reads the node's last inventory (docs/agent-protocol.md) and the release manifest
and, when it objects, says what is wrong and what to do about it. The rules follow the
guide's "Preparing for Upgrade" list and DESIGN.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional

from packaging.version import Version

from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.catalog.versions import NsoVersion
from repo_server.db import utcnow
from repo_server.fleet.models import Node

# ncs.conf elements removed in a release: NSO then refuses to start (exit 21) if present.
REMOVED_NCS_CONF_ELEMENTS = {"show-log-directory": "5.5", "large-scale": "5.6"}
AES256_FROM = NsoVersion.parse("5.3")
INVENTORY_MAX_AGE = timedelta(minutes=5)
MiB = 1 << 20


@dataclass
class Reason:
    code: str
    message: str
    remedy: str


@dataclass
class UpgradeOptions:
    allow_extra_packages: bool = False
    strip_removed_ncs_conf: bool = False


@dataclass
class Verdict:
    node: str
    source_version: Optional[str]
    target_version: str
    kind: Optional[str] = None  # "maintenance" | "major"
    reasons: list[Reason] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    packages: list[Artifact] = field(default_factory=list)
    remove_ncs_conf: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def refuse(self, code: str, message: str, remedy: str) -> None:
        self.reasons.append(Reason(code, message, remedy))


def _loose_version(text: Any) -> Optional[NsoVersion]:
    try:
        return NsoVersion.parse(str(text).split("-")[0].split("+")[0])
    except ValueError:
        return None


def platform_version(text: Any) -> Optional[Version]:
    """Java and glibc versions as hosts print them: `17`, `17.0.8`, `1.8.0_382`, `2.34`."""
    match = re.match(r"\d+(\.\d+)*", str(text or "").strip())
    return Version(match.group(0)) if match else None


def _check_node(
    verdict: Verdict, node: Node, inv: dict[str, Any], active_job: Optional[int]
) -> Optional[NsoVersion]:
    """Rules every change to a node shares; returns the running version when known."""
    if active_job is not None:
        verdict.refuse(
            "job_active",
            f"job {active_job} is still running on {node.name}",
            f"wait for it ('nso-repo job watch {active_job}') before starting another",
        )
    if node.inventory_at is None or utcnow() - node.inventory_at > INVENTORY_MAX_AGE:
        verdict.refuse(
            "inventory_stale",
            f"{node.name} has not reported its inventory in the last 5 minutes",
            "check that nso-agent runs on the host ('nso-agent status') and can reach the server",
        )
    running = inv.get("running_version")
    source = _loose_version(running) if running else None
    if inv.get("status") != "started" or source is None:
        verdict.refuse(
            "not_running",
            f"NSO on {node.name} is not running (status {inv.get('status')!r})",
            "start NSO and check it is healthy before upgrading: an upgrade needs a backup of a live node",
        )
    _check_health(verdict, inv)
    _check_ha(verdict, inv)
    return source


def check(
    node: Node,
    release: Release,
    releases: list[Release],
    options: UpgradeOptions,
    active_job: Optional[int] = None,
) -> Verdict:
    inv: dict[str, Any] = node.inventory or {}
    target = NsoVersion.parse(release.nso_version)
    verdict = Verdict(
        node=node.name, source_version=inv.get("running_version"), target_version=str(target)
    )
    source = _check_node(verdict, node, inv, active_job)
    if source is not None:
        _check_direction(verdict, source, target)
        _check_path(verdict, source, target, release, releases)
    _check_packages(verdict, inv, release, options)
    _check_platform(verdict, inv, release)
    _check_ncs_conf(verdict, inv, source, target, options)
    _check_crypto(verdict, inv, target)
    _check_disk(
        verdict, inv, release.installer.size * 3 + sum(a.size for a in verdict.packages), release
    )
    return verdict


def check_package_upgrade(
    node: Node, artifacts: list[Artifact], active_job: Optional[int] = None
) -> Verdict:
    """A package-only upgrade: new builds for the running release, one per package."""
    inv: dict[str, Any] = node.inventory or {}
    running = inv.get("running_version")
    verdict = Verdict(
        node=node.name, source_version=running, target_version=running or "", kind="package"
    )
    source = _check_node(verdict, node, inv, active_job)
    loaded = {p["name"]: str(p.get("version", "")) for p in inv.get("packages", [])}
    seen: set[str] = set()
    for artifact in artifacts:
        if artifact.kind not in ("package", "ned"):
            verdict.refuse(
                "not_a_package",
                f"{artifact.filename} is a {artifact.kind}",
                "name package files only",
            )
            continue
        if artifact.name in seen:
            verdict.refuse(
                "package_twice",
                f"two builds of {artifact.name} were named",
                "name one build per package",
            )
        seen.add(artifact.name)
        built_for = NsoVersion.parse(artifact.nso_version)
        if source is not None and not (
            built_for == source
            or (len(built_for.release) <= 2 and built_for.branch == source.branch)
        ):
            verdict.refuse(
                "package_release",
                f"{artifact.filename} is built for NSO {artifact.nso_version}; the node runs {source}",
                f"use the ncs-{source.branch}- build: NSO refuses packages compiled for another release",
            )
        if loaded.get(artifact.name) == artifact.version:
            verdict.refuse(
                "package_same",
                f"the node already runs {artifact.name} {artifact.version}",
                "leave it out of the upgrade",
            )
    verdict.packages = list(artifacts)
    _check_disk(verdict, inv, sum(a.size for a in artifacts), None)
    return verdict


def _check_health(verdict: Verdict, inv: dict[str, Any]) -> None:
    down = [p["name"] for p in inv.get("packages", []) if p.get("oper_status", "up") != "up"]
    if down:
        verdict.refuse(
            "packages_down",
            f"packages not up on the node: {', '.join(down)}",
            "fix them first (show packages package NAME oper-status); an upgrade must start healthy",
        )


def _check_direction(verdict: Verdict, source: NsoVersion, target: NsoVersion) -> None:
    if source == target:
        verdict.refuse("same_version", f"the node already runs {target}", "nothing to do")
    elif target < source:
        verdict.refuse(
            "downgrade",
            f"{target} is older than the running {source}",
            "downgrades are restores: roll back the job that upgraded it, or restore a backup",
        )
    verdict.kind = "maintenance" if source.is_maintenance_of(target) else "major"


def _check_path(
    verdict: Verdict,
    source: NsoVersion,
    target: NsoVersion,
    release: Release,
    releases: list[Release],
) -> None:
    minimum = release.requirements.get("min_source_version")
    if not minimum or source >= NsoVersion.parse(minimum):
        verdict.path = [str(target)]
        return
    floor = NsoVersion.parse(minimum)
    hops = [
        r
        for r in releases
        if floor <= NsoVersion.parse(r.nso_version) < target
        and source < NsoVersion.parse(r.nso_version)
        and source >= NsoVersion.parse(r.requirements.get("min_source_version") or "0")
    ]
    if hops:
        hop = max(hops, key=lambda r: NsoVersion.parse(r.nso_version))
        verdict.path = [hop.nso_version, str(target)]
        verdict.refuse(
            "upgrade_path",
            f"{target} cannot be reached directly from {source} (it needs {floor} or newer)",
            f"upgrade to {hop.nso_version} first ('nso-repo node upgrade {verdict.node} "
            f"--to {hop.nso_version}'), then to {target}",
        )
    else:
        verdict.refuse(
            "upgrade_path",
            f"{target} cannot be reached directly from {source} (it needs {floor} or newer)",
            f"define an intermediate release between {floor} and {target} and upgrade to it first",
        )


def _check_packages(
    verdict: Verdict, inv: dict[str, Any], release: Release, options: UpgradeOptions
) -> None:
    offered = {a.name: a for a in release.packages}
    loaded = {p["name"]: str(p.get("version", "")) for p in inv.get("packages", [])}
    for name, version in sorted(loaded.items()):
        build = offered.get(name)
        if build is None:
            verdict.refuse(
                "package_missing",
                f"release {release.nso_version} has no build of {name} {version}, which the node runs",
                f"upload ncs-{NsoVersion.parse(release.nso_version).branch}-{name}-{version}.tar.gz "
                "and add it to the release; leaving it out would delete its data",
            )
        elif build.version != version:
            verdict.refuse(
                "package_version",
                f"release {release.nso_version} has {name} {build.version} but the node runs {version}",
                "upgrade packages and NSO separately: first move the node to the same package "
                "version, or give the release a build of the running version",
            )
    extra = sorted(set(offered) - set(loaded))
    if extra and not options.allow_extra_packages:
        verdict.refuse(
            "package_extra",
            f"release {release.nso_version} adds packages the node does not run: {', '.join(extra)}",
            "ask for them explicitly (--allow-extra-packages) or use a release without them",
        )
    verdict.packages = [
        a for name, a in sorted(offered.items()) if name in loaded or options.allow_extra_packages
    ]


def _check_platform(verdict: Verdict, inv: dict[str, Any], release: Release) -> None:
    needs = release.requirements
    for key, label in (("java", "Java"), ("glibc", "glibc")):
        if not needs.get(key):
            continue
        have = platform_version(inv.get(key))
        want = platform_version(needs[key])
        if want is not None and (have is None or have < want):
            verdict.refuse(
                f"{key}_too_old",
                f"NSO {release.nso_version} needs {label} {want} or newer; the node has "
                f"{inv.get(key) or 'none reported'}",
                f"install {label} {want}+ on the host first",
            )


def _check_ncs_conf(
    verdict: Verdict,
    inv: dict[str, Any],
    source: Optional[NsoVersion],
    target: NsoVersion,
    options: UpgradeOptions,
) -> None:
    present = set(inv.get("ncs_conf_elements", []))
    for element, removed_in in REMOVED_NCS_CONF_ELEMENTS.items():
        if element not in present or target < NsoVersion.parse(removed_in):
            continue
        if options.strip_removed_ncs_conf:
            verdict.remove_ncs_conf.append(element)
            continue
        verdict.refuse(
            "ncs_conf_removed_element",
            f"ncs.conf has <{element}>, removed in NSO {removed_in}: {target} would refuse to start",
            "remove it from /etc/ncs/ncs.conf, or let the upgrade strip it (--strip-ncs-conf)",
        )


def _check_crypto(verdict: Verdict, inv: dict[str, Any], target: NsoVersion) -> None:
    if target < AES256_FROM:
        return
    if "AES256CFB128_KEY" not in inv.get("crypto_keys", []):
        verdict.refuse(
            "aes256_key_missing",
            f"NSO {target} needs an AES256CFB128 key and /etc/ncs/ncs.crypto_keys has none",
            "generate one with 'openssl rand -hex 32' and add AES256CFB128_KEY=<key> to "
            "/etc/ncs/ncs.crypto_keys (or to your external key command's output)",
        )


def _check_ha(verdict: Verdict, inv: dict[str, Any]) -> None:
    ha = inv.get("ha") or {}
    if ha.get("enabled") or ha.get("mode") not in (None, "none"):
        verdict.refuse(
            "ha_member",
            f"the node is in HA mode {ha.get('mode')!r}: a single-node upgrade would break the cluster",
            "upgrade the HA group as a whole (HA-coordinated upgrades), or disable HA first",
        )


def _check_disk(
    verdict: Verdict, inv: dict[str, Any], need_opt: int, release: Optional[Release]
) -> None:
    free = inv.get("disk_free_bytes") or {}
    # The installer unpacks to several times its size; packages are kept beside the old ones.
    if release is not None:
        need_opt = max(need_opt, int(release.requirements.get("min_free_bytes", 0)))
    # A backup and a compaction can each need about the size of the CDB.
    need_var = 2 * int(inv.get("cdb_bytes", 0)) + 64 * MiB
    for path, need in (("/opt/ncs", need_opt), ("/var/opt/ncs", need_var)):
        have = free.get(path)
        if have is None:
            verdict.refuse(
                "disk_unknown",
                f"the node did not report free space for {path}",
                "upgrade nso-agent or check it can read the file system",
            )
        elif int(have) < need:
            verdict.refuse(
                "disk_space",
                f"{path} has {int(have) // MiB} MiB free; the upgrade needs about {need // MiB} MiB",
                f"free space on {path} (old releases under /opt/ncs, old backups) and try again",
            )
