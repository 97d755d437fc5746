"""NSO-aware versions on top of `packaging`.

NSO release strings are PEP 440 compatible once Cisco's build suffix is cut at the first
`_` (`6.2.1_231120` -> `6.2.1`), so `packaging.version.Version` does the parsing and the
ordering; this module adds what the catalog needs on top: the `X.Y` branch, prefix
ranges (`ncs-6.2-` means any 6.2.x), and a string sort key for SQL `ORDER BY`.

Sort key format (`NsoVersion.sort_key`, `package_version_key`)
-------------------------------------------------------------
`<release>-<phase>`: the release numbers with trailing zeros dropped (so `6.2` and
`6.2.0`, which are equal, get the same key), each zero-padded to a fixed width and joined
with `.`; then `-` and a phase block that orders pre-, final, and post-releases the way
PEP 440 does:

    X.devN              -0<dev>
    X{a|b|rc}N[...]     -1<pre> / -2<pre> / -3<pre>   then <post block><dev block>
    X (final)           -4
    X.postN[...]        -5<post block><dev block>

    <post block>  = 0 + zeros (no post) | 1 + N    (a post-release sorts after)
    <dev block>   = 1 + zeros (no dev)  | 0 + N    (a dev-release sorts before)

`-` (0x2D) sorts before `.` (0x2E), so `6.2-<anything>` < `6.2.<anything>`, i.e. every
6.2 phase sorts before 6.2.0.1 and 6.2.1, as in PEP 440. Every numeric field has a fixed
width, so plain string comparison of keys is exactly version comparison.
"""

from __future__ import annotations

import functools
from typing import Any

from packaging.version import InvalidVersion, Version

# Wide enough for date-like components such as 5.0.20181016.1.
NSO_DIGITS = 10
# Package versions may carry timestamps (1.0.20240101123045): give them more room.
PACKAGE_DIGITS = 20
# Keeps sort keys short enough for an indexed column: sort_key <= 128 characters.
MAX_RELEASE_PARTS = 8
# package_version_key never returns more than this (the longest key for a 127-character
# fallback text is 128 characters; valid versions with longer keys use the fallback).
PACKAGE_KEY_MAX = 255

_PRE_PHASE = {"a": "1", "b": "2", "rc": "3"}
_EXAMPLES = "6.2, 6.1.2, 5.5.2.6 or 5.0.20181016.1"


def _num(value: int, width: int) -> str:
    return f"{value:0{width}d}"


def _phase(version: Version, width: int) -> str:
    """Encode pre/post/dev so that string order is PEP 440 order (see module doc)."""
    pre, post, dev = version.pre, version.post, version.dev
    if pre is None and post is None and dev is None:
        return "4"
    if pre is None and post is None:
        return "0" + _num(dev or 0, width)  # X.devN: before every pre-release of X
    head = "5" if pre is None else _PRE_PHASE[pre[0]] + _num(pre[1], width)
    post_block = "0" + "0" * width if post is None else "1" + _num(post, width)
    dev_block = "1" + "0" * width if dev is None else "0" + _num(dev, width)
    return head + post_block + dev_block


def _release_key(release: tuple[int, ...], width: int) -> str:
    parts = list(release)
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 6.2.0 == 6.2: equal versions need equal keys
    return ".".join(_num(part, width) for part in parts)


def _too_wide(version: Version, width: int) -> bool:
    numbers = [*version.release, version.epoch]
    numbers += [n for n in (version.post, version.dev) if n is not None]
    if version.pre is not None:
        numbers.append(version.pre[1])
    return any(n >= 10**width for n in numbers)


@functools.total_ordering
class NsoVersion:
    """An NSO release such as `6.2`, `6.1.2.1` or `5.0.20181016.1`.

    Compares, hashes and sorts like `packaging.version.Version` (so `6.2 == 6.2.0`), but
    `str()` keeps the text it was parsed from (after the cut at `_`).
    """

    __slots__ = ("_text", "_version")

    def __init__(self, text: str, version: Version) -> None:
        self._text = text
        self._version = version

    @classmethod
    def parse(cls, text: str) -> NsoVersion:
        if not isinstance(text, str):
            raise ValueError(f"an NSO version must be a string, not {type(text).__name__}")
        # Versions are immutable: a plan over 10,000 nodes parses the same few texts.
        return _parse_nso(text) if cls is NsoVersion else cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> NsoVersion:
        cut = text.strip().split("_", 1)[0]  # Cisco's scripts ignore the `_<build>` suffix
        if not cut or cut[0] not in "0123456789":
            raise ValueError(f"{text!r} is not an NSO version: expected e.g. {_EXAMPLES}")
        try:
            version = Version(cut)
        except InvalidVersion:
            raise ValueError(f"{text!r} is not an NSO version: expected e.g. {_EXAMPLES}") from None
        if version.epoch or version.local is not None:
            raise ValueError(f"{text!r} is not an NSO version: epochs and local labels are unused")
        if len(version.release) > MAX_RELEASE_PARTS:
            raise ValueError(f"{text!r} has more than {MAX_RELEASE_PARTS} release numbers")
        if len(version.release) < 2:
            raise ValueError(f"{text!r} is not an NSO version: it needs at least X.Y, e.g. 6.2")
        if _too_wide(version, NSO_DIGITS):
            raise ValueError(f"{text!r} has a number with more than {NSO_DIGITS} digits")
        return cls(cut, version)

    @property
    def version(self) -> Version:
        return self._version

    @property
    def release(self) -> tuple[int, ...]:
        return self._version.release

    @property
    def branch(self) -> str:
        """`X.Y`: releases on one branch are maintenance releases of each other."""
        return f"{self.release[0]}.{self.release[1]}"

    def is_maintenance_of(self, other: NsoVersion) -> bool:
        """Same X.Y: packages stay binary compatible between the two (no recompile)."""
        return self.release[:2] == other.release[:2]

    @property
    def sort_key(self) -> str:
        """A string whose plain (byte-wise) order is version order; see the module doc."""
        return _release_key(self.release, NSO_DIGITS) + "-" + _phase(self._version, NSO_DIGITS)

    def next_sibling(self) -> NsoVersion:
        """Exclusive upper bound of every version starting with this one's release numbers.

        6.2 -> 6.3 and 6.2.1 -> 6.2.2; pre/post/dev parts are ignored.
        """
        *head, last = self.release
        return NsoVersion.parse(".".join(str(n) for n in (*head, last + 1)))

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"NsoVersion({self._text!r})"

    def __hash__(self) -> int:
        return hash(self._version)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, NsoVersion):
            return NotImplemented
        return self._version == other._version

    def __lt__(self, other: Any) -> bool:
        if not isinstance(other, NsoVersion):
            return NotImplemented
        return self._version < other._version


def package_version_key(text: str) -> str:
    """Sort key for a package version: PEP 440 versions in version order, then the rest.

    Valid versions get `0<epoch>!<release>-<phase>[+<local>]`; anything else (including
    versions with a number wider than `PACKAGE_DIGITS`, or so many parts that the key
    would pass `PACKAGE_KEY_MAX`) gets `1<text>` and so sorts after every valid version,
    by text. The key is at most `max(PACKAGE_KEY_MAX, len(text) + 1)` characters.
    """
    try:
        version = Version(text)
    except InvalidVersion:
        return "1" + text
    if _too_wide(version, PACKAGE_DIGITS):
        return "1" + text
    key = (
        "0"
        + _num(version.epoch, PACKAGE_DIGITS)
        + "!"
        + _release_key(version.release, PACKAGE_DIGITS)
        + "-"
        + _phase(version, PACKAGE_DIGITS)
    )
    if version.local is not None:
        key += "+" + ".".join(_local_segment(part) for part in version.local.split("."))
    if len(key) > PACKAGE_KEY_MAX:
        return "1" + text  # absurdly many parts: keep the key within the column
    return key


def _local_segment(part: str) -> str:
    # PEP 440: numeric local segments sort after alphanumeric ones, and numerically.
    if part.isdigit():
        if len(part) > PACKAGE_DIGITS:
            return "2" + part  # still after alphanumerics; rare enough to not order exactly
        return "1" + _num(int(part), PACKAGE_DIGITS)
    return "0" + part


@functools.lru_cache(maxsize=4096)
def _parse_nso(text: str) -> NsoVersion:
    return NsoVersion._parse(text)
