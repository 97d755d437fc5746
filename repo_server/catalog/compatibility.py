"""Package compatibility: which NSO releases can load a package build, and what it needs beside it.

Every rule comes from the package itself: the compiled-for prefix of its file name
(`ncs-X.Y[.Z]-`) and its package-meta-data.xml as kept at upload in `Artifact.meta`
(`ncs_min_versions`, `ncs_max_versions`, `required_packages`). NSO applies the same rules
when it loads packages, but only at start, after the node was stopped; they are checked here
at upload (`inspect.py`: metadata that contradicts itself), at `release create`
(`releases.py`) and at preflight (`upgrades/preflight.py`).

- compiled for: NSO loads only packages compiled for its own X.Y branch, and maintenance
  releases of a branch are binary compatible (the guide's "Preparing for Upgrade"): any build
  of a branch serves every release of that branch, unless the metadata limits it.
- `ncs-min-version` may be given once per branch (`show packages` prints
  `ncs-min-version [ 3.2.2 3.3 3.4 ]`): release V needs V >= the entry on V's own branch when
  there is one, else V >= the lowest entry.
- `ncs-max-version`: `X.Y` covers that whole branch (6.2 admits 6.2.3), `X.Y.Z` is an
  inclusive bound; with several, the entry on V's branch counts when there is one, else the
  highest.
- `required-package`: the named package must be in the same set (a release's packages, or a
  node's packages after a package upgrade) at a version within [min-version, max-version];
  package versions compare as `packaging` versions when both parse, else as equal strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from packaging.version import InvalidVersion, Version

from repo_server.catalog.versions import NsoVersion

if TYPE_CHECKING:
    from repo_server.catalog.models import Artifact

META_FILE = "package-meta-data.xml"


@dataclass(frozen=True)
class Refusal:
    """Why a build cannot be used: what is wrong, and what to do about it."""

    fact: str
    fix: str

    def __str__(self) -> str:
        return f"{self.fact}: {self.fix}"


@dataclass(frozen=True)
class Requirement:
    """One `<required-package>`: a package name and an optional version range."""

    name: Optional[str]
    min_version: Optional[str] = None
    max_version: Optional[str] = None

    @property
    def wanted(self) -> str:
        """`router-nc 1.2 to 1.9`, `router-nc 1.2 or newer`, ... or just the name."""
        low, high = self.min_version, self.max_version
        if low and high:
            return f"{self.name} {low} to {high}"
        if low:
            return f"{self.name} {low} or newer"
        if high:
            return f"{self.name} {high} or older"
        return str(self.name)

    def admits(self, version: str) -> bool:
        return (self.min_version is None or not _package_less(version, self.min_version)) and (
            self.max_version is None or not _package_less(self.max_version, version)
        )


def _package_less(a: str, b: str) -> bool:
    """a < b for package versions; versions that do not parse only equal themselves."""
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return a != b


def _nso_versions(texts: Iterable[Any], key: str, package: str) -> tuple[NsoVersion, ...]:
    versions = []
    for text in texts:
        try:
            versions.append(NsoVersion.parse(text))
        except ValueError as exc:
            raise ValueError(f"{META_FILE} has a bad {key} for {package}: {exc}") from None
    return tuple(versions)


def _applying(
    entries: tuple[NsoVersion, ...],
    version: NsoVersion,
    strictest: Callable[[list[NsoVersion]], NsoVersion],
    otherwise: Callable[[tuple[NsoVersion, ...]], NsoVersion],
) -> Optional[NsoVersion]:
    """The entry of `version`'s own branch (the strictest if several), else `otherwise` of all."""
    own = [entry for entry in entries if entry.branch == version.branch]
    if own:
        return strictest(own)
    return otherwise(entries) if entries else None


def _max_admits(bound: NsoVersion, version: NsoVersion) -> bool:
    if len(bound.release) <= 2:
        return version < bound.next_sibling()  # X.Y: the whole branch
    return version <= bound


def _max_text(bound: NsoVersion) -> str:
    return f"{bound}.x" if len(bound.release) <= 2 else str(bound)


def _range_inverted(req: Requirement) -> bool:
    if not (req.min_version and req.max_version):
        return False
    try:
        return Version(req.min_version) > Version(req.max_version)
    except InvalidVersion:
        return False  # text versions only ever equal themselves: nothing to compare


@dataclass(frozen=True)
class Unmet:
    """A required package that a set lacks (`found` None) or has at another version."""

    build: PackageBuild
    requirement: Requirement
    found: Optional[str]

    def fact(self, where: str) -> str:
        """`where` names the set: "release 6.2", "edge-1 after this upgrade"."""
        required = f"{self.build.filename} requires package {self.requirement.wanted}"
        if self.found is None:
            return f"{required}, which {where} does not include"
        return f"{required}; {where} has {self.requirement.name} {self.found}"


_BUILDS: dict[tuple[str, str], PackageBuild] = {}
_BUILDS_MAX = 10_000


@dataclass(frozen=True)
class PackageBuild:
    """What one package file says about where it can run."""

    filename: str
    name: str
    version: str
    compiled_for: NsoVersion
    min_versions: tuple[NsoVersion, ...] = ()
    max_versions: tuple[NsoVersion, ...] = ()
    requires: tuple[Requirement, ...] = ()

    @classmethod
    def from_meta(
        cls, filename: str, compiled_for: NsoVersion, meta: Mapping[str, Any]
    ) -> PackageBuild:
        """From the package's metadata as kept in `Artifact.meta` (ValueError if malformed)."""
        name, version = str(meta.get("name") or ""), str(meta.get("version") or "")
        return cls(
            filename=filename,
            name=name,
            version=version,
            compiled_for=compiled_for,
            min_versions=_nso_versions(meta.get("ncs_min_versions", ()), "ncs-min-version", name),
            max_versions=_nso_versions(meta.get("ncs_max_versions", ()), "ncs-max-version", name),
            requires=tuple(
                Requirement(r.get("name"), r.get("min_version"), r.get("max_version"))
                for r in meta.get("required_packages", ())
            ),
        )

    @classmethod
    def of(cls, artifact: Artifact) -> PackageBuild:
        # A build is its bytes: keyed by name and digest (not the row id, which another
        # database reuses), one parse per build, not one per node a plan checks it for.
        key = (artifact.filename, artifact.sha256)
        build = _BUILDS.get(key)
        if build is None:
            meta = {**artifact.meta, "name": artifact.name, "version": artifact.version}
            build = cls.from_meta(artifact.filename, NsoVersion.parse(artifact.nso_version), meta)
            if artifact.sha256:
                if len(_BUILDS) >= _BUILDS_MAX:
                    _BUILDS.clear()
                _BUILDS[key] = build
        return build

    # -- which releases ------------------------------------------------------------------

    def min_for(self, version: NsoVersion) -> Optional[NsoVersion]:
        """The ncs-min-version that applies to `version`: its branch's entry, else the lowest."""
        return _applying(self.min_versions, version, strictest=max, otherwise=min)

    def max_for(self, version: NsoVersion) -> Optional[NsoVersion]:
        """The ncs-max-version that applies to `version`: its branch's entry, else the highest."""
        return _applying(self.max_versions, version, strictest=min, otherwise=max)

    def load_refusal(self, version: NsoVersion, node: Optional[str] = None) -> Optional[Refusal]:
        """Why NSO `version` cannot load this build, or None.

        Worded for release `version` (the way out: another build, or another target) or,
        with `node`, for that node running `version` (another build, or upgrade NSO first).
        """
        where = f"{node} (NSO {version})" if node else f"release {version}"
        if self.compiled_for.branch != version.branch:
            return Refusal(
                f"{self.filename} is built for NSO {self.compiled_for} "
                f"(ncs-{self.compiled_for}-); {where} cannot load it: NSO loads only packages "
                "compiled for its own X.Y branch",
                f"use a build for {version.branch} "
                f"(ncs-{version.branch}-{self.name}-{self.version}.tar.gz)",
            )
        low = self.min_for(version)
        if low is not None and version < low:
            move = "upgrade NSO to" if node else "target"
            return Refusal(
                f"{self.filename} needs NSO {low} or newer (ncs-min-version); "
                f"{where} cannot load it",
                f"use a build for {version} or {move} {low}+" + (" first" if node else ""),
            )
        high = self.max_for(version)
        if high is not None and not _max_admits(high, version):
            limit = _max_text(high)
            return Refusal(
                f"{self.filename} supports NSO {limit} at most (ncs-max-version); "
                f"{where} cannot load it",
                f"use a build for {version}" + ("" if node else f" or target {limit} or older"),
            )
        return None

    # -- upload --------------------------------------------------------------------------

    def metadata_problems(self) -> list[str]:
        """Where the file name and package-meta-data.xml contradict each other or themselves."""
        problems = []
        prefix = self._prefix_problem()
        if prefix:
            problems.append(prefix)
        for req in self.requires:
            if not req.name:
                problems.append(
                    f"{META_FILE} of {self.name} has a <required-package> without a <name>: "
                    "add the name of the package it needs (or remove the entry) and rebuild"
                )
            elif req.name == self.name:
                problems.append(
                    f"{META_FILE} of {self.name} says the package requires itself "
                    "(<required-package> names it): remove that entry and rebuild"
                )
            elif _range_inverted(req):
                problems.append(
                    f"{META_FILE} of {self.name}: <required-package> {req.name} has "
                    f"min-version {req.min_version} above max-version {req.max_version}, which "
                    "no version satisfies: fix the range and rebuild"
                )
        return problems

    def _prefix_problem(self) -> Optional[str]:
        """Does some release the file name allows pass ncs-min-version and ncs-max-version?

        `ncs-6.2-` means compiled for some 6.2.x, i.e. [6.2, 6.3); `ncs-6.7.1-` means
        [6.7.1, 6.7.2). Within one branch the metadata allows one interval, so the lowest
        release it allows in that range is the one to test.
        """
        prefix, upper = self.compiled_for, self.compiled_for.next_sibling()
        low, high = self.min_for(prefix), self.max_for(prefix)
        lowest = max(prefix, low) if low is not None else prefix
        named = f"the file name says the package is compiled for NSO {prefix} (ncs-{prefix}-), but"
        if lowest >= upper:
            return (
                f"{named} {META_FILE} says ncs-min-version {low}, newer than any {prefix} "
                f"release: rename the file with the release it was built for (e.g. "
                f"ncs-{low.branch if low else prefix}-...), or rebuild the package for NSO {prefix}"
            )
        if high is not None and not _max_admits(high, lowest):
            if lowest == prefix:
                return (
                    f"{named} {META_FILE} says ncs-max-version {_max_text(high)}, older than any "
                    f"{prefix} release: rebuild the package for NSO {prefix}, or rename the "
                    "file with the release it was built for"
                )
            return (
                f"{named} {META_FILE} says ncs-min-version {low} and ncs-max-version "
                f"{_max_text(high)}: no {prefix} release is in between; fix the range and "
                "rebuild the package (or rename the file with the release it was built for)"
            )
        return None


def unmet_requirements(builds: Iterable[PackageBuild], present: Mapping[str, str]) -> list[Unmet]:
    """Every `<required-package>` of `builds` that the set `present` (name -> version) fails."""
    unmet = []
    for build in builds:
        for req in build.requires:
            if not req.name:
                continue  # refused at upload; nothing to look for
            found = present.get(req.name)
            if found is None or not req.admits(found):
                unmet.append(Unmet(build, req, found))
    return unmet
