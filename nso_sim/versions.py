"""NSO version strings: ``6.2``, ``6.1.2``, ``5.5.2.6``, internal builds ``5.0.20181016.1``."""

from __future__ import annotations

import re

_VERSION_RE = re.compile(r"^\d+(\.\d+)+$")


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


def at_least(vsn: str, floor: str) -> bool:
    return parse(vsn) >= parse(floor)
