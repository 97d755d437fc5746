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
from typing import Callable, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Answer = TypeVar("Answer")

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
    ``sized`` is told each batch's size (a metric)."""

    def __init__(
        self,
        serve: Callable[[list[Item]], list[object]],
        most: int = 64,
        sized: Callable[[int], None] = lambda _size: None,
    ) -> None:
        self.serve = serve
        self.most = most
        self.sized = sized
        self.lock = threading.Lock()
        self.waiting: list[_Slot[Item]] = []
        self.busy = False  # a thread serves a batch now

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
        self.sized(len(batch))
        try:
            answers = self.serve([s.item for s in batch])
        except Exception:
            log.exception("a batch of %d failed: each is served alone", len(batch))
            answers = [ALONE] * len(batch)
        for served, answer in zip(batch, answers):
            served.answer = answer
            if served is not slot:
                served.ready.set()
        with self.lock:
            if self.waiting:  # the next batch is served by the first of its own threads
                following = self.waiting[0]
                following.answer = _LEAD
                following.ready.set()
            else:
                self.busy = False
        return slot.answer
