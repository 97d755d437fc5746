"""Preflight: may this node be upgraded to this release now? Every reason at once.

Each rule reads the node's last inventory (docs/agent-protocol.md) and the release manifest
and, when it objects, says what is wrong and what to do about it. The rules follow the
guide's "Preparing for Upgrade" list and DESIGN.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from packaging.version import Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from repo_server.catalog.compatibility import PackageBuild, Refusal, unmet_requirements
from repo_server.catalog.filenames import a_kind
from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.catalog.versions import NsoVersion
from repo_server.db import among, dialect_of, utcnow
from repo_server.fleet.models import Node
from repo_server.fleet.schemas import inventory_problems
from repo_server.upgrades.job_states import READ_ONLY_STEPS
from repo_server.upgrades.models import NodeHold, Step, job_nodes

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
    # Emergency patches the node has that the upgrade leaves behind (docs/patches.md).
    drops_patches: list[dict[str, Optional[str]]] = field(default_factory=list)

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


def _packages_known(inv: dict[str, Any]) -> bool:
    return isinstance(inv.get("packages"), list)


def _packages(inv: dict[str, Any]) -> list[dict[str, Any]]:
    packages = inv["packages"] if _packages_known(inv) else []
    return [p for p in packages if isinstance(p, dict)]


def _loaded(inv: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: str(p.get("version", "")) for p in _packages(inv) if p.get("name")}


def _never_reported(verdict: Verdict, node: Node) -> Verdict:
    """A node without any inventory: one reason, no facts guessed for it."""
    verdict.refuse(
        "never_reported",
        f"{node.name} has never reported an inventory: nothing is known about it yet",
        "install and start nso-agent on the host, enroll it with this node's token, and check "
        "'nso-agent status' until it shows a heartbeat; then plan again",
    )
    return verdict


def _invalid_inventory(verdict: Verdict, node: Node, inv: Any) -> bool:
    """An inventory stored before heartbeats were checked may hold facts of the wrong type;
    no rule reads it then (they would fail on it): one reason, and the plan stops here."""
    problems = [] if node.inventory_checked else inventory_problems(inv)
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        verdict.refuse(
            "inventory_invalid",
            f"the inventory {node.name} reported does not fit the protocol: {shown}",
            "upgrade nso-agent on the host to the server's version and wait for its next "
            "heartbeat (within a minute), which replaces the inventory; then plan again",
        )
    return bool(problems)


def _check_node(
    verdict: Verdict,
    node: Node,
    inv: dict[str, Any],
    active_job: Optional[int],
    member: bool = False,
    changed_at: Optional[datetime] = None,
) -> Optional[NsoVersion]:
    """Rules every change to a node shares; returns the running version when known.
    ``changed_at``: when the node's last step ended (last_step_ends)."""
    if active_job is not None:
        # Its agent is busy with that job (a step may run for many minutes without a
        # heartbeat): how old its inventory is says nothing until the job has ended.
        verdict.refuse(
            "job_active",
            f"job {active_job} is still running on {node.name}",
            f"wait for it ('nso-repo job watch {active_job}') before starting another",
        )
    elif inventory_behind(node.inventory_at, changed_at) and not inventory_stale(changed_at):
        # A plan on it would start from what the node ran before that step: a package
        # upgrade right after another would leave out (and delete) what that one added.
        # (An agent that has not reported within 5 minutes of the step is stale below.)
        verdict.refuse(
            "inventory_behind",
            f"{node.name}'s {BEHIND} (at {changed_at:%Y-%m-%d %H:%M:%S} UTC): what it runs "
            "now is not known yet",
            "wait for its next heartbeat (the agent sends one when a job ends, and at "
            "least every minute or two), then plan again",
        )
    elif inventory_stale(node.inventory_at):
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
    if not _packages_known(inv):
        verdict.refuse(
            "packages_unknown",
            f"{node.name} did not report which packages it runs",
            "check that nso-agent can read /var/opt/ncs/packages ('nso-agent status'), or "
            "upgrade it: a plan without the loaded packages would leave them out and delete "
            "their data",
        )
    _check_cli_facts(verdict, node, inv, member)
    _check_current(verdict, node, inv, source)
    return source


def check(
    node: Node,
    release: Release,
    releases: list[Release],
    options: UpgradeOptions,
    active_job: Optional[int] = None,
    group: Optional[str] = None,
    member: bool = False,
    changed_at: Optional[datetime] = None,
) -> Verdict:
    """Whether ``node`` may be upgraded to ``release``. ``group``: the HA group the node
    belongs to, whose members only a group upgrade changes; ``member``: the check is for
    that group upgrade; ``changed_at``: when its last step ended (last_step_ends)."""
    inv: dict[str, Any] = node.inventory or {}
    target = NsoVersion.parse(release.nso_version)
    verdict = Verdict(node=node.name, source_version=None, target_version=str(target))
    if group is not None and not member:
        verdict.refuse(
            "group_member",
            f"{node.name} is a member of HA group {group}: a single-node upgrade would take "
            "it out of the cluster (other NSO versions cannot form one)",
            f"upgrade the group as a whole: 'nso-repo group plan {group} --to "
            f"{release.nso_version}', then 'nso-repo group upgrade'",
        )
    if node.inventory_at is None:
        return _never_reported(verdict, node)
    if _invalid_inventory(verdict, node, inv):
        verdict.packages = list(release.packages)
        return verdict
    verdict.source_version = inv.get("running_version")
    verdict.drops_patches = dropped_patches(inv, str(target))
    source = _check_node(verdict, node, inv, active_job, member, changed_at)
    if source is not None:
        _check_direction(verdict, source, target)
        _check_path(verdict, source, target, release, releases)
    _check_packages(verdict, inv, release, target, options)
    _check_platform(verdict, inv, release)
    _check_ncs_conf(verdict, inv, target, options)
    _check_crypto(verdict, inv, target)
    _check_disk(
        verdict, inv, release.installer.size * 3 + sum(a.size for a in release.packages), release
    )
    if not verdict.ok:
        # `nso-repo node plan` shows what the upgrade would do: every package of the
        # release it would involve, the refused ones included.
        verdict.packages = list(release.packages)
    return verdict


def dropped_patches(inv: dict[str, Any], target: str) -> list[dict[str, Optional[str]]]:
    """The patches (module, patch id: null when unknown) a move to ``target`` leaves
    behind: they live in the running release's own folder (``lib/ncs/patches``) and are
    built for that release only."""
    release = inv.get("running_version") or inv.get("current")
    patches = inv.get("patches")
    if release == target or not isinstance(patches, list):
        return []
    return [
        {"module": str(p.get("module")), "patch_id": p.get("patch_id")}
        for p in patches
        if isinstance(p, dict) and p.get("module")
    ]


def check_package_upgrade(
    node: Node,
    artifacts: list[Artifact],
    active_job: Optional[int] = None,
    remove: tuple[str, ...] = (),
    member: bool = False,
    changed_at: Optional[datetime] = None,
    group: Optional[str] = None,
) -> Verdict:
    """A package-only upgrade: new builds for the running release, one per package, and
    packages to take out (``remove``, by name: the old NED after a major NED upgrade).
    ``group``, ``member``, ``changed_at``: as for `check`."""
    inv: dict[str, Any] = node.inventory or {}
    verdict = Verdict(node=node.name, source_version=None, target_version="", kind="package")
    verdict.packages = list(artifacts)
    if group is not None and not member:
        # Whatever its HA state now (disabled by hand, or after a way back): its packages
        # would drift from the other members', which a sync then puts back or fails on.
        verdict.refuse(
            "group_member",
            f"{node.name} is a member of HA group {group}: its packages change with the "
            "group's, on every member",
            f"upgrade the group's packages: 'nso-repo group package-plan {group} ...', then "
            "'nso-repo group package-upgrade'",
        )
    if node.inventory_at is None:
        return _never_reported(verdict, node)
    if _invalid_inventory(verdict, node, inv):
        return verdict
    running = inv.get("running_version")
    verdict.source_version, verdict.target_version = running, running or ""
    source = _check_node(verdict, node, inv, active_job, member, changed_at)
    loaded = _loaded(inv)
    seen: set[str] = set()
    builds: list[PackageBuild] = []
    for artifact in artifacts:
        if artifact.kind not in ("package", "ned"):
            verdict.refuse(
                "not_a_package",
                f"{artifact.filename} is {a_kind(artifact.kind)}",
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
        build = PackageBuild.of(artifact)
        builds.append(build)
        refusal = build.load_refusal(source, node=node.name) if source is not None else None
        if refusal is not None:
            verdict.refuse("package_release", refusal.fact, refusal.fix)
        if loaded.get(artifact.name) == artifact.version:
            verdict.refuse(
                "package_same",
                f"the node already runs {artifact.name} {artifact.version}",
                "leave it out of the upgrade",
            )
    if not artifacts and not remove:
        verdict.refuse(
            "no_change", "no package was named", "name builds to install or packages to remove"
        )
    _check_removals(verdict, node, inv, seen, remove)
    _check_ned_ids_kept(verdict, node, inv, artifacts)
    _check_resulting_set(verdict, node, inv, builds, set(remove))
    _check_disk(verdict, inv, sum(a.size for a in artifacts), None)
    return verdict


def _ned_ids(artifact: Artifact) -> set[str]:
    return {str(n) for n in (artifact.meta or {}).get("ned_ids") or []}


def _check_ned_ids_kept(
    verdict: Verdict, node: Node, inv: dict[str, Any], artifacts: list[Artifact]
) -> None:
    """A NED build that replaces the loaded one provides the ned-ids it did. A new ned-id
    is a major NED upgrade, and the upgrade guide's words are that it cannot simply replace
    the package: the devices on the old ned-id would be left without their NED, which NSO's
    reload refuses (or, allowed to lose data, deletes their config). Only what the catalog
    read at upload is compared; a build whose ned-ids it did not read is left to NSO."""
    new = {a.name: a for a in artifacts if _ned_ids(a)}
    files = {
        p["file"]: p["name"]
        for p in _packages(inv)
        if isinstance(p.get("file"), str) and p.get("name") in new
    }
    session = object_session(node)
    if session is None or not files:
        return
    for old in session.scalars(select(Artifact).where(Artifact.filename.in_(files))):
        build = new[files[old.filename]]
        dropped = sorted(_ned_ids(old) - _ned_ids(build))
        if old.name != build.name or not dropped:
            continue
        verdict.refuse(
            "ned_id_changed",
            f"{build.filename} provides ned-id {', '.join(sorted(_ned_ids(build)))}, not "
            f"{', '.join(dropped)} of the {build.name} {old.version} {node.name} runs: a new "
            "ned-id is a major NED upgrade, which cannot replace the package (devices on the "
            "old ned-id, if any, would lose their NED)",
            "build the new NED as a package of another name and add it beside the old one, "
            "migrate the devices to its ned-id ('nso-repo ned migrate'), then remove the old "
            'package in a later package upgrade (docs/upgrades.md, "Major NED upgrade"). '
            f"When no device uses {', '.join(dropped)}: remove {build.name} in one package "
            "upgrade, and install the new build in the next",
        )


def _check_removals(
    verdict: Verdict, node: Node, inv: dict[str, Any], named: set[str], remove: tuple[str, ...]
) -> None:
    """Each package to remove is one the node runs, and not upgraded in the same change.
    Whether NSO would lose data with it (devices still on a NED's ned-id) is NSO's to say:
    the reload refuses it, unless the upgrade allows data loss."""
    loaded = _loaded(inv) if _packages_known(inv) else None
    for name in remove:
        if name in named:
            verdict.refuse(
                "package_twice",
                f"{name} is both installed and removed",
                "name it in one of the two lists",
            )
        elif loaded is not None and name not in loaded:
            verdict.refuse(
                "package_not_loaded",
                f"{node.name} does not run a package named {name}",
                "leave it out of the packages to remove (nso-repo node ls --json shows them)",
            )


def _check_resulting_set(
    verdict: Verdict,
    node: Node,
    inv: dict[str, Any],
    builds: list[PackageBuild],
    removed: Optional[set[str]] = None,
) -> None:
    """Required packages hold in the set the node runs after a package upgrade: the new builds
    need theirs, and the packages staying loaded must still accept what replaced theirs (and
    not need one that is removed)."""
    if not _packages_known(inv):
        return  # packages_unknown: the resulting set is unknown too
    removed = removed or set()
    changed = {b.name: b.version for b in builds}
    after = {k: v for k, v in {**_loaded(inv), **changed}.items() if k not in removed}
    where = f"{node.name} after this upgrade"
    for unmet in unmet_requirements(builds, after):
        verdict.refuse(
            "package_requires",
            unmet.fact(where),
            f"add a build of {unmet.requirement.wanted} to this upgrade (upload it first)",
        )
    staying = _catalog_builds(node, inv, skip=set(changed) | removed)
    for unmet in unmet_requirements(staying, after):
        if unmet.requirement.name in removed:
            verdict.refuse(
                "package_requires",
                unmet.fact(where),
                f"keep {unmet.requirement.name}, or remove {unmet.build.name} too",
            )
        elif unmet.requirement.name in changed:
            verdict.refuse(
                "package_requires",
                unmet.fact(where),
                f"use a build of {unmet.requirement.wanted}, or upgrade {unmet.build.name} in "
                "the same package upgrade to a build that accepts the new one",
            )


def _catalog_builds(node: Node, inv: dict[str, Any], skip: set[str]) -> list[PackageBuild]:
    """What the catalog knows of the package files the node has loaded (by file name).

    Packages installed from elsewhere have no metadata here; NSO still checks them on reload.
    """
    session = object_session(node)
    files = [p["file"] for p in _packages(inv) if p.get("file") and p.get("name") not in skip]
    if session is None or not files:
        return []
    found = session.scalars(select(Artifact).where(Artifact.filename.in_(files)))
    return [PackageBuild.of(a) for a in found if a.kind in ("package", "ned")]


def _check_cli_facts(verdict: Verdict, node: Node, inv: dict[str, Any], member: bool) -> None:
    """What the agent learns through NSO's CLI: package oper-status and HA status.

    The agent leaves a fact out when the CLI did not answer; unknown is not healthy.
    ``member``: the node is planned as a member of its HA group, whose HA state the group
    plan checks (upgrades/ha_plan.py).
    """
    packages = _packages(inv)
    unknown = []
    if not isinstance(inv.get("ha"), dict):
        unknown.append("HA status")
    blind = [str(p.get("name")) for p in packages if p.get("oper_status") is None]
    if blind:
        unknown.append(f"oper-status of {', '.join(blind)}")
    cli_error = inv.get("cli_error")
    if inv.get("status") == "started" and (cli_error or unknown):
        what = ", ".join(unknown) or "every fact from the CLI"
        verdict.refuse(
            "cli_unreachable",
            f"NSO on {node.name} is started but the agent could not use its CLI "
            f"({cli_error}): unknown {what}"
            if cli_error
            else f"NSO on {node.name} is started but the agent could not learn {what} from its CLI",
            "check the agent's [cli] settings (host, port, user, password or key_file) and "
            "that NSO's CLI answers ('nso-agent status'), then plan again",
        )
    down = [p["name"] for p in packages if p.get("oper_status") not in (None, "up")]
    if down:
        verdict.refuse(
            "packages_down",
            f"packages not up on the node: {', '.join(down)}",
            "fix them first (show packages package NAME oper-status); an upgrade must start healthy",
        )
    if isinstance(inv.get("ha"), dict) and not member:
        _check_ha(verdict, inv["ha"])


def _check_current(
    verdict: Verdict, node: Node, inv: dict[str, Any], source: Optional[NsoVersion]
) -> None:
    if source is None:
        return  # not running: nothing to disagree with
    current = inv.get("current")
    if current and _loose_version(current) == source:
        return
    points_at = f"ncs-{current}" if current else "no release the agent could read"
    verdict.refuse(
        "version_mismatch",
        f"NSO on {node.name} runs {source} but /opt/ncs/current points at {points_at}: "
        f"a restart would not start {source}",
        f"point /opt/ncs/current back at ncs-{source} (or restart NSO on the release it points "
        "at, on purpose) so the running release and current agree, then plan again",
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


def _min_source(release: Release) -> Optional[NsoVersion]:
    text = release.requirements.get("min_source_version")
    return NsoVersion.parse(text) if text else None


@dataclass
class _Hops:
    """Releases as an upgrade graph: a -> b when a < b and b's --min-source accepts a."""

    floors: dict[NsoVersion, Optional[NsoVersion]]

    def leads(self, a: NsoVersion, b: NsoVersion) -> bool:
        floor = self.floors[b]
        return a < b and (floor is None or a >= floor)

    def left_to(self, target: NsoVersion, source: NsoVersion) -> dict[NsoVersion, int]:
        """Hops still needed to reach `target`, for every version that can reach it."""
        left = {target: 0}
        frontier = [target]
        while frontier:
            depth = left[frontier[0]] + 1
            frontier = [
                a
                for a in [*self.floors, source]
                if a not in left and any(self.leads(a, b) for b in frontier)
            ]
            left.update((a, depth) for a in frontier)
        return left

    def reachable(self, source: NsoVersion) -> set[NsoVersion]:
        seen: set[NsoVersion] = set()
        frontier = [source]
        while frontier:
            frontier = [
                b for b in self.floors if b not in seen and any(self.leads(a, b) for a in frontier)
            ]
            seen.update(frontier)
        return seen


def _hops(source: NsoVersion, release: Release, releases: list[Release]) -> _Hops:
    """The releases between `source` and `release`, and `release` itself."""
    target = NsoVersion.parse(release.nso_version)
    floors = {
        NsoVersion.parse(r.nso_version): _min_source(r)
        for r in releases
        if source < NsoVersion.parse(r.nso_version) < target
    }
    floors[target] = _min_source(release)
    return _Hops(floors)


def _chain(hops: _Hops, source: NsoVersion, target: NsoVersion) -> Optional[list[str]]:
    """The shortest chain of releases from `source` to `target`, target last, or None.

    Among chains of one length the newest release is taken at each hop.
    """
    left = hops.left_to(target, source)
    if source not in left:
        return None
    chain, here = [], source
    while here != target:
        here = max(b for b in hops.floors if left.get(b) == left[here] - 1 and hops.leads(here, b))
        chain.append(str(here))
    return chain


def _missing_link(hops: _Hops, source: NsoVersion, target: NsoVersion) -> Reason:
    """Which release would connect `source` to `target`, when no chain does."""
    # Every release that leads on to the target has a floor above what `source` reaches
    # (one without a floor would take `source` directly).
    leading = sorted(v for v in hops.left_to(target, source) if v != source)
    floors = {v: hops.floors[v] or source for v in leading}
    best = max(hops.reachable(source), default=source)
    needs = ", ".join(f"{v} needs {floors[v]} or newer" for v in leading)
    if best == source:
        within = f"no release between them accepts {source}"
    else:
        within = f"the newest release {source} can reach is {best}"
    return Reason(
        "upgrade_path",
        f"no chain of defined releases leads from {source} to {target}: {needs}; {within}",
        f"define a release at or above {min(floors.values())} and below {target} with "
        f"--min-source {best} or older, then plan again",
    )


def _check_path(
    verdict: Verdict,
    source: NsoVersion,
    target: NsoVersion,
    release: Release,
    releases: list[Release],
) -> None:
    """Too old a source needs intermediate releases: releases chain through --min-source."""
    floor = _min_source(release)
    if floor is None or source >= floor:
        verdict.path = [str(target)]
        return
    hops = _hops(source, release, releases)
    chain = _chain(hops, source, target)
    if chain is None:
        verdict.reasons.append(_missing_link(hops, source, target))
        return
    verdict.path = chain
    verdict.refuse(
        "upgrade_path",
        f"{target} cannot be reached directly from {source} (it needs {floor} or newer)",
        f"upgrade through {' -> '.join(chain)}: first 'nso-repo node upgrade {verdict.node} "
        f"--to {chain[0]}', then plan each next hop",
    )


def _check_packages(
    verdict: Verdict,
    inv: dict[str, Any],
    release: Release,
    target: NsoVersion,
    options: UpgradeOptions,
) -> None:
    offered = {a.name: a for a in release.packages}
    loaded = _loaded(inv)
    for name, version in sorted(loaded.items()):
        build = offered.get(name)
        if build is None:
            verdict.refuse(
                "package_missing",
                f"release {release.nso_version} has no build of {name} {version}, which the node runs",
                f"upload ncs-{target.branch}-{name}-{version}.tar.gz "
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
    # With the loaded packages unknown (packages_unknown) nothing is "extra" for sure.
    if extra and not options.allow_extra_packages and _packages_known(inv):
        verdict.refuse(
            "package_extra",
            f"release {release.nso_version} adds packages the node does not run: {', '.join(extra)}",
            "ask for them explicitly (--allow-extra-packages) or use a release without them",
        )
    verdict.packages = [
        a for name, a in sorted(offered.items()) if name in loaded or options.allow_extra_packages
    ]
    # Re-checked here although `release create` checked them: releases defined before the
    # rules, and the subset chosen for this node may lack a package another one requires.
    for refusal in _release_refusals(release, target):
        verdict.refuse("package_release", refusal.fact, refusal.fix)
    chosen = {a.name: a.version for a in verdict.packages}
    for unmet in unmet_requirements([PackageBuild.of(a) for a in verdict.packages], chosen):
        wanted = unmet.requirement.wanted
        in_release = offered.get(str(unmet.requirement.name))
        verdict.refuse(
            "package_requires",
            unmet.fact(f"the plan for {verdict.node}"),
            "the release has it: ask for it with --allow-extra-packages"
            if in_release is not None and unmet.requirement.admits(in_release.version)
            else f"define a release with a build of {wanted} (releases are immutable)",
        )


# (release, its builds by name and digest, target) -> the builds the target cannot load:
# the same for every node a plan checks. Keyed by content, not row ids (another database
# reuses them).
_REFUSALS: dict[tuple[Any, ...], list[Refusal]] = {}


def _release_refusals(release: Release, target: NsoVersion) -> list[Refusal]:
    key = (
        release.nso_version,
        str(target),
        *sorted((a.filename, a.sha256) for a in release.packages),
    )
    found = _REFUSALS.get(key)
    if found is None:
        found = [
            refusal
            for artifact in release.packages
            if (refusal := PackageBuild.of(artifact).load_refusal(target)) is not None
        ]
        if len(_REFUSALS) >= 1000:
            _REFUSALS.clear()
        _REFUSALS[key] = found
    return found


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
    verdict: Verdict, inv: dict[str, Any], target: NsoVersion, options: UpgradeOptions
) -> None:
    removed = {
        element: removed_in
        for element, removed_in in REMOVED_NCS_CONF_ELEMENTS.items()
        if target >= NsoVersion.parse(removed_in)
    }
    if not removed:
        return
    if not isinstance(inv.get("ncs_conf_elements"), list):
        verdict.refuse(
            "ncs_conf_unknown",
            f"{verdict.node} did not report the elements of /etc/ncs/ncs.conf: whether it "
            f"holds {', '.join(f'<{e}>' for e in removed)}, which NSO {target} refuses to "
            "start with, is unknown",
            "check that /etc/ncs/ncs.conf exists and nso-agent can read it ('nso-agent status'), "
            "then plan again",
        )
        return
    present = set(inv["ncs_conf_elements"])
    for element, removed_in in removed.items():
        if element not in present:
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
    keys = inv.get("crypto_keys")
    if not isinstance(keys, list):
        verdict.refuse(
            "crypto_keys_unknown",
            f"NSO {target} needs an AES256CFB128 key, and {verdict.node} did not report its "
            "keys: the agent could not read /etc/ncs/ncs.crypto_keys",
            "check that the key file exists and nso-agent can read it ('nso-agent status'), "
            "then plan again",
        )
    elif "AES256CFB128_KEY" not in keys:
        verdict.refuse(
            "aes256_key_missing",
            f"NSO {target} needs an AES256CFB128 key and /etc/ncs/ncs.crypto_keys has none",
            "generate one with 'openssl rand -hex 32' and add AES256CFB128_KEY=<key> to "
            "/etc/ncs/ncs.crypto_keys (or to your external key command's output)",
        )


def _check_ha(verdict: Verdict, ha: dict[str, Any]) -> None:
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
    # ncs-backup's archive (at worst the run dir's size), the restore point (a copy of the
    # run dir, taken while NSO is stopped), a recovery's staged copy of it, and the
    # compaction (the CDB's size again); a package-only upgrade makes only the archive.
    cdb, run_dir = inv.get("cdb_bytes"), inv.get("run_dir_bytes", inv.get("cdb_bytes"))
    need_var: Optional[int] = None
    if isinstance(cdb, int) and isinstance(run_dir, int):
        need_var = (3 * run_dir + cdb if release is not None else run_dir) + 64 * MiB
    for path, need in (("/opt/ncs", need_opt), ("/var/opt/ncs", need_var)):
        have = free.get(path)
        if need is None:
            verdict.refuse(
                "disk_unknown",
                f"the node did not report how much data is under {path} (cdb_bytes, "
                "run_dir_bytes): the space an upgrade needs there is unknown",
                "check that nso-agent can read /var/opt/ncs ('nso-agent status --json')",
            )
        elif have is None:
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


# inventory_behind's words, which fleet rollouts read as a wait (rollouts/planning.py).
BEHIND = "last inventory was sent before its last step ended"


def inventory_behind(reported_at: Optional[datetime], changed_at: Optional[datetime]) -> bool:
    """The node's last inventory was sent before its last step ended (``changed_at``)."""
    return reported_at is not None and changed_at is not None and reported_at < changed_at


def last_step_ends(session: Session, node_ids: Iterable[int]) -> dict[int, datetime]:
    """Node id -> when the last step that may change it ended: a step of a job the node
    took part in, on it or on another member (an HA sync on the primary changes every
    member), READ_ONLY_STEPS aside. Nodes without one are left out. One query per
    thousand nodes (a fleet rollout's plan checks every node of the fleet)."""
    ids = sorted(set(node_ids))
    ends: dict[int, datetime] = {}
    for i in range(0, len(ids), 1000):
        ends.update(
            (node_id, ended)
            for node_id, ended in session.execute(
                select(job_nodes.c.node_id, func.max(Step.finished_at))
                .join(Step, Step.job_id == job_nodes.c.job_id)
                .where(
                    job_nodes.c.node_id.in_(ids[i : i + 1000]),
                    Step.finished_at.is_not(None),
                    Step.name.not_in(READ_ONLY_STEPS),
                )
                .group_by(job_nodes.c.node_id)
            )
            if ended is not None
        )
    return ends


def holders(session: Session, node_ids: Iterable[int]) -> dict[int, int]:
    """Node id -> the job that holds it now; nodes no job holds are left out. One query on
    PostgreSQL (an array parameter), one per thousand nodes on SQLite."""
    ids = sorted(set(node_ids))
    dialect = dialect_of(session)
    size = max(1, len(ids)) if dialect == "postgresql" else 1000
    held: dict[int, int] = {}
    for i in range(0, len(ids), size):
        held.update(
            session.execute(
                select(NodeHold.node_id, NodeHold.job_id).where(
                    among(NodeHold.node_id, ids[i : i + size], dialect)
                )
            ).all()
        )
    return held


def inventory_stale(reported_at: Optional[datetime], now: Optional[datetime] = None) -> bool:
    """The node's last inventory (None: it never sent one) is older than INVENTORY_MAX_AGE:
    what it runs now is unknown, and its agent may be down."""
    return reported_at is not None and (now or utcnow()) - reported_at > INVENTORY_MAX_AGE
