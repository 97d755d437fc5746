"""NED migration: the names a ``ned_migrate`` step may put into NSO CLI text, and reading what
NSO prints about devices, device groups and ``migrate``.

A device, device group or ned-id from the server becomes part of a command such as
``devices device <name> migrate new-ned-id <id> dry-run``: a space, ``;``, ``|`` or quote in
it would add arguments or run another command. So each is checked against a strict ASCII
grammar first (the style of ``agent/trust.py``), and so are the group members NSO itself
names before they are used in a command. The output formats of ``migrate`` are not in our
sources (docs/nso-sim.md); they are read loosely: blocks ``modified-path { ... }`` and
``lost-data { ... }`` of ``key value`` lines, a ``device NAME`` line before each device's
blocks when a whole group migrates.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from agent.errors import NsoError, StepFailed

MAX_NAME = 128
# Device and device-group names, as inventories name hosts: letters, digits, _ . -
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)
# ned-ids such as cisco-iosxr-cli-7.43, optionally as a device stores them (prefix:id).
NED_ID = re.compile(r"(?:[A-Za-z][A-Za-z0-9_.-]*:)?[A-Za-z][A-Za-z0-9_.-]*", re.ASCII)
NAME_RULE = "ASCII letters, digits and _ . - (starting with a letter or digit), at most 128"
NED_ID_RULE = "a ned-id is ASCII letters, digits and _ . - (e.g. router-nc-2.0), at most 128"


def checked(value: object, what: str, pattern: re.Pattern[str], rule: str, source: str) -> str:
    """``value`` when it is text of ``pattern`` (``..`` never), else a StepFailed naming it,
    where it came from and the rule; nothing on the host has changed when it is raised."""
    ok = (
        isinstance(value, str)
        and len(value) <= MAX_NAME
        and ".." not in value
        and pattern.fullmatch(value) is not None
    )
    if not ok:
        raise StepFailed(f"{what} {value!r} from {source} is refused: {rule}; nothing was migrated")
    return str(value)


def device_name(value: object, what: str, source: str = "the server") -> str:
    return checked(value, what, NAME, f"a device name is {NAME_RULE}", source)


def group_name(value: object, what: str, source: str = "the server") -> str:
    return checked(value, what, NAME, f"a device group name is {NAME_RULE}", source)


def ned_id(value: object, what: str) -> str:
    return checked(value, what, NED_ID, NED_ID_RULE, "the server")


def bare_ned_id(value: str) -> str:
    """``cisco-ios-cli-3.8:cisco-ios-cli-3.8`` -> ``cisco-ios-cli-3.8``: the identity, as
    ``show packages`` names it."""
    return value.rsplit(":", 1)[-1]


def device_ned_id(text: str) -> Optional[str]:
    """The ned-id of ``show running-config devices device D device-type`` (None: no such
    device, or none shown)."""
    match = re.search(r"device-type\s+\S+.*?\bned-id\s+(\S+)", text)
    if not match:
        return None
    found = bare_ned_id(match.group(1).strip('"'))
    # It goes into the result the server keeps, and is compared with the step's ned-id.
    if len(found) > MAX_NAME or ".." in found or not NED_ID.fullmatch(found):
        raise NsoError(
            f"NSO shows a device on ned-id {found[:140]!r}, which the agent cannot read as a "
            f"ned-id ({NED_ID_RULE}): check the device's device-type by hand",
            text,
        )
    return found


def group_members(text: str) -> Optional[tuple[list[str], list[str]]]:
    """The two leaf-lists of ``show running-config devices device-group G``: its devices
    (``device-name``) and the groups it nests (``device-group``), each ``[ a b ]`` or one
    value; None when NSO shows no such group."""
    if not re.search(r"^\s*devices device-group\s", text, re.MULTILINE):
        return None
    return _leaf_list(text, "device-name"), _leaf_list(text, "device-group")


def _leaf_list(text: str, leaf: str) -> list[str]:
    # The leaf starts its line (indented), or follows the group's name on the first line;
    # never the `devices device-group G` that opens the group.
    at = rf"(?:^[ \t]+|^[ \t]*devices device-group \S+[ \t]+){leaf}[ \t]+"
    match = re.search(at + r"\[\s*(.*?)\s*\]", text, re.DOTALL | re.MULTILINE)
    if match:
        try:  # a name with a space is shown quoted: "a b"
            return shlex.split(match.group(1))
        except ValueError:
            return match.group(1).split()
    single = re.search(at + r"(\S+)", text, re.MULTILINE)
    return [single.group(1)] if single else []


@dataclass
class Migration:
    """What ``migrate`` printed for one device: each ``modified-path`` and ``lost-data``
    block as its ``key value`` lines (``path``, ``info``, ``value``...)."""

    device: str
    modified_paths: list[dict[str, str]] = field(default_factory=list)
    lost_data: list[dict[str, str]] = field(default_factory=list)


def migrations(
    text: str, device: Optional[str] = None, whole: bool = False
) -> dict[str, Migration]:
    """Device -> what ``migrate`` printed for it. ``device``: the one device migrated (its
    output names no device); a group's output names each before its blocks. ``whole``: every
    block must be tied to a device (`_all_read`), as a dry-run's answer must."""
    found: dict[str, Migration] = {}
    current = device
    block: Optional[tuple[str, dict[str, str]]] = None
    for raw in text.splitlines():
        line = raw.strip()
        opened = re.fullmatch(r"(\S+)\s*\{", line)
        if block is None and opened:
            block = (opened.group(1), {})
        elif block is not None and line == "}":
            kind, fields = block
            block = None
            if current is None:
                continue
            entry = found.setdefault(current, Migration(current))
            if kind == "modified-path":
                entry.modified_paths.append(fields)
            elif kind == "lost-data":
                entry.lost_data.append(fields)
        elif block is not None:
            key, _, value = line.partition(" ")
            block[1][key] = value.strip().strip('"')
        elif not raw.startswith(" ") and re.fullmatch(r"device\s+\S+", line):
            current = line.split()[1]
            found.setdefault(current, Migration(current))
    if whole:
        _all_read(text, found)
    return found


def _all_read(text: str, found: dict[str, Migration]) -> None:
    """Every ``modified-path`` and ``lost-data`` NSO printed was read and tied to a device:
    migrate's output is not documented, and a block read past (nested in another, printed
    before any device's name) would make a dry-run that loses data look as if it lost none.
    Raises NsoError otherwise, with the counts: the operator reads NSO's answer by hand."""
    for word, kind in (("modified-path", "modified_paths"), ("lost-data", "lost_data")):
        printed = len(re.findall(rf"^\s*{word}\s*{{", text, re.MULTILINE))
        read = sum(len(getattr(m, kind)) for m in found.values())
        if printed > read:
            raise NsoError(
                f"migrate printed {printed} '{word}' blocks and the agent could tie only {read} "
                f"of them to a device: its answer is not in a form the agent knows, so what "
                "the migration changes or loses is unknown; run the same migrate with dry-run "
                "on the NSO CLI and read it there"
            )
