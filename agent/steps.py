"""The steps of docs/agent-protocol.md by name, and how one is run.

A step function takes a ``StepContext`` and returns the step's ``result`` (merged by the
server into the job's context for later steps), or raises ``StepFailed`` / ``NsoError`` with
a message that says what went wrong. Running a step twice ends in the same state: each one
first checks whether its end state is already there, and long steps record their phases in
the journal so a restarted agent continues instead of repeating (a restore is never run
twice over a started NSO, an installer never twice).
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from agent import package_steps, upgrade_steps
from agent.errors import AgentError, StepFailed
from agent.step_context import StepContext
from agent.step_helpers import switch_current_to

STEPS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "prestage": upgrade_steps.prestage,
    "backup": upgrade_steps.backup,
    "stop": upgrade_steps.stop,
    "restore_point": upgrade_steps.restore_point,
    "compact": upgrade_steps.compact,
    "switch_current": upgrade_steps.switch_current,
    "ncs_conf": upgrade_steps.ncs_conf,
    "relink_packages": upgrade_steps.relink_packages,
    "start": upgrade_steps.start,
    "verify": upgrade_steps.verify,
    "recover": upgrade_steps.recover,
    "prestage_packages": package_steps.prestage_packages,
    "install_packages": package_steps.install_packages,
    "reload_packages": package_steps.reload_packages,
    "verify_packages": package_steps.verify_packages,
    "recover_packages": package_steps.recover_packages,
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


def hostname() -> str:
    return socket.getfqdn()


__all__ = ["STEPS", "StepContext", "run_step", "switch_current_to"]
