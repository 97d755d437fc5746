"""The job state machine: the states of jobs and steps, the moves allowed between them, and
the one function that makes a move.

Every change of a job's or a step's ``state`` goes through ``transition``, so no code path
can put a job back to ``queued`` or revive a finished step; the database refuses any state
not listed here (CHECK constraints, migration 0004). A job holds its nodes (``node_holds``)
exactly while it is active: ``transition`` lets them go when the job finishes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from sqlalchemy.orm import object_session

from repo_server.errors import Conflict

if TYPE_CHECKING:
    from repo_server.upgrades.models import Job, Step

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_ACTIVE = ("queued", "running")
STEP_STATES = ("pending", "dispatched", "running", "succeeded", "failed", "skipped")
STEP_FINISHED = ("succeeded", "failed", "skipped")
STEP_HANDED_OUT = ("dispatched", "running")

# state -> the states it may move to. A finished state moves nowhere.
JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"dispatched", "skipped"}),
    # A progress report on a dispatched step makes it running; a step handed out again
    # (the agent restarted) keeps its state.
    "dispatched": frozenset({"running", "succeeded", "failed"}),
    "running": frozenset({"succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "skipped": frozenset(),
}
_TABLES = {"jobs": JOB_TRANSITIONS, "steps": STEP_TRANSITIONS}


class IllegalTransition(Conflict):
    code = "illegal_transition"


def state_check(states: tuple[str, ...]) -> str:
    """The SQL of a CHECK constraint that admits only ``states`` (models and migrations)."""
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


def transition(thing: Union[Job, Step], to: str) -> None:
    """Move a job or a step to state ``to``; IllegalTransition when the table does not allow
    it. Staying in the same state is no move and always allowed (a repeated progress report).
    A job that leaves the active states lets go of its nodes."""
    table = _TABLES[thing.__tablename__]
    now = thing.state
    if to == now:
        return
    if to not in table.get(now, frozenset()):
        kind = "job" if thing.__tablename__ == "jobs" else "step"
        raise IllegalTransition(
            f"{kind} {thing.id} cannot go from {now} to {to}: this is a server bug, "
            "report it with the job's id",
            kind=kind,
            id=thing.id,
            state=now,
            to=to,
        )
    thing.state = to
    if thing.__tablename__ == "jobs" and to not in JOB_ACTIVE:
        # Loading the holds must not flush: the caller sets the job's outcome after this,
        # and the flush audits the outcome with the state (auth/audit_events.py).
        session = object_session(thing)
        if session is None:
            thing.holds = []  # type: ignore[union-attr]
            return
        with session.no_autoflush:
            thing.holds = []  # type: ignore[union-attr]


# Steps that change nothing a cancelled job's nodes must be checked for, and after which
# a node's inventory still holds (they write only the agent's own files).
READ_ONLY_STEPS = (
    "prestage",
    "prestage_packages",
    "backup",  # a backup file and a copy of the package links: nothing NSO runs
    "ha_check",
    "verify",
    "verify_packages",
    "ha_verify",
    "ha_package_check",
    "ha_verify_packages",
)
