"""Reading what the NSO CLI prints: pure functions over its text, one per kind of answer.

Formats that no public source shows are matched loosely (tolerant of indentation and
quoting); what cannot be read is None or an error, never a default.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple, Optional

from agent.errors import CliError


class Fingerprint(NamedTuple):
    """``sha256:<hex>`` of the normalised ``show running-config`` and its number of lines."""

    digest: str
    lines: int


def show_value(text: str, leaf: str) -> Optional[str]:
    """``oper-status up`` -> ``up`` from CLI output (first match, tolerant of indentation)."""
    match = re.search(
        rf"^[ \t]*(?:\S+[ \t]+)*?{re.escape(leaf)}[ \t]+(.+?)[ \t]*$", text, re.MULTILINE
    )
    return match.group(1).strip('"') if match else None


def package_names(text: str) -> set[str]:
    """The packages ``show packages`` lists."""
    return set(re.findall(r"^\s*packages package (\S+)", text, re.MULTILINE))


def packages_oper_status(text: str) -> dict[str, str]:
    """Package name -> oper-status, from ``show packages``."""
    return {name: oper for name, (_, oper) in package_states(text).items() if oper}


def package_states(text: str) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """Package name -> (package-version, oper-status), from ``show packages``: every
    loaded package, each field None when not shown."""
    found: dict[str, tuple[Optional[str], Optional[str]]] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"^\s*packages package (\S+)", line)
        if m:
            name = m.group(1)
            found[name] = (None, None)
            continue
        m = re.match(r"^\s*(package-version|oper-status) (\S+)$", line)
        if m and name:
            version, oper = found[name]
            if m.group(1) == "package-version":
                found[name] = (m.group(2), oper)
            else:
                found[name] = (version, m.group(2))
    return found


def reload_failures(text: str) -> list[str]:
    """``result false`` blocks of a reload's output, with their ``info``."""
    failures = []
    for block in re.findall(r"reload-result\s*\{(.*?)\}", text, re.DOTALL):
        if re.search(r"result\s+false", block):
            package = show_value(block, "package") or "?"
            info = show_value(block, "info") or ""
            failures.append(f"{package}: {info}".strip(": "))
    return failures


def refuses_data_loss(output: str) -> bool:
    """NSO's refusal of a reload that would delete namespaces (and the data in them)."""
    return "namespaces will be deleted" in output


def ha_status(text: str) -> dict[str, Any]:
    """``show high-availability`` as enabled, mode, current_id, assigned_role,
    be_secondary_result, primary_id, read_only and connected_secondaries (the ids of the
    ``ID  ADDRESS`` table a primary prints); raises CliError when the text says nothing
    recognisable (unknown is not "HA off")."""
    if re.search(r"No entries found", text):
        # NSO's answer for an empty operational tree: HA is not in use on this node.
        return {
            "enabled": False,
            "mode": "none",
            "current_id": None,
            "assigned_role": None,
            "be_secondary_result": None,
            "primary_id": None,
            "read_only": False,
            "connected_secondaries": [],
        }
    if "high-availability" not in text:
        raise CliError(f"'show high-availability' printed nothing recognisable: {text[:200]!r}")
    ha: dict[str, Any] = {
        "enabled": bool(re.search(r"^high-availability enabled", text, re.MULTILINE)),
        "read_only": False,
        "connected_secondaries": secondaries_table(text),
    }
    for key in ("mode", "current-id", "assigned-role", "be-secondary-result", "primary-id"):
        # Values with spaces are quoted (`"error (25) - could not connect to primary"`).
        m = re.search(rf"^\s*high-availability status {key} (.+?)\s*$", text, re.MULTILINE)
        ha[key.replace("-", "_")] = m.group(1).strip('"') if m else None
    ha["mode"] = ha["mode"] or "none"  # NSO leaves mode out only when it has none
    m = re.search(r"status read-only-mode (\S+)", text)
    if m:
        ha["read_only"] = m.group(1) == "true"
    return ha


def secondaries_table(text: str) -> list[str]:
    """The ids of NSO's connected-secondaries table (``ID  ADDRESS``, a dashed rule, one row
    per secondary); rows end at the first line that is not one."""
    ids: list[str] = []
    rows = False
    for line in text.splitlines():
        if re.match(r"^\s*ID\s+ADDRESS\s*$", line):
            rows = True
        elif rows and re.match(r"^\s*-+\s*$", line):
            continue
        elif rows and re.match(r"^\s*\S+\s+\S+\s*$", line) and "high-availability" not in line:
            ids.append(line.split()[0])
        else:
            rows = False
    return ids


def read_only_mode(text: str) -> Optional[bool]:
    """``show high-availability status read-only-mode``: True/False, None if not shown."""
    value = show_value(text, "read-only-mode")
    return {"true": True, "false": False}.get(value or "")


def running_config_fingerprint(text: str) -> Fingerprint:
    """The fingerprint of ``show running-config`` output.

    What "data intact" means to the agent: the configuration NSO serves, byte for byte after
    normalising whitespace, is the same before the upgrade and after it (or after a restore).
    Volatile parts are excluded: the ``high-availability`` subtree changes during HA
    choreography, and trailing whitespace/blank lines depend on the CLI's rendering.
    """
    kept: list[str] = []
    skipping = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        # A top-level line opens a new subtree; "!" closes the one before it.
        if not line.startswith(" ") and line != "!":
            skipping = line.startswith("high-availability")
        if skipping:
            continue
        kept.append(line)
    digest = hashlib.sha256("\n".join(kept).encode()).hexdigest()
    return Fingerprint(f"sha256:{digest}", len(kept))
