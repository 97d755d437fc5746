"""What an agent may report back: each step's result keys, with their types and limits.

A succeeded step's result is merged into the job's context, and later steps receive it:
the recovery, which runs as root and moves folders around, among them. So a result is
taken whole or refused whole (422 ``result_invalid``): every key declared for its step,
of its type, within its limits; a host path only where the agent itself writes for this
job, under ``/var/opt/ncs/backups`` (docs/agent-protocol.md, "Reporting").

A failed report is never refused for its result: that would leave the job waiting on a
step that already ended on the host. Its result keeps the ``FAILURE`` keys that pass and
drops everything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from repo_server.catalog import inspect
from repo_server.errors import ValidationFailed

# Report texts: what the agent sends at most (agent/runner.py, agent/steps/context.py).
MESSAGE_MAX = 2000
LOG_TAIL_MAX = 16_000
BACKUPS = "/var/opt/ncs/backups"
JOB_DIR = f"{BACKUPS}/nso-agent-job-{{job}}"
RESULT_MAX_BYTES = 128 * 1024
LIST_MAX = 1000
COUNT_MAX = 2**63 - 1
# One path component the agent could have made: no separators, no control characters.
_PART = r"[^/\x00-\x1f\x7f]+"


# What an agent's text may not bring to an operator's terminal (`nso-repo job watch`,
# `node ls`): C0 and C1 control characters but tab and newline (escape sequences start with
# ESC or CSI; a carriage return overwrites a line), and the bidirectional overrides that
# make text read other than it is stored.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every character an agent must not send to a terminal replaced by
    U+FFFD; line breaks are kept (CRLF as LF)."""
    return _UNPRINTABLE.sub("\ufffd", text.replace("\r\n", "\n"))


def one_line(text: str) -> str:
    """``printable``, and no line break or tab either: a value shown as one field of a
    line (`nso-repo node ls`), where a line break would forge a row of its own."""
    return printable(text).replace("\n", "\ufffd").replace("\t", " ")


def printable_tree(value: Any, lines: Optional[frozenset[str]] = None) -> Any:
    """``value`` (JSON) with ``printable`` applied to every string in it, keys included.
    With ``lines``, only the strings under those keys keep their line breaks; every other
    one is made `one_line`."""
    return _printable(value, lines, lines is None)


def _printable(value: Any, lines: Optional[frozenset[str]], keep: bool) -> Any:
    if isinstance(value, str):
        return printable(value) if keep else one_line(value)
    if isinstance(value, dict):
        return {
            _printable(str(k), lines, keep): _printable(
                v, lines, keep or (lines is not None and str(k) in lines)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_printable(v, lines, keep) for v in value]
    return value


class ResultInvalid(ValidationFailed):
    code = "result_invalid"


@dataclass(frozen=True)
class Key:
    """One result key. ``kind``: str, int, bool, list or object; ``size``: most characters
    of a string or items of a list; ``pattern``: what a string must match in full
    (``{job}``: the reporting job's id); ``path``: a host path, normalised; ``shown``: how
    errors name it."""

    kind: str
    size: int = 64
    pattern: Optional[str] = None
    nullable: bool = False
    path: bool = False
    item: Optional[Key] = None
    fields: dict[str, Key] = field(default_factory=dict)
    shown: str = ""

    def describe(self) -> str:
        if self.shown:
            text = self.shown
        elif self.kind == "str":
            text = f"string of at most {self.size} characters"
        elif self.kind == "list":
            assert self.item is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
            text = f"list of at most {self.size} items, each a {self.item.describe()}"
        elif self.kind == "object":
            text = (
                "object {" + ", ".join(f"{k}: {v.describe()}" for k, v in self.fields.items()) + "}"
            )
        else:
            text = {"int": "integer >= 0", "bool": "true or false"}[self.kind]
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any, job_id: int) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return type(value) is int and 0 <= value <= COUNT_MAX
        if self.kind == "str":
            return (
                isinstance(value, str) and len(value) <= self.size and self._matches(value, job_id)
            )
        if self.kind == "list":
            assert self.item is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
            item = self.item
            return (
                isinstance(value, list)
                and len(value) <= self.size
                and all(item.accepts(v, job_id) for v in value)
            )
        return (
            isinstance(value, dict)
            and set(value) <= set(self.fields)
            and all(self.fields[k].accepts(v, job_id) for k, v in value.items())
        )

    def _matches(self, value: str, job_id: int) -> bool:
        if self.pattern is None:
            return "\x00" not in value
        if self.path and not _normal_path(value):
            return False
        # ASCII: \d is 0-9 only, not the digits of every script.
        pattern = self.pattern.replace("{job}", str(job_id))
        return re.fullmatch(pattern, value, re.ASCII) is not None


def _normal_path(value: str) -> bool:
    """Absolute, and written the one way: no empty, ``.`` or ``..`` components."""
    parts = value.split("/")
    return parts[0] == "" and all(p not in ("", ".", "..") for p in parts[1:])


def text(size: int = 64, pattern: Optional[str] = None, nullable: bool = False) -> Key:
    return Key("str", size, pattern, nullable)


def host_path(pattern: str, shown: str, size: int = 4096) -> Key:
    """A host path: normalised, absolute, matching ``pattern`` in full."""
    return Key("str", size, pattern, path=True, shown=shown)


def items(item: Key, size: int = LIST_MAX) -> Key:
    return Key("list", size, item=item)


COUNT = Key("int")
FLAG = Key("bool")
VERSION = text(64, r"[A-Za-z0-9._+-]*")
FILE_NAME = text(255, _PART)
FINGERPRINT = text(71, r"sha256:[0-9a-f]{64}", nullable=True)
TIME = text(40, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?", nullable=True)
HA_MODE = text(16, r"primary|secondary|none")
HA_IDS = items(text(128, r"[A-Za-z0-9._-]+"), 64)
JOB_FOLDER = re.escape(BACKUPS) + "/nso-agent-job-{job}"
# An Erlang module of a patch bundle, as the catalog accepts it (catalog/inspect.py).
BEAM_MODULE = inspect.BEAM_MODULE.pattern

# NED migration: what NSO printed for one path (agent/steps/ned_migration.py cuts it).
NSO_BLOCK = Key("object", fields={"path": text(512), "info": text(512), "value": text(512)})
DEVICE_NAME = text(128, r"[A-Za-z0-9][A-Za-z0-9_.-]*")

STEP_RESULTS: dict[str, dict[str, Key]] = {
    "prestage": {"installed_release": VERSION, "staged_packages": items(FILE_NAME)},
    "prestage_packages": {"staged_packages": items(FILE_NAME)},
    "backup": {
        "backup_file": host_path(
            re.escape(BACKUPS) + r"/[A-Za-z0-9_][A-Za-z0-9@:._+=-]*",
            f"{BACKUPS}/<file>",
            size=len(BACKUPS) + 256,
        ),
        "backup_proof": Key(
            "object",
            fields={"members": COUNT, "bytes": COUNT, "cdb_files": items(text(1024))},
        ),
        "extra_dir": host_path(JOB_FOLDER + "/package-links", f"{JOB_DIR}/package-links"),
    },
    "stop": {"fingerprint": FINGERPRINT, "stopped_at": TIME},
    "restore_point": {
        "restore_point": host_path(JOB_FOLDER + "/restore-point", f"{JOB_DIR}/restore-point"),
        "restore_point_token": text(128, r"[A-Za-z0-9._-]+"),
        "restore_point_files": COUNT,
        "restore_point_bytes": COUNT,
    },
    "compact": {},
    "switch_current": {"current": VERSION, "previous_current": text(64, VERSION.pattern, True)},
    "ncs_conf": {
        "removed_elements": items(text(128, r"[A-Za-z0-9_.:-]+"), 100),
        "saved_ncs_conf": host_path(
            r"/etc/ncs/ncs\.conf\.nso-agent-job-{job}", "/etc/ncs/ncs.conf.nso-agent-job-{job}"
        ),
    },
    "relink_packages": {"packages": items(FILE_NAME)},
    "start": {"nso_status": text(32), "read_only": FLAG},
    "verify": {
        "version": VERSION,
        "packages": items(text(255)),
        "data_changed": Key("bool", nullable=True),
        "fingerprint_after": FINGERPRINT,
    },
    "recover": {
        "rolled_back": FLAG,
        "version": VERSION,
        # In the job's folder, or (when an area lives on another file system, where a
        # rename cannot reach the job's folder) in a hidden folder beside the live data.
        "replaced_data": items(
            host_path(
                rf"{JOB_FOLDER}/replaced-\d+(/{_PART})*|(/{_PART})+/\.nso-agent-replaced-replaced-\d+",
                f"{JOB_DIR}/replaced-<n>/... or <data folder>/.nso-agent-replaced-replaced-<n>",
            ),
            100,
        ),
    },
    "install_packages": {"installed": items(text(4000))},
    "reload_packages": {"reloaded": FLAG},
    "verify_packages": {"packages": items(text(255))},
    "recover_packages": {"rolled_back": FLAG},
    # HA group upgrades (docs/agent-protocol.md, "HA steps")
    "ha_check": {"ha_mode": HA_MODE, "connected_secondaries": HA_IDS, "read_only": FLAG},
    "ha_read_only": {"read_only": FLAG},
    "ha_be_primary": {"ha_mode": HA_MODE, "read_only": FLAG},
    "ha_enable": {"ha_mode": HA_MODE, "read_only": FLAG},
    "ha_wait_secondaries": {"connected_secondaries": HA_IDS},
    "ha_verify": {
        "ha_mode": HA_MODE,
        "connected_secondaries": HA_IDS,
        "version": VERSION,
        "fingerprint": FINGERPRINT,
        "fingerprint_lines": COUNT,
    },
    # Package upgrades on an HA group (docs/ha-upgrades.md)
    "ha_package_check": {"ha_mode": HA_MODE, "connected_secondaries": HA_IDS, "read_only": FLAG},
    "ha_sync_packages": {"read_only_before": FLAG, "read_only": FLAG},
    "ha_verify_packages": {
        "loaded": items(
            Key(
                "object",
                fields={
                    "name": text(255, r"[A-Za-z0-9._-]+"),
                    "version": text(64, VERSION.pattern, nullable=True),
                    # One word of `show packages` (visible ASCII): it is quoted in the
                    # job's error, which operators read in a terminal.
                    "oper_status": text(64, r"[!-~]+", nullable=True),
                },
            )
        ),
        "read_only": FLAG,
        # The member's HA mode and, on a secondary, the node it follows: a failover during
        # the job shows in what the job says of each member.
        "ha_mode": HA_MODE,
        "primary_id": text(128, r"[A-Za-z0-9._-]+", nullable=True),
    },
    # Emergency patches (docs/patches.md): the modules NSO lists with the patch id after
    # the step (apply), or no longer lists with it (remove); kept: modules of the bundle
    # whose file there holds another build, left alone.
    "apply_patch": {"modules": items(text(128, BEAM_MODULE)), "changed": FLAG},
    "remove_patch": {
        "modules": items(text(128, BEAM_MODULE)),
        "kept": items(text(128, BEAM_MODULE)),
        "changed": FLAG,
    },
    # A major NED upgrade's migrate, per device (docs/upgrades.md, "Major NED upgrade").
    "ned_migrate": {
        "ned_migration": Key(
            "object",
            fields={
                "new_ned_id": text(128, r"[A-Za-z0-9_.:-]+"),
                "dry_run": FLAG,
                "devices_total": COUNT,
                "lost_data_total": COUNT,
                "truncated": FLAG,
                "devices": items(
                    Key(
                        "object",
                        fields={
                            "device": DEVICE_NAME,
                            "groups": items(DEVICE_NAME, 100),
                            "old_ned_id": text(128, nullable=True),
                            "new_ned_id": text(128, r"[A-Za-z0-9_.:-]+"),
                            "state": text(16, r"dry_run|migrated|already"),
                            "modified_paths": items(NSO_BLOCK, 100),
                            "modified_paths_total": COUNT,
                            "lost_data": items(NSO_BLOCK, 100),
                            "lost_data_total": COUNT,
                        },
                    )
                ),
            },
        )
    },
}

# What a failed report may carry, whatever the step (docs/agent-protocol.md). `changed`:
# the step changed the node before it failed (a NED migration that moved some devices, a
# patch whose files could not all be put back).
FAILURE: dict[str, Key] = {"nso_running": FLAG, "version": VERSION, "changed": FLAG}


def _size(raw: Any) -> int:
    try:
        return len(json.dumps(raw))
    except (ValueError, RecursionError):
        return RESULT_MAX_BYTES + 1


def allowed(step: str) -> dict[str, str]:
    return {key: spec.describe() for key, spec in STEP_RESULTS.get(step, {}).items()}


def succeeded_result(step: str, job_id: int, raw: Any) -> dict[str, Any]:
    """The result of a succeeded ``step`` of job ``job_id``; ResultInvalid unless every key
    is declared for the step and within its type and limits."""
    declared = STEP_RESULTS.get(step, {})
    problem = None
    size = _size(raw)
    if not isinstance(raw, dict):
        problem = "the result must be an object"
    elif size > RESULT_MAX_BYTES:
        problem = f"the result is {size} bytes of JSON, over the limit of {RESULT_MAX_BYTES}"
    else:
        for key, value in raw.items():
            spec = declared.get(key)
            if spec is None:
                problem = f"{key[:64]!r}{'...' if len(key) > 64 else ''} is not a result of {step}"
                break
            if not spec.accepts(value, job_id):
                shown = json.dumps(value)
                shown = shown if len(shown) <= 120 else shown[:120] + "..."
                need = spec.describe().replace("{job}", str(job_id))
                problem = f"{key} must be a {need}, got {shown}"
                break
    if problem is None:
        return dict(raw)
    keys = ", ".join(sorted(declared)) or "none"
    raise ResultInvalid(
        f"the result of step {step} was refused: {problem}. A {step} result may hold only "
        f"{keys} (docs/agent-protocol.md, 'Reporting'); the step stays running: report it "
        "again with a valid result, or upgrade nso-agent to the server's version",
        step=step,
        allowed={k: v.replace("{job}", str(job_id)) for k, v in allowed(step).items()},
    )


def failed_result(job_id: int, raw: Any) -> dict[str, Any]:
    """The declared keys of a failed report's result, of the declared types; nothing else."""
    if not isinstance(raw, dict):
        return {}
    return {
        key: raw[key]
        for key, spec in FAILURE.items()
        if key in raw and spec.accepts(raw[key], job_id)
    }


def checked_context(job_id: int, context: Any) -> dict[str, Any]:
    """The keys of a job's context that some step of job ``job_id`` may report, as that
    step may report them. A context stored before results were checked (by an older
    server) keeps only these, so no undeclared key and no escaping path in it reaches a
    later step, which reads its context as parameters (agent/steps/context.py)."""
    if not isinstance(context, dict):
        return {}
    return {
        key: value
        for key, value in context.items()
        if any(
            key in declared and declared[key].accepts(value, job_id)
            for declared in STEP_RESULTS.values()
        )
    }
