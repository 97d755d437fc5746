"""Parked requests: a long-poll that waits without a thread.

A waiting agent used to hold one of a worker's threads for up to a minute, so the embedded
default (one process, 32 threads) served about 30 agents before `/health` stopped
answering. Under the server's own worker (repo_server/http_worker.py) a request that has
nothing to answer yet can instead be *parked*: its thread returns at once, the worker's
event loop keeps the connection, and it runs the same request again, in a thread, once it
is woken or its deadline passes. A parked request costs a socket and a few small objects,
no thread, no database connection and no transaction.

The contract between the app and the worker is two WSGI environ keys:

- ``PARK`` is present when the request may park. Its value is a callable; the app calls it
  with a `Parked` and then returns any response, which the worker throws away. The value
  is None when the worker has no room for another parked request.
- ``RESUMED`` is the `Parked` of the previous run when the worker runs a request again.
  Only the worker sets it (a client cannot: environ keys are not headers).

Under any other server (the test client, werkzeug) neither key is present and the app waits
in its thread as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PARK = "nso_repo.park"
RESUMED = "nso_repo.resumed"
# Set by the worker once the app has parked the request: its answer this run is thrown
# away, so it is neither counted nor logged (repo_server/observability.py).
PARKED_NOW = "nso_repo.parked_now"

# A callback that asks the worker's event loop to run the parked request again. Safe to
# call from any thread, more than once.
Wake = Callable[[], None]


@dataclass
class Parked:
    """What the worker needs to keep a request parked, and what the app needs back when it
    runs the request again."""

    deadline: float  # time.monotonic() past which the request runs again whatever happens
    # Registers the wake-up; False when the awaited change has happened already (the worker
    # then runs the request again at once). `unwatch` undoes it (client gone, deadline).
    watch: Callable[[Wake], bool]
    unwatch: Callable[[Wake], None]
    state: dict[str, Any] = field(default_factory=dict)  # the app's own, for the next run
