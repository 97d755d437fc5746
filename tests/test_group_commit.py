"""Requests that arrive together are served together, each gets its own answer, and a
batch that fails leaves every request to its caller (repo_server/group_commit.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from repo_server.group_commit import ALONE, GroupCommit


def test_one_request_alone_is_served_at_once_by_its_own_thread() -> None:
    seen: list[tuple[list[int], str]] = []

    def serve(items: list[int]) -> list[object]:
        seen.append((items, threading.current_thread().name))
        return [item * 2 for item in items]

    together = GroupCommit(serve)
    assert together.submit(21) == 42
    assert seen == [([21], threading.current_thread().name)]
    assert together.submit(5) == 10  # nothing left behind: the next one leads again


def test_requests_arriving_while_a_batch_runs_go_in_the_next_one_each_with_its_answer() -> None:
    first_in = threading.Event()
    release = threading.Event()
    batches: list[list[int]] = []
    sizes: list[int] = []

    def serve(items: list[int]) -> list[object]:
        batches.append(list(items))
        if items == [0]:
            first_in.set()
            release.wait(10)  # the others queue up meanwhile
        return [f"answer {item}" for item in items]

    together = GroupCommit(serve, sized=sizes.append)
    with ThreadPoolExecutor(max_workers=12) as pool:
        first = pool.submit(together.submit, 0)
        assert first_in.wait(10)
        others = [pool.submit(together.submit, i) for i in range(1, 12)]
        deadline = time.monotonic() + 10
        while len(together.waiting) < 11 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        answers = [first.result(10)] + [f.result(10) for f in others]
    assert answers == [f"answer {i}" for i in range(12)]
    assert batches[0] == [0]
    assert sorted(batches[1]) == list(range(1, 12)), batches  # all eleven together
    assert sizes == [1, 11]


def test_a_batch_over_the_most_is_served_in_several_in_arrival_order() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def serve(items: list[int]) -> list[object]:
        batches.append(list(items))
        release.wait(10)
        return list(items)

    together = GroupCommit(serve, most=4)
    with ThreadPoolExecutor(max_workers=11) as pool:
        futures = [pool.submit(together.submit, 0)]
        deadline = time.monotonic() + 10
        while not batches and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(1, 11):
            futures.append(pool.submit(together.submit, i))
            while len(together.waiting) < i and time.monotonic() < deadline:
                time.sleep(0.005)
        release.set()
        assert [f.result(10) for f in futures] == list(range(11))
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_a_batch_that_fails_leaves_each_request_to_its_caller_and_the_next_goes_on() -> None:
    calls = {"n": 0}

    def serve(items: list[str]) -> list[object]:
        calls["n"] += 1
        if "bad" in items:
            raise RuntimeError("the database went away")
        return [ALONE if item == "odd" else item.upper() for item in items]

    together = GroupCommit(serve)
    assert together.submit("bad") is ALONE
    assert together.submit("odd") is ALONE
    assert together.submit("fine") == "FINE"
    assert calls["n"] == 3 and not together.busy and not together.waiting


def test_work_after_a_batch_runs_once_its_answers_are_given() -> None:
    order: list[str] = []

    def after(answers: list[object]) -> None:
        order.append(f"after {answers}")
        raise RuntimeError("a rollout's driver failed")  # logged, never the requests'

    together = GroupCommit(lambda items: [order.append("served") or i for i in items], after=after)
    assert together.submit(7) == 7
    assert order == ["served", "after [7]"]


@pytest.mark.parametrize(
    "serve",
    [
        lambda items: items[:-1],  # an answer short: nobody may wait for it forever
        lambda items: [*items, "extra"],
    ],
)
def test_a_batch_answered_wrongly_leaves_each_request_to_its_caller(serve: Any) -> None:
    together = GroupCommit(serve)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = [f.result(10) for f in [pool.submit(together.submit, i) for i in range(4)]]
    assert set(answers) <= {ALONE, 0, 1, 2, 3}
    assert ALONE in answers and not together.busy and not together.waiting


def test_a_metric_that_fails_still_answers_and_hands_over() -> None:
    def sized(_size: int) -> None:
        raise OSError("the metrics folder is gone")

    together = GroupCommit(lambda items: list(items), sized=sized)
    assert together.submit(1) is ALONE
    assert not together.busy  # the next request leads again
    assert together.submit(2) is ALONE
