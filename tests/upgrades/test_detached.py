"""What upgrades/detached.py writes reaches the database as the rules set it, on SQLite and
PostgreSQL (where the UPDATE takes its rows from arrays): any JSON value, None, a string
longer than its column (refused, as the ORM's UPDATE has it, never cut)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from repo_server.upgrades import detached
from repo_server.upgrades.jobs import lock_rows
from repo_server.upgrades.models import Job
from tests.upgrades.builders import enroll_node, healthy_inventory, start_patch_rollout

NAMES = ("d-1", "d-2", "d-3")


@pytest.fixture
def job_ids(live, app_state, tmp_path: Path) -> list[int]:
    """Three patch jobs, one per node."""
    for name in NAMES:
        agent = enroll_node(live, name)
        assert agent.heartbeat(healthy_inventory("6.2")).status_code == 200
    start_patch_rollout(live, tmp_path, list(NAMES), "CSCdetach1", ("ncs_detach",))
    with app_state.sessions() as session:
        return list(session.scalars(select(Job.id).order_by(Job.id)))


def _write(app_state: Any, ids: list[int], **values: list[Any]) -> None:
    with app_state.sessions() as session:
        jobs = detached.load(session, lock_rows(session, ids))
        for key, column in values.items():
            for job_id, value in zip(ids, column):
                setattr(jobs[job_id], key, value)
        detached.write(session, jobs.values(), dict.fromkeys(ids, "test"))
        session.commit()


def _read(app_state: Any, ids: list[int], key: str) -> list[Any]:
    with app_state.sessions() as session:
        return [getattr(session.get(Job, job_id), key) for job_id in ids]


@pytest.mark.parametrize(
    "contexts",
    [
        ([1, 2], [3], []),  # a list first: not an array of arrays
        ([[1, 2], [3]], {"a": [1]}, 5),
        ("text", None, {"nested": {"x": None}}),
    ],
)
def test_json_values_are_written_as_they_are(live, app_state, job_ids, contexts) -> None:
    _write(app_state, job_ids, context=list(contexts))
    assert _read(app_state, job_ids, "context") == list(contexts)


def test_strings_and_none_are_written_and_an_overlong_one_is_refused(
    live, app_state, job_ids
) -> None:
    _write(app_state, job_ids, error=["e" * 5000, None, "short"], outcome=["x", None, "y"])
    assert _read(app_state, job_ids, "error") == ["e" * 5000, None, "short"]
    assert _read(app_state, job_ids, "outcome") == ["x", None, "y"]
    if app_state.engine.dialect.name == "postgresql":  # SQLite keeps any length
        with pytest.raises(DBAPIError):
            _write(app_state, job_ids, outcome=["y" * 40, "z", "z"])
        assert _read(app_state, job_ids, "outcome") == ["x", None, "y"]
