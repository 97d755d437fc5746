"""Emergency patch bundles (``nso-<VSN>-patch-<ID>.tar.gz``) as the agent reads them, and
what NSO says of its patches.

A bundle holds top-level ``<module>.beam`` files and an optional ``README``, nothing else
(docs/artifact-formats.md). The agent runs as root and writes these files into NSO's own
release folder, so it reads the bundle itself rather than extracting it: every member is
checked (a regular file, one path component, a module name of the catalog's grammar, a
bounded size, a BEAM header) before a byte of it reaches the host, and a bundle that breaks
any rule is refused whole. The names and ids here reach paths and log lines only, never
CLI text.

``show ncs-state patches`` and ``ncs-state patches load-modules`` print formats no public
source shows (docs/nso-sim.md): they are read loosely, and what cannot be read is an error,
never "no patches".
"""

from __future__ import annotations

import gzip
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, cast

from agent import trust
from agent.errors import CliError, StepFailed

# The catalog's grammar (repo_server/catalog/inspect.py, filenames.py).
MODULE = re.compile(r"[a-z][A-Za-z0-9_]*", re.ASCII)
PATCH_ID = trust.PACKAGE_WORD  # the catalog's patch ids are words of the same grammar
BUNDLE_FILE = re.compile(
    rf"nso-(?P<vsn>{trust.NSO_VERSION.pattern})-patch-(?P<id>{PATCH_ID.pattern})\.tar\.gz",
    re.ASCII,
)
BUNDLE_FORM = "nso-<VSN>-patch-<ID>.tar.gz"
MAX_MEMBERS = 1000
# A real patch's modules are kilobytes to a few MiB. The whole unpacked stream, headers
# included, is capped: tarfile reads an extended (PAX) header whole into memory, so a
# 100 KiB bundle could otherwise make the agent (root) allocate hundreds of MiB.
MAX_BEAM_BYTES = 16 << 20
MAX_TOTAL_BYTES = 64 << 20
MAX_UNPACKED_BYTES = MAX_TOTAL_BYTES + (1 << 20)
README = "README"


class _Capped:
    """The decompressed bundle, read forward only, refusing to go past `limit` bytes."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.limit, self.done = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or self.done + size > self.limit:
            size = self.limit - self.done + 1
        data: bytes = self.raw.read(size)
        self.done += len(data)
        if self.done > self.limit:
            raise OSError(f"it unpacks to more than {self.limit} bytes")
        return data


def module_name(value: object, what: str) -> str:
    """An Erlang module name of a patch: what becomes ``lib/ncs/patches/<module>.beam``."""
    return trust.matched(value, what, MODULE, "a module name is [a-z][A-Za-z0-9_]* (e.g. ncs_fix)")[
        0
    ]


def patch_id(value: object, what: str) -> str:
    return trust.matched(value, what, PATCH_ID, f"a patch id {trust.WORD_RULE}")[0]


def modules(params: dict[str, Any], key: str = "modules") -> list[str]:
    """``params[key]``: a non-empty list of module names, each checked, none twice."""
    names = [
        module_name(m, f"{key}[{i}]") for i, m in enumerate(trust.listed(params, key, "modules"))
    ]
    if not names or len(set(names)) != len(names):
        raise trust.refuse(key, names, "expected the bundle's module names, each once")
    return names


def bundle_file(value: object, what: str, vsn: str, pid: str) -> str:
    """The bundle's file name: the catalog's grammar, for release ``vsn`` and patch ``pid``."""
    rule = f"patch bundles are named {BUNDLE_FORM}"
    match = trust.matched(value, what, BUNDLE_FILE, rule, trust.MAX_FILENAME)
    if (match["vsn"], match["id"]) != (vsn, pid):
        raise trust.refuse(
            what, value, f"it names NSO {match['vsn']} patch {match['id']}, the step {vsn} {pid}"
        )
    return match[0]


def _capped(raw: Any) -> IO[bytes]:
    return cast(IO[bytes], _Capped(raw, MAX_UNPACKED_BYTES))


def _refused(bundle: Path, why: str) -> StepFailed:
    return StepFailed(
        f"patch bundle {bundle.name} is refused: {why}; nothing was written. A bundle holds "
        "only <module>.beam files and a README at its top level (the catalog checks this at "
        "upload): check the artifact on the server"
    )


def read_bundle(bundle: Path) -> dict[str, bytes]:
    """Module -> the bytes of its ``.beam``, every member checked; StepFailed naming the
    first member that breaks a rule. Nothing is extracted."""
    found: dict[str, bytes] = {}
    total = 0
    try:
        with gzip.open(bundle, "rb") as raw, tarfile.open(fileobj=_capped(raw), mode="r|") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise _refused(bundle, f"more than {MAX_MEMBERS} members")
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name in ("", ".") and member.isdir():
                    continue  # the "./" entry of `tar -C dir -czf x.tar.gz .`
                if "/" in name or name in ("..", "."):
                    raise _refused(bundle, f"member {member.name!r} is not at the top level")
                if not member.isreg():
                    kind = "a link" if member.issym() or member.islnk() else "not a regular file"
                    raise _refused(bundle, f"member {member.name!r} is {kind}")
                if name == README:
                    continue
                module = name[: -len(".beam")] if name.endswith(".beam") else ""
                if not MODULE.fullmatch(module) or len(module) > trust.MAX_NAME:
                    raise _refused(bundle, f"member {member.name!r} is no <module>.beam")
                if module in found:
                    raise _refused(bundle, f"member {member.name!r} appears twice")
                total += member.size
                if member.size > MAX_BEAM_BYTES or total > MAX_TOTAL_BYTES:
                    raise _refused(bundle, f"member {member.name!r} makes it too large")
                handle = tar.extractfile(member)
                data = handle.read(member.size + 1) if handle is not None else b""
                if len(data) != member.size or data[:4] != b"FOR1" or data[8:12] != b"BEAM":
                    raise _refused(bundle, f"member {member.name!r} is no compiled Erlang module")
                found[module] = data
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise _refused(bundle, f"it cannot be read as a tar.gz ({exc})") from None
    if not found:
        raise _refused(bundle, "it holds no .beam file")
    return found


# -- what NSO says ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedPatch:
    """A row of ``show ncs-state patches``: the release it names, when NSO prints the
    column the patch id, and the rest of the row (the compile time), which tells two builds
    of one module apart."""

    module: str
    version: Optional[str]
    patch_id: Optional[str]
    built: Optional[str] = None


def _heading(line: str) -> bool:
    """The table's heading: ``NAME VERSION ...`` as `nct` printed it (any case; ``MODULE``
    for ``NAME`` too: the real layout is not documented)."""
    first = [c.upper() for c in line.split()[:2]]
    return len(first) == 2 and first[0] in ("NAME", "MODULE") and first[1] == "VERSION"


def patches_table(text: str) -> dict[str, LoadedPatch]:
    """Module -> row of ``show ncs-state patches`` (``NAME VERSION [PATCH-ID] COMPILE
    TIME`` columns, rows split on blanks). ``% No entries found.``: none. Anything else
    raises CliError: unknown is not "nothing loaded"."""
    if "No entries found" in text:
        return {}
    lines = text.splitlines()
    head = next((i for i, ln in enumerate(lines) if _heading(ln)), None)
    if head is None:
        raise CliError(f"'show ncs-state patches' printed no table: {text[:200]!r}", text)
    columns = [c.upper() for c in lines[head].split()]
    with_id = len(columns) > 2 and columns[2] in ("PATCH-ID", "PATCH")
    rows: dict[str, LoadedPatch] = {}
    for line in lines[head + 1 :]:
        cells = line.split()
        if not cells:
            break
        if set(line.strip()) == {"-"}:
            continue  # the rule under the heading
        rest = cells[3:] if with_id else cells[2:]
        rows[cells[0]] = LoadedPatch(
            cells[0],
            cells[1] if len(cells) > 1 else None,
            cells[2] if with_id and len(cells) > 2 else None,
            " ".join(rest) or None,
        )
    return rows


_MODULE_LINE = re.compile(r"^\s*module\s+(\S+)\s+(\S+)(?:\s+(.*))?$")
_RESULT_OK = re.compile(r"^\s*result\s*:?\s*(ok|true|success)\b", re.MULTILINE | re.IGNORECASE)
# Words of an answer that went wrong: a `result` other than ok, an error, a failure.
_TROUBLE = re.compile(
    r"^\s*result\s*:?\s*(?!(ok|true|success)\b)\S|error|fail|invalid|could not|cannot|"
    r"can't|unable|refused|aborted|denied|badarg|not loaded",
    re.IGNORECASE | re.MULTILINE,
)


def load_failures(text: str) -> dict[str, str]:
    """Module -> why, for what ``ncs-state patches load-modules`` could not load (``module
    M failed "why"``); empty when NSO said ``result ok``, or said nothing this reads as
    trouble. Its output is not documented (the reference: "Output unknown"), so an answer
    without either is not a failure: the caller's ``show ncs-state patches`` decides.
    Raises CliError when the answer reads as a failure the agent cannot tie to modules
    (any line but ``module M loaded|unloaded|failed ...`` that reads as trouble)."""
    failures: dict[str, str] = {}
    rest: list[str] = []
    for line in text.splitlines():
        row = _MODULE_LINE.match(line)
        status = row.group(2) if row else None
        if row and status == "failed":
            failures[row.group(1)] = (row.group(3) or "").strip().strip('"') or "failed"
        elif not (row and status in ("loaded", "unloaded")):
            rest.append(line)
    others = "\n".join(rest)
    if failures or _RESULT_OK.search(others) or not _TROUBLE.search(others):
        return failures
    raise CliError(
        f"'ncs-state patches load-modules' did not say result ok and reads as a failure: "
        f"{text[:300]!r}",
        text,
    )
