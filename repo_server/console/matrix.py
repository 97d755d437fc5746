"""The compatibility matrix: packages x NSO releases, the question every major upgrade
starts with. For each release and package: which builds in the catalog it can load
(catalog/compatibility.py's rules), which one the release pins, and which nodes an upgrade
to it would refuse for this package (preflight's package_missing and package_version),
with what to upload or define."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.catalog.compatibility import PackageBuild
from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.catalog.releases import list_releases
from repo_server.catalog.versions import NsoVersion
from repo_server.console.shapes import listed
from repo_server.fleet.models import Node

# Node names shown per blocked cell; the rest are counted.
SHOWN_NODES = 5


@dataclass
class Blocked:
    version: str  # the package version the nodes run
    nodes: list[str]
    count: int
    fix: str


@dataclass
class Cell:
    builds: list[str] = field(default_factory=list)
    pinned: Optional[str] = None
    blocked: list[Blocked] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.blocked:
            return "blocked"
        if self.pinned:
            return "pinned"
        return "available" if self.builds else "none"


@dataclass
class Matrix:
    releases: list[Release]
    packages: list[str]
    cells: dict[tuple[str, str], Cell]  # (package, release version)

    def cell(self, package: str, release: Release) -> Cell:
        return self.cells[(package, release.nso_version)]

    @property
    def blocked_count(self) -> int:
        return sum(1 for c in self.cells.values() if c.blocked)


def _version(text: Optional[str]) -> Optional[NsoVersion]:
    try:
        return NsoVersion.parse(text) if text else None
    except ValueError:
        return None


def _running(session: Session) -> dict[str, dict[str, list[tuple[str, Optional[NsoVersion]]]]]:
    """package -> its version -> [(node, the NSO it runs)], from the last inventories; each
    node's version parsed once."""
    out: dict[str, dict[str, list[tuple[str, Optional[NsoVersion]]]]] = defaultdict(dict)
    rows = session.execute(
        select(Node.name, Node.running_version, Node.inventory).order_by(Node.name)
    )
    for name, running, inventory in rows:
        nso = _version(running)
        if nso is None:
            continue  # runs no NSO we can name: no upgrade plans it (preflight refuses it)
        seen = set()
        for package in listed(inventory, "packages"):
            if not isinstance(package, dict) or not package.get("name"):
                continue
            key = (str(package["name"]), str(package.get("version") or ""))
            if key not in seen:  # a package listed twice is one package
                seen.add(key)
                out[key[0]].setdefault(key[1], []).append((name, nso))
    return out


def _blocked(
    release: Release,
    target: NsoVersion,
    package: str,
    pinned: Optional[str],
    loadable: list[str],
    running: dict[str, list[tuple[str, Optional[NsoVersion]]]],
) -> list[Blocked]:
    out = []
    for version, nodes in sorted(running.items()):
        if pinned == version:
            continue
        # Only an upgrade moves a node to the release: not one on it, or on a newer one.
        moving = [n for n, on in nodes if on is not None and on < target]
        if not moving:
            continue
        wanted = (
            f"ncs-{target.branch}-{package}-{version}.tar.gz"
            if version
            else f"a build of {package} for NSO {target.branch} (the nodes report no version)"
        )
        if pinned is not None:
            fix = (
                f"release {release.nso_version} pins {package} {pinned}: upgrade the package "
                f"on these nodes first, or define a release with {wanted}"
            )
        elif version in loadable:
            fix = f"the catalog has {wanted}: define a release that pins it"
        else:
            fix = f"upload {wanted} and define a release with it"
        out.append(Blocked(version, moving[:SHOWN_NODES], len(moving), fix))
    return out


def build_matrix(session: Session) -> Matrix:
    releases = list_releases(session)
    builds: dict[str, list[Artifact]] = defaultdict(list)
    for artifact in session.scalars(
        select(Artifact)
        .where(Artifact.kind.in_(("package", "ned")), Artifact.deleted_at.is_(None))
        .order_by(Artifact.version_key)
    ):
        builds[artifact.name].append(artifact)
    running = _running(session)
    packages = sorted(set(builds) | set(running))
    cells: dict[tuple[str, str], Cell] = {}
    for release in releases:
        target = NsoVersion.parse(release.nso_version)
        pins = {a.name: a.version for a in release.packages}
        for package in packages:
            loadable = [
                a.version
                for a in builds.get(package, [])
                if PackageBuild.of(a).load_refusal(target) is None
            ]
            pinned = pins.get(package)
            cells[(package, release.nso_version)] = Cell(
                builds=list(dict.fromkeys(loadable)),
                pinned=pinned,
                blocked=_blocked(
                    release, target, package, pinned, loadable, running.get(package, {})
                ),
            )
    return Matrix(releases, packages, cells)
