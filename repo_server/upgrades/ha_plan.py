"""The HA-coordinated upgrade of a rule-based HA group: its steps, in order, each on a member.

The guide's eleven stages ("NSO HA Version Upgrade"), with four changes (docs/ha-upgrades.md):

- Everything slow happens first, while the cluster still takes writes: every member
  downloads, verifies and installs the target beside the running release and stages its
  package builds. Inside the write window only NSO's own work is left.
- The third (non-failover) secondary is stopped, not HA-disabled: disabling resets
  read-only mode, so it would take writes as a standalone node that are lost when it
  rejoins; and stopped it cannot join the failover primary either (the guide's trap).
- The designated primary is stopped instead of HA-disabled, and the designated secondary
  stopped instead of HA-disabled at stage 6, for the same reason: no member that is about
  to be overwritten, or is leaving, ever becomes writable.
- Under the ``safe`` write policy the upgraded primary starts read-only (NSO's start
  phases: read-only is set before the northbound interfaces open) and takes writes only
  once the secondary has rejoined. ``available`` lets it take writes as soon as it starts,
  as the guide's script does.

Each step is bound to one member's node; the agents of all members run them in ``seq``
order. ``marks`` name the steps whose end moves the group's write windows (ha_windows.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from repo_server.catalog.release_models import Release
from repo_server.fleet.group_models import HaGroup, HaGroupMember
from repo_server.upgrades import plans
from repo_server.upgrades.plans import StepSpec
from repo_server.upgrades.preflight import Verdict

WRITE_POLICIES = ("safe", "available")
# Nominal seconds a member gets to take its HA role after it starts (or to be joined).
HA_TIMEOUT = 600


@dataclass
class HaStep:
    member: HaGroupMember
    spec: StepSpec
    stage: str  # the guide's stage, as shown by `nso-repo group plan`
    batch: Optional[int] = None  # steps of one batch run at the same time on their members


@dataclass
class HaPlan:
    steps: list[HaStep] = field(default_factory=list)
    # window event -> index into steps (0-based): see ha_windows.py
    marks: dict[str, int] = field(default_factory=dict)
    _batch: Optional[int] = None
    _batches: int = 0

    def add(self, member: HaGroupMember, spec: StepSpec, stage: str, mark: str = "") -> None:
        if mark:
            self.marks[mark] = len(self.steps)
        self.steps.append(HaStep(member, spec, stage, self._batch))

    @property
    def marks_by_seq(self) -> dict[str, int]:
        """The marks as the job's step ``seq`` numbers (from 1)."""
        return {mark: index + 1 for mark, index in self.marks.items()}

    @contextmanager
    def together(self) -> Iterator[None]:
        """The steps added inside run at the same time on their members (each member's in
        the order added): work on different hosts that does not depend on each other."""
        self._batches += 1
        self._batch = self._batches
        try:
            yield
        finally:
            self._batch = None


def ha_step(name: str, title: str, **params: Any) -> StepSpec:
    return StepSpec(name, params, title)


def role_params(member: HaGroupMember, members: list[HaGroupMember]) -> dict[str, Any]:
    """The role a step checks a member has: its mode and HA id, and for the primary
    (``members[0]``) the secondaries it must list as connected."""
    primary = members[0]
    return {
        "mode": member.nominal_role,
        "ha_id": member.ha_id,
        "secondaries": [m.ha_id for m in members[1:]] if member is primary else [],
    }


def rejoin_steps(start: StepSpec) -> list[StepSpec]:
    """Start a secondary read-only, let it join, then clear read-only mode: a secondary
    that cannot join (its link down, the primary away) would otherwise take writes as a
    standalone node, writes lost when it joins and takes the primary's copy. Joined, it
    refuses writes as a secondary. ``start``: its start step (NSO's start phases make it
    read-only before anything can write to it)."""
    return [
        StepSpec(
            "start",
            {**start.params, "read_only": True},
            "start NSO with package reload, read-only until it has joined",
        ),
        ha_step(
            "ha_enable",
            "join the primary (high-availability enable)",
            mode="secondary",
            timeout=HA_TIMEOUT,
        ),
        ha_step(
            "ha_read_only", "read-only mode off (a joined secondary refuses writes)", mode=False
        ),
    ]


def ha_upgrade_steps(
    group: HaGroup, verdicts: dict[int, Verdict], release: Release, policy: str
) -> HaPlan:
    """The steps of the group's upgrade to ``release`` (``verdicts``: by node id, all ok)."""
    primary, failover, others = group.primary, group.failover, group.others
    members = [primary, failover, *others]
    single = {
        m.node_id: {s.name: s for s in plans.upgrade_steps(verdicts[m.node_id], release)}
        for m in members
    }
    target = release.nso_version
    plan = HaPlan()

    def own(member: HaGroupMember, name: str) -> StepSpec:
        return single[member.node_id][name]

    def rejoin(member: HaGroupMember, stage: str) -> None:
        for spec in rejoin_steps(own(member, "start")):
            plan.add(member, spec, stage)

    def switch_over(member: HaGroupMember, stage: str, compact: bool) -> None:
        """restore point, (compact), current, ncs.conf, package links: the node is stopped."""
        names = ["restore_point", *(["compact"] if compact else []), "switch_current"]
        names += [n for n in ("ncs_conf",) if n in single[member.node_id]]
        for name in [*names, "relink_packages"]:
            plan.add(member, own(member, name), stage)

    # 0. Pre-staging on every member at once, while the cluster takes writes.
    with plan.together():
        for member in members:
            plan.add(member, own(member, "prestage"), "0 pre-stage")
    # Every member in the role the group gives it, the primary with every secondary
    # connected, none read-only: checked on the members themselves, at once.
    with plan.together():
        for member in members:
            plan.add(
                member,
                ha_step(
                    "ha_check",
                    "the cluster is whole: primary with every secondary connected, not read-only"
                    if member is primary
                    else "secondary of the primary, not read-only",
                    **role_params(member, members),
                ),
                "0 pre-stage",
            )
    # 1. Read-only on the designated primary, then on the failover secondary.
    plan.add(
        primary,
        ha_step("ha_read_only", "high-availability read-only mode true", mode=True),
        "1 read-only",
        mark="writes_stop",
    )
    plan.add(
        failover,
        ha_step("ha_read_only", "high-availability read-only mode true", mode=True),
        "1 read-only",
    )
    # 2. A proven backup on every member, all at once. 3. The third node leaves once its
    #    backup is made: stopped, so it neither joins the failover primary nor takes writes
    #    as a standalone node.
    with plan.together():
        for member in members:
            plan.add(member, own(member, "backup"), "2 backups")
        for member in others:
            plan.add(member, own(member, "stop"), "3 third node out")
    # 4. The primary leaves (stopped), the failover secondary serves read-only.
    plan.add(primary, own(primary, "stop"), "4 primary out")
    with plan.together():
        plan.add(
            failover,
            ha_step(
                "ha_be_primary",
                "high-availability be-primary, still read-only",
                read_only=True,
                timeout=HA_TIMEOUT,
            ),
            "4 primary out",
        )
        # 5. Upgrade the primary (it is stopped), while the secondary takes over reads.
        switch_over(primary, "5 upgrade primary", compact=True)
    # 7. The upgraded primary starts and takes its role.
    start = own(primary, "start")
    safe = policy == "safe"
    plan.add(
        primary,
        StepSpec(
            "start",
            {**start.params, "read_only": safe},
            "start NSO with package reload"
            + (", read-only before anything can write" if safe else ""),
        ),
        "7 primary back",
        mark="" if safe else "writes_resume",
    )
    # 6. The failover secondary leaves, now that the primary is up: stopped, never writable
    #    on its own. The primary started while it still served read-only as the acting
    #    primary (as in the guide), so its stop is outside the write window; the
    #    upgraded primary could not join it (another release) and has no role until:
    plan.add(failover, own(failover, "stop"), "6 secondary out")
    plan.add(
        primary,
        ha_step(
            "ha_enable",
            "take the primary role (high-availability enable)",
            mode="primary",
            timeout=HA_TIMEOUT,
        ),
        "7 primary role",
    )
    # 8-9, 11. Upgrade the secondaries and let them join: the failover secondary and the
    #    third nodes at once (each is stopped, and each joins the upgraded primary).
    with plan.together():
        switch_over(failover, "8 upgrade secondary", compact=False)
        rejoin(failover, "9 secondary back")
        for member in others:
            switch_over(member, "11 third node", compact=False)
            rejoin(member, "11 third node")
    plan.add(
        primary,
        ha_step(
            "ha_wait_secondaries",
            f"{failover.ha_id} connected to the primary",
            secondaries=[failover.ha_id],
            timeout=HA_TIMEOUT,
        ),
        "9 secondary back",
        mark="protected",
    )
    if others:
        plan.add(
            primary,
            ha_step(
                "ha_wait_secondaries",
                "every secondary connected",
                secondaries=[m.ha_id for m in members[1:]],
                timeout=HA_TIMEOUT,
            ),
            "11 third node",
        )

    # 10. Verify every member. The data is compared only while no member takes writes
    #     (``safe``: before the primary leaves read-only mode): under writes two members
    #     never show the same data at the same moment, so the comparison would prove nothing.
    for member in members:
        plan.add(
            member,
            ha_step(
                "ha_verify",
                "mode, role, version and packages"
                + (", and the data the same as the primary's" if safe else ""),
                **role_params(member, members),
                target_version=target,
                packages=own(member, "verify").params["packages"],
                compare_data=safe,
            ),
            "10 verify",
        )
    if safe:
        plan.add(
            primary,
            ha_step("ha_read_only", "high-availability read-only mode false", mode=False),
            "10 verify",
            mark="writes_resume",
        )
    return plan
