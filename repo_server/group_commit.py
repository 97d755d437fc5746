"""Many threads' requests served by one of them, in one transaction.

When a patch reaches a fleet, hundreds of agents claim their step and report at the same
instant. Each in its own transaction, a claim or a report cost 5-7 ms of server CPU, most
of it per statement and per commit, not per agent (bench/patch_latency.py). Here the first
thread to arrive takes every request waiting at that moment and serves them together; the
ones arriving meanwhile wait and go in the next batch, served by one of them. Under light
load a batch is one request, served at once; under heavy load batches grow by themselves,
and no request waits on a timer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")

# What a batch answers for a request it did not serve: the caller serves it alone.
ALONE = object()
_LEAD = object()  # a waiting thread's turn to serve the next batch


class _Slot(Generic[Item]):
    __slots__ = ("answer", "item", "ready")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.answer: object = ALONE
        self.ready = threading.Event()


class GroupCommit(Generic[Item]):
    """Serve ``submit``s in batches of at most ``most`` with ``serve``, which answers each
    item (ALONE for one it leaves to its caller). A batch that raises answers ALONE to all.
    ``sized`` is told each batch's size (a metric); ``after`` gets each batch's answers once
    they are given and the next batch is under way (work that need not hold anyone up)."""

    def __init__(
        self,
        serve: Callable[[list[Item]], list[object]],
        most: int = 64,
        sized: Callable[[int], None] = lambda _size: None,
        after: Callable[[list[object]], None] = lambda _answers: None,
    ) -> None:
        self.serve = serve
        self.most = most
        self.sized = sized
        self.after = after
        self.lock = threading.Lock()
        self.waiting: list[_Slot[Item]] = []
        self.busy = False  # a thread serves a batch now
        self.logged_at = float("-inf")  # the last failure logged with its traceback

    def submit(self, item: Item) -> object:
        slot = _Slot(item)
        with self.lock:
            self.waiting.append(slot)
            lead, self.busy = not self.busy, True
        if not lead:
            slot.ready.wait()
            if slot.answer is not _LEAD:
                return slot.answer
        with self.lock:
            batch, self.waiting = self.waiting[: self.most], self.waiting[self.most :]
        answers: list[object] = [ALONE] * len(batch)
        try:
            self.sized(len(batch))
            served = self.serve([s.item for s in batch])
            if len(served) == len(batch):
                answers = served
            else:
                log.error(
                    "a batch of %d got %d answers: each is served alone", len(batch), len(served)
                )
        except Exception as error:
            self._failed(len(batch), error)
        finally:
            # Whatever happened, every thread of the batch gets an answer and the next batch
            # a leader: none waits forever.
            for waiter, answer in zip(batch, answers):
                waiter.answer = answer
                if waiter is not slot:
                    waiter.ready.set()
            with self.lock:
                if self.waiting:  # the next batch is served by the first of its own threads
                    following = self.waiting[0]
                    following.answer = _LEAD
                    following.ready.set()
                else:
                    self.busy = False
        try:
            self.after(answers)
        except Exception:
            log.exception("after a batch of %d", len(batch))
        return slot.answer

    def _failed(self, size: int, error: Exception) -> None:
        """Log a failed batch: with its traceback at most once a minute (a database that
        went away fails every batch), then one line each."""
        now = time.monotonic()
        if now - self.logged_at >= 60:
            self.logged_at = now
            log.exception("a batch of %d failed: each is served alone", size)
        else:
            log.warning("a batch of %d failed (%s): each is served alone", size, error)
