"""Output formats of the NSO CLI shared by several commands: the one table renderer, and
the ``packages reload`` banner and result blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

NO_ENTRIES = "% No entries found."

RELOAD_BANNER = [
    ">>> System upgrade is starting.",
    ">>> Sessions in configure mode must exit to operational mode.",
    ">>> No configuration changes can be performed until upgrade has completed.",
]


def lines(*texts: str) -> str:
    return "\n".join(texts)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], rule: bool = True) -> list[str]:
    """An NSO CLI table (``show ... | tab``): columns padded to their widest cell plus two
    spaces, trailing blanks dropped, and under the heading a dashed rule as wide as the
    padded columns (real NSO prints one; some simulated outputs have always left it out)."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "".join(c.ljust(w + 2) for c, w in zip(cells, widths)).rstrip()

    dashes = ["-" * sum(w + 2 for w in widths)] if rule else []
    return [line(head), *dashes, *[line(r) for r in rows]]


def quote(text: str) -> str:
    """A value as the CLI prints it: quoted only when it holds spaces."""
    return f'"{text}"' if " " in text else text


def reload_blocks(names: list[str], failures: Optional[dict[str, str]] = None) -> list[str]:
    out = []
    for name in names:
        out += ["reload-result {", f"    package {name}"]
        if failures and name in failures:
            out += ["    result false", f'    info "{failures[name]}"']
        else:
            out.append("    result true")
        out.append("}")
    return out
