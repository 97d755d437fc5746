"""The way back from a failed step of an HA group upgrade (docs/ha-upgrades.md, "The way back").

Where the failure happened decides what the job does:

- before the primary was made read-only: nothing was changed; the job ends ``unchanged``;
- before the primary stopped: the group is put back as it was (the third node started
  again, read-only cleared), then the job ends ``rolled_back``;
- after the primary stopped, before the new release ran on it: the primary is recovered to
  the old release and its data as it was when it stopped (every acknowledged write: the
  cluster was read-only), the secondaries are started again on the old release and
  rejoin; ``rolled_back``;
- once the new release ran on the primary, it may have taken writes that a restore would
  take away (``available``), and the secondaries cannot rejoin an older release: the job
  ends ``needs_attention`` and says, member by member, in what state the group is and
  the commands that finish the upgrade by hand.

A step of the way back that fails ends the job ``needs_attention`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from repo_server.upgrades import ha_state, plans, results
from repo_server.upgrades.ha_plan import HA_TIMEOUT, ha_step, rejoin_steps
from repo_server.upgrades.models import Job, Step
from repo_server.upgrades.plans import StepSpec
from repo_server.upgrades.step_payloads import node_context


@dataclass
class WayBack:
    """``steps`` to append (node id, spec); none: the job ends with ``outcome``."""

    outcome: str
    error: str
    steps: list[tuple[int, StepSpec]] = field(default_factory=list)


@dataclass
class Roles:
    primary: int
    failover: int
    others: list[int]
    ha_ids: dict[int, str]
    names: dict[int, str]

    @classmethod
    def of(cls, job: Job) -> Roles:
        o = job.options
        return cls(
            int(o["primary"]),
            int(o["failover"]),
            [int(i) for i in o.get("others", [])],
            {int(k): str(v) for k, v in o["ha_ids"].items()},
            {n.id: n.name for n in job.nodes},
        )

    @property
    def secondaries(self) -> list[int]:
        return [self.failover, *self.others]


def _planned(job: Job) -> list[Step]:
    count = int(job.plan.get("step_count") or len(job.steps))
    return [s for s in job.steps if s.seq <= count]


def handed(job: Job, node_id: int, name: str) -> bool:
    """Whether the job handed ``name`` to ``node_id`` among its planned steps (not the
    steps of its way back)."""
    return any(s.node_id == node_id and s.name == name and s.attempt > 0 for s in _planned(job))


def _done(job: Job, node_id: int, name: str) -> bool:
    return any(
        s.node_id == node_id and s.name == name and s.state == "succeeded" for s in _planned(job)
    )


def _started_read_only(job: Job, node_id: int) -> bool:
    return any(
        s.node_id == node_id and s.name == "start" and s.params.get("read_only") is True
        for s in _planned(job)
        if s.attempt > 0
    )


def _rejoin(node_id: int) -> list[tuple[int, StepSpec]]:
    """Start a secondary again on the release it has, as the plan does (rejoin_steps)."""
    start = StepSpec("start", {"start_timeout": plans.START_TIMEOUT}, "")
    return [(node_id, spec) for spec in rejoin_steps(start)]


def _wait_all(roles: Roles) -> tuple[int, StepSpec]:
    return (
        roles.primary,
        ha_step(
            "ha_wait_secondaries",
            "every secondary connected again",
            secondaries=[roles.ha_ids[i] for i in roles.secondaries],
            timeout=HA_TIMEOUT,
        ),
    )


def way_back(job: Job, failed: Step) -> WayBack:
    roles = Roles.of(job)
    cause = f"{failed.name} failed on {failed.node.name}: {failed.message or 'no message'}"
    if failed.seq > int(job.plan.get("step_count") or 0):
        return WayBack(
            "needs_attention",
            f"{cause} (while putting the group back); " + ha_state.describe(job),
        )
    p = roles.primary
    if not handed(job, p, "ha_read_only"):
        return WayBack("unchanged", f"{cause}; nothing was changed on the group yet")
    if not handed(job, p, "stop"):
        steps: list[tuple[int, StepSpec]] = [
            (p, ha_step("ha_read_only", "take writes again", mode=False))
        ]
        if handed(job, roles.failover, "ha_read_only"):
            steps.append(
                (roles.failover, ha_step("ha_read_only", "read-only mode off again", mode=False))
            )
        stopped = [t for t in roles.others if handed(job, t, "stop")]
        for other in stopped:
            steps += _rejoin(other)
        if stopped:
            steps.append(_wait_all(roles))
        return WayBack(
            "rolled_back",
            f"{cause}; the group is put back as it was (read-only off"
            + (", the third node started again" if stopped else "")
            + ")",
            steps,
        )
    if not _done(job, p, "start"):
        context = results.checked_context(job.id, node_context(job, p))
        steps = []
        if not handed(job, roles.failover, "stop"):
            # It serves read-only as the acting primary: the recovered primary must find no
            # primary when it starts, or it would join the older copy as a secondary.
            steps.append(
                (roles.failover, StepSpec("stop", {}, "stop NSO so the primary takes its role"))
            )
        recover = plans.recover_step(
            context,
            job.source_version or "",
            job.target_version or "",
            target_started=handed(job, p, "start"),
            # A start under ``safe`` set read-only mode before NSO could take a write: an
            # NSO it left running holds nothing a restore would lose.
            discard_writes=_started_read_only(job, p),
        )
        # Back on the old release read-only: no write until its secondaries have rejoined.
        recover.params["read_only"] = True
        steps.append((p, recover))
        steps.append(
            (p, ha_step("ha_enable", "take the primary role", mode="primary", timeout=HA_TIMEOUT))
        )
        for secondary in [roles.failover, *[t for t in roles.others if handed(job, t, "stop")]]:
            steps += _rejoin(secondary)
        steps.append(_wait_all(roles))
        steps.append((p, ha_step("ha_read_only", "take writes again", mode=False)))
        return WayBack(
            "rolled_back",
            f"{cause}; the primary is put back on NSO {job.source_version} with its data as it "
            "was when it stopped (the cluster was read-only: every acknowledged write), and "
            "the secondaries rejoin it",
            steps,
        )
    return WayBack(
        "needs_attention",
        f"{cause}; the job did not put the old release back: the secondaries cannot rejoin "
        f"it, and {roles.names[p]} may have taken writes since NSO "
        f"{job.target_version} started on it. " + ha_state.describe(job),
    )


def data_differs(job: Job, step: Step, result: dict[str, Any]) -> Optional[str]:
    """Why a member's ``ha_verify`` fails although the agent saw nothing wrong: its data is
    not what the primary reported just before, while no member took writes (compared here,
    never taken from the agent's word)."""
    if step.name != "ha_verify" or not step.params.get("compare_data"):
        return None
    primary = int(job.options["primary"])
    if step.node_id == primary:
        return None
    reference = node_context(job, primary).get("fingerprint")
    mine = result.get("fingerprint")
    if not reference or not mine:
        return f"{step.node.name} or the primary reported no data fingerprint to compare"
    if reference != mine:
        return (
            f"the data on {step.node.name} is not the primary's (fingerprint {mine[:19]}... "
            f"against {reference[:19]}...), with no member taking writes: the secondary did "
            "not converge; compare 'show running-config' on both"
        )
    return None
