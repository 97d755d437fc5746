"""NSO version strings: ``6.2``, ``6.1.2``, ``5.5.2.6``, internal builds ``5.0.20181016.1``.

Versions are compared by their numeric parts (``6.10`` > ``6.9``), never as strings.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Callable, Optional

_VERSION_RE = re.compile(r"^\d+(\.\d+)+$")
_DOTTED_RE = re.compile(r"^\d+(\.\d+)*$")


def clean(vsn: str) -> str:
    """Cut at ``_`` as Cisco's scripts do (``6.2_240101`` -> ``6.2``)."""
    return vsn.split("_", 1)[0].strip()


def is_valid(vsn: str) -> bool:
    return bool(_VERSION_RE.match(clean(vsn)))


def parse(vsn: str) -> tuple[int, ...]:
    vsn = clean(vsn)
    if not is_valid(vsn):
        raise ValueError(f"not an NSO version: {vsn!r}")
    return tuple(int(p) for p in vsn.split("."))


def major(vsn: str) -> str:
    """The ``X.Y`` branch; packages are binary compatible within it."""
    parts = parse(vsn)
    return f"{parts[0]}.{parts[1]}"


def key(vsn: str) -> tuple[int, ...]:
    """What versions are compared by: the numbers, trailing zeros dropped (6.2 == 6.2.0)."""
    parts = list(parse(vsn))
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def at_least(vsn: str, floor: str) -> bool:
    return key(vsn) >= key(floor)


def failed_min_version(running: str, floors: list[str]) -> Optional[str]:
    """The ``ncs-min-version`` entry that ``running`` does not reach, or None.

    A package may give one entry per branch (``show packages`` shows ``ncs-min-version
    [ 3.2.2 3.3 3.4 ]``): the entry of the running release's own ``X.Y`` branch applies when
    there is one, else the lowest entry.
    """
    valid = [f for f in floors if is_valid(f)]
    if not valid:
        return None
    own = [f for f in valid if major(f) == major(running)]
    floor = max(own, key=key) if own else min(valid, key=key)
    return None if key(running) >= key(floor) else floor


def failed_max_version(running: str, ceilings: list[str]) -> Optional[str]:
    """The ``ncs-max-version`` entry that ``running`` exceeds, or None.

    An ``X.Y`` entry covers its whole branch (``6.2`` admits 6.2.3); a longer entry is an
    inclusive bound. Of several entries, the one of the running release's branch applies
    when there is one, else the highest.
    """
    valid = [c for c in ceilings if is_valid(c)]
    if not valid:
        return None
    own = [c for c in valid if major(c) == major(running)]
    ceiling = max(own or valid, key=key)
    whole_branch = len(parse(ceiling)) == 2
    compared = major(running) if whole_branch else running
    return None if key(compared) <= key(ceiling) else ceiling


def _dotted(text: str) -> Optional[tuple[int, ...]]:
    if not _DOTTED_RE.match(text.strip()):
        return None
    parts = [int(p) for p in text.strip().split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _holds(version: str, bound: str, ok: Callable[[Any, Any], bool]) -> bool:
    have, want = _dotted(version), _dotted(bound)
    if have is None or want is None:
        return version.strip() == bound.strip()
    return ok(have, want)


def package_version_within(version: str, low: Optional[str], high: Optional[str]) -> bool:
    """Whether a package version lies in [low, high] (either bound optional).

    Numeric dotted versions compare by their numbers (1.10 > 1.9); a version or bound that
    is not numeric must equal the bound exactly.
    """
    return (not low or _holds(version, low, operator.ge)) and (
        not high or _holds(version, high, operator.le)
    )
