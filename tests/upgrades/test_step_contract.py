"""The contract between the server's plans and the agent: every step name a plan can produce
is a step the agent knows, and docs/agent-protocol.md describes it.

Plans are built by every builder in `repo_server.upgrades.plans` with every option that adds
or removes a step; a builder added later without being exercised here fails the test.
"""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

from agent.steps.registry import STEPS
from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.fleet.group_models import HaGroup, HaGroupMember
from repo_server.fleet.models import Node
from repo_server.patches.rollouts import patch_step
from repo_server.upgrades import ha_package_plan, ha_plan, ned_migrations, plans
from repo_server.upgrades.ned_migrations import MigrationRequest
from repo_server.upgrades.preflight import Verdict

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agent-protocol.md"
EXERCISED = {
    "upgrade_steps",
    "recover_step",
    "recovery_for",
    "package_upgrade_steps",
    "backup_step",
}


def artifact(filename: str, kind: str = "package") -> Artifact:
    return Artifact(filename=filename, kind=kind, sha256="a" * 64, size=10, name="a", version="1.0")


def every_plan() -> list[list[plans.StepSpec]]:
    release = Release(
        nso_version="6.2",
        installer=artifact("nso-6.2.linux.x86_64.installer.bin", "installer"),
        packages=[artifact("ncs-6.2-a-1.0.tar.gz")],
    )
    made = []
    for remove_conf, with_packages in itertools.product([[], ["large-scale"]], [False, True]):
        verdict = Verdict(node="n", source_version="6.1", target_version="6.2")
        verdict.remove_ncs_conf = remove_conf
        verdict.packages = list(release.packages) if with_packages else []
        made.append(plans.upgrade_steps(verdict, release))
    context = {"backup_file": "/b", "extra_dir": "/x", "restore_point": "/rp"}
    for kind, started in itertools.product(plans.POINT_OF_NO_RETURN, [False, True]):
        made.append([plans.recovery_for(kind, context, "6.1", "6.2", started)])
    made.append([plans.recover_step(context, "6.1", "6.2", True, discard_writes=True)])
    for allow in (False, True):
        made.append(plans.package_upgrade_steps([artifact("ncs-6.2-a-1.1.tar.gz")], allow))
    made += ha_plans(release)
    for dry_run in (True, False):
        request = MigrationRequest("n", "router-nc-2.0", ("r1",), ("edge",), dry_run, 1)
        made.append([ned_migrations.migrate_step(request)])
    made.append(plans.package_upgrade_steps([], False, remove=("router-nc",)))
    made.append([plans.backup_step()])  # also an HA package rollback's
    bundle = artifact("nso-6.2-patch-P1.tar.gz", "patch")
    made += [[patch_step(action, bundle)] for action in ("apply", "remove")]
    made += ha_package_plans()
    return made


def _group(size: int) -> HaGroup:
    roles = [("primary", False), ("secondary", True), ("secondary", False)][:size]
    group = HaGroup(name="g", created_by="t")
    group.members = [
        HaGroupMember(
            node=Node(id=i, name=f"n{i}", created_by="t"),
            node_id=i,
            ha_id=f"n{i}",
            nominal_role=role,
            failover_primary=failover,
            position=i,
        )
        for i, (role, failover) in enumerate(roles, start=1)
    ]
    return group


def ha_package_plans() -> list[list[plans.StepSpec]]:
    """Package upgrades on an HA group, both sync variants; the survey of a failed one, and
    the steps of its rollback."""
    made = []
    for size, variant in itertools.product((2, 3), ("and-reload", "and-add")):
        new = [artifact("ncs-6.2-a-1.1.tar.gz")]
        steps = ha_package_plan.package_steps(_group(size), new, None, {"a": "1.1"}, variant)
        made.append([s.spec for s in steps.steps])
    made.append([ha_package_plan.survey_step()])
    made.append([ha_package_plan.sync_step("and-reload", {}, restore_links="/x")])
    return made


def ha_plans(release: Release) -> list[list[plans.StepSpec]]:
    """The HA group plans: 2 and 3 members, both write policies."""
    made = []
    for size, policy in itertools.product((2, 3), ha_plan.WRITE_POLICIES):
        group = _group(size)
        verdicts = {}
        for member in group.members:
            verdict = Verdict(node=member.node.name, source_version="6.1", target_version="6.2")
            verdict.packages = list(release.packages)
            verdicts[member.node_id] = verdict
        made.append(
            [s.spec for s in ha_plan.ha_upgrade_steps(group, verdicts, release, policy).steps]
        )
    return made


def test_every_step_a_plan_can_produce_is_known_to_the_agent_and_documented():
    names = {spec.name for plan in every_plan() for spec in plan}
    assert "restore_point" in names and "recover_packages" in names
    unknown = names - set(STEPS)
    assert not unknown, f"plans produce steps the agent does not know: {sorted(unknown)}"
    docs = DOCS.read_text()
    undocumented = [n for n in sorted(names) if f"| `{n}` |" not in docs]
    assert not undocumented, f"steps missing from docs/agent-protocol.md: {undocumented}"
    # And the other way: the agent implements nothing the server cannot ask for.
    assert set(STEPS) - names == set()


def test_every_plan_builder_is_exercised():
    builders = {
        name
        for name, func in inspect.getmembers(plans, inspect.isfunction)
        if func.__module__ == plans.__name__
        and "StepSpec" in str(inspect.signature(func).return_annotation)
    }
    assert builders == EXERCISED, "a new plan builder: add it to every_plan()"
