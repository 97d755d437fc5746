"""The jobs of a batch (batched.py) worked on outside the session, as plain objects.

A batch of agents changes a step and its job per agent: a claim hands a step out, a report
finishes it. Loaded into the session and flushed, every job, step and audit row passed
through the unit of work: the load, the flush's bookkeeping and the fetch of each new row's
id took half of the server's time when a patch reached a fleet. Here the jobs are read with
plain SELECTs into objects of the same mapped classes that belong to no session, the rules
of jobs.py run on them unchanged, and what they changed is written back with one statement
per table and set of columns; nothing enters the session.

The objects track their changes as loaded ones do (their loaded values are their committed
state), so the audit rows are the ones the session would have written
(auth/audit_events.py). Of a node only its id and name are loaded, which is all the rules
read of one. A change these writes do not make (a recovery step added to a job) is seen
before anything is written (`writable`): its request then goes alone, on the full path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict, instance_state, set_committed_value
from sqlalchemy.orm.base import manager_of_class

from repo_server.auth.audit_events import state_change_events
from repo_server.auth.models import AuditEvent
from repo_server.db import among, dialect_of
from repo_server.fleet.models import Node
from repo_server.upgrades.job_states import JOB_ACTIVE
from repo_server.upgrades.models import Job, NodeHold, Step, StepReport, job_nodes

# A step's log tail is written by a report and read by no rule: never loaded here.
_STEP_COLUMNS = [c for c in Step.__table__.c if c.key != "log_tail"]


def load(session: Session, job_ids: Iterable[int]) -> dict[int, Job]:
    """Jobs ``job_ids`` (already locked: jobs.py `lock_rows`), by id, with their steps
    and their nodes' ids and names: objects of no session."""
    ids = sorted(set(job_ids))
    # Core on the session's connection: rows, not the ORM's result machinery.
    connection = session.connection()
    dialect = connection.dialect.name
    jobs: dict[int, Job] = {}
    for values in _rows(connection, select(Job.__table__).where(among(Job.id, ids, dialect))):
        jobs[values["id"]] = _loaded(Job, values)
    nodes: dict[int, Node] = {}
    members: dict[int, list[Node]] = {job_id: [] for job_id in jobs}
    rows = connection.execute(
        select(job_nodes.c.job_id, Node.id, Node.name)
        .join(Node, Node.id == job_nodes.c.node_id)
        .where(among(job_nodes.c.job_id, ids, dialect))
        .order_by(job_nodes.c.job_id, Node.id)
    )
    for job_id, node_id, name in rows:
        if node_id not in nodes:
            nodes[node_id] = _loaded(Node, {"id": node_id, "name": name})
        members[job_id].append(nodes[node_id])
    steps: dict[int, list[Step]] = {job_id: [] for job_id in jobs}
    for values in _rows(
        connection,
        select(*_STEP_COLUMNS).where(among(Step.job_id, ids, dialect)).order_by(Step.seq),
    ):
        # A many-to-one's loaded value is its entry in the object's dict, as a column's.
        values.update(job=jobs[values["job_id"]], node=nodes.get(values["node_id"]))
        steps[values["job_id"]].append(_loaded(Step, values))
    for job_id, job in jobs.items():
        set_committed_value(job, "steps", steps[job_id])
        set_committed_value(job, "nodes", members[job_id])
    return jobs


def writable(job: Job) -> bool:
    """Whether `write` writes all the rules changed in ``job``: not when it gained a step (a
    recovery, a way back)."""
    return all(step.id is not None for step in job.steps)


def write(
    session: Session,
    jobs: Iterable[Job],
    actors: dict[int, str],
    reports: Iterable[dict[str, Any]] = (),
) -> None:
    """Write what the rules changed in ``jobs`` (each one `writable`), their
    state changes' audit rows (by the actor of each job, ``actors``), the holds of the jobs
    that ended, and the step reports to remember (rows of ``step_reports``)."""
    jobs = list(jobs)
    steps = [step for job in jobs for step in job.steps]
    events = state_change_events(sorted(steps, key=lambda s: (s.job_id, s.seq)), jobs, actors)
    _update(session, _table(Step), steps)
    _update(session, _table(Job), jobs)
    ended = [job.id for job in jobs if _was(job, "state") in JOB_ACTIVE and not job.active]
    if ended:
        holds = _table(NodeHold)
        session.execute(delete(holds).where(among(holds.c.job_id, ended, dialect_of(session))))
    for table, rows in ((_table(AuditEvent), events), (_table(StepReport), list(reports))):
        if rows:
            # Core, not the ORM: no object made. Returning the ids makes it one INSERT of
            # many rows (SQLAlchemy's "insertmanyvalues"), not a statement sent per row.
            session.execute(insert(table).returning(table.c.id), rows)


def _table(cls: type) -> Table:
    table: Table = cls.__table__  # type: ignore[attr-defined]
    return table


def _rows(connection: Connection, statement: Any) -> Iterator[dict[str, Any]]:
    result = connection.execute(statement)
    keys = list(result.keys())
    return (dict(zip(keys, row)) for row in result)


def _loaded(cls: type, values: dict[str, Any]) -> Any:
    """An object of ``cls`` whose values are as loaded: a change to one is a change."""
    thing: Any = manager_of_class(cls).new_instance()  # as a load makes one: no __init__
    instance_dict(thing).update(values)
    return thing


def _was(thing: Any, key: str) -> Any:
    state = instance_state(thing)
    return state.committed_state.get(key, state.dict.get(key))


def _update(session: Session, table: Table, things: list[Any]) -> None:
    """One UPDATE by id per set of changed columns, for all ``things`` of ``table``."""
    columns = set(table.c.keys())
    groups: dict[tuple[str, ...], list[Any]] = {}
    for thing in things:
        state = instance_state(thing)
        changed = tuple(
            sorted(
                key
                for key, before in state.committed_state.items()
                if key in columns and state.dict.get(key) != before
            )
        )
        if changed:
            groups.setdefault(changed, []).append(thing)
    postgresql = dialect_of(session) == "postgresql"
    for keys, group in groups.items():
        statement = _update_statement(table, keys, postgresql)
        if postgresql:
            # One statement and one parameter per column, whatever the number of rows: an
            # executemany sends and waits for a statement per row (psycopg's pipeline).
            session.execute(statement, _arrays(table, group, keys))
        else:
            rows = [{f"v_{key}": getattr(thing, key) for key in ("id", *keys)} for thing in group]
            session.execute(statement, rows)


@functools.lru_cache(maxsize=256)
def _update_statement(table: Table, keys: tuple[str, ...], postgresql: bool) -> Any:
    """UPDATE of columns ``keys`` by id: on PostgreSQL ``UPDATE table SET key = v.key... FROM
    (SELECT unnest(:v_id) AS id, unnest(:v_key)...) AS v WHERE table.id = v.id``, one row
    per array element; elsewhere one row per parameter set. Made once per table and keys:
    a batch builds no statement."""
    if not postgresql:
        return (
            update(table)
            .where(table.c.id == bindparam("v_id"))
            .values({key: bindparam(f"v_{key}", type_=table.c[key].type) for key in keys})
        )
    rows = select(*(_unnested(table.c[key]).label(key) for key in ("id", *keys))).subquery("v")
    return update(table).where(table.c.id == rows.c.id).values({key: rows.c[key] for key in keys})


def _unnested(column: Any) -> Any:
    """``unnest(:v_<column>)``, of the column's type. JSON goes as text (`_arrays`): an
    array of JSON values whose first is a list would be taken for an array of arrays.
    Strings go as text too, so the column's own length is checked as the ORM's UPDATE has
    it (a cast to ``VARCHAR(n)`` would cut a longer value without a word)."""
    texts = isinstance(column.type, (JSON, String))
    unnested = func.unnest(
        bindparam(f"v_{column.key}", type_=ARRAY(Text() if texts else column.type))
    )
    return cast(unnested, column.type) if isinstance(column.type, JSON) else unnested


def _arrays(table: Table, things: list[Any], keys: tuple[str, ...]) -> dict[str, list[Any]]:
    """Each column's new values, in the order of ``things`` (JSON as its text)."""
    arrays: dict[str, list[Any]] = {}
    for key in ("id", *keys):
        values = [getattr(thing, key) for thing in things]
        if isinstance(table.c[key].type, JSON):
            values = [json.dumps(value) for value in values]
        arrays[f"v_{key}"] = values
    return arrays
