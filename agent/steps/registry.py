"""The steps of docs/agent-protocol.md by name, and how one is run.

A step function takes a ``StepContext`` and returns the step's ``result`` (merged by the
server into the job's context for later steps), or raises ``StepFailed`` / ``NsoError`` with
a message that says what went wrong. Running a step twice ends in the same state: each one
first checks whether its end state is already there, and long steps record their phases in
the journal so a restarted agent continues instead of repeating (a restore is never run
twice over a started NSO, an installer never twice).
"""

from __future__ import annotations

from typing import Any, Callable

from agent.errors import AgentError, StepFailed
from agent.steps import ha, ha_packages, ned_migration, packages, patches, recovery, single_node
from agent.steps.context import StepContext

STEPS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "prestage": single_node.prestage,
    "backup": single_node.backup,
    "stop": single_node.stop,
    "restore_point": single_node.restore_point,
    "compact": single_node.compact,
    "switch_current": single_node.switch_current,
    "ncs_conf": single_node.ncs_conf,
    "relink_packages": single_node.relink_packages,
    "start": single_node.start,
    "verify": single_node.verify,
    "recover": recovery.recover,
    "prestage_packages": packages.prestage_packages,
    "install_packages": packages.install_packages,
    "reload_packages": packages.reload_packages,
    "verify_packages": packages.verify_packages,
    "recover_packages": recovery.recover_packages,
    "ha_check": ha.ha_check,
    "ha_read_only": ha.ha_read_only,
    "ha_be_primary": ha.ha_be_primary,
    "ha_enable": ha.ha_enable,
    "ha_wait_secondaries": ha.ha_wait_secondaries,
    "ha_verify": ha.ha_verify,
    "ha_package_check": ha_packages.ha_package_check,
    "ha_sync_packages": ha_packages.ha_sync_packages,
    "ha_verify_packages": ha_packages.ha_verify_packages,
    "ned_migrate": ned_migration.ned_migrate,
    "apply_patch": patches.apply_patch,
    "remove_patch": patches.remove_patch,
}


def run_step(ctx: StepContext) -> dict[str, Any]:
    """Run the step ``ctx.step`` names; agent errors become StepFailed with their message.

    NSO's output is already in the step's log (every command logs what it printed), so it
    is not added again here.
    """
    name = ctx.step.get("name", "")
    func = STEPS.get(name)
    if func is None:
        raise StepFailed(
            f"this agent (nso-agent) does not know the step {name!r}; upgrade the agent"
        )
    try:
        return func(ctx)
    except StepFailed:
        raise
    except AgentError as exc:  # NSO, downloads, configuration: the message says what to do
        raise StepFailed(str(exc)) from exc
    finally:
        ctx.close()
