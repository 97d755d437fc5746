"""One way to wait for something in tests: poll a predicate until it holds or time is up."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "the condition never held",
    details: Optional[Callable[[], str]] = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and
    return that. After ``timeout`` seconds raise AssertionError with ``message``, the last
    value (or the last exception of a type in ``ignoring``, which count as "not yet") and
    the text ``details()`` returns then (a log tail, say). Other exceptions propagate."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            last = f"last error: {exc!r}"
        else:
            if value:
                return value
            last = f"last value: {value!r}"
        if time.monotonic() >= deadline:
            text = f"{message} (after {timeout:g} s; {last})"
            if details is not None:
                text += f"\n{details()}"
            raise AssertionError(text)
        time.sleep(interval)
