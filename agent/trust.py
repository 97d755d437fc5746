"""What the agent accepts from the server before it becomes a host path or NSO CLI text.

The agent runs as root; whoever speaks for the server (the server itself, its database, a
man in the middle) is not trusted to name files or to write commands. Every value a step
turns into a path or a command is first checked here against a strict ASCII grammar (the
catalog's own, docs/artifact-formats.md), and every path is resolved under the host root
and must stay inside it. A refusal is a ``StepFailed`` that names the value and says why;
nothing on the host has been touched when it is raised.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from agent import packages as pkgs
from agent.config import HostPaths
from agent.download import Artifact
from agent.errors import StepFailed

if TYPE_CHECKING:
    from agent.steps.context import StepContext

MAX_NAME = 128
MAX_FILENAME = 255  # the catalog's limit, one path component
# The catalog's NSO versions: X.Y[.Z...] and an optional PEP 440 tail (6.2rc1, 6.2.post1).
NSO_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)+(?:\.?[A-Za-z]+[0-9]*)*", re.ASCII)
PACKAGE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)
XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*", re.ASCII)
PACKAGE_FILE = re.compile(
    r"ncs-(?P<nso>[0-9]+(?:\.[0-9]+)+)-(?P<rest>[A-Za-z0-9][A-Za-z0-9_.-]*)\.tar\.gz", re.ASCII
)
INSTALLER_FILE = re.compile(
    rf"nso-(?P<vsn>{NSO_VERSION.pattern})(?:_[A-Za-z0-9]+)?"
    r"\.linux\.(?:x86_64|arm64)\.(?:installer|signed)\.bin",
    re.ASCII,
)
PACKAGE_FORM = "ncs-<X.Y>-<name>-<version>.tar.gz"
INSTALLER_FORM = "nso-<VSN>.linux.<x86_64|arm64>.installer.bin (or .signed.bin)"
WORD_RULE = "is ASCII letters, digits and _ . - (starting with a letter or digit)"


def refuse(what: str, value: object, why: str) -> StepFailed:
    return StepFailed(f"{what} {value!r} from the server is refused: {why}; nothing was done")


def matched(
    value: object, what: str, pattern: re.Pattern[str], rule: str, limit: int = MAX_NAME
) -> re.Match[str]:
    """``value`` matched whole by ``pattern``: text of at most ``limit`` characters, never
    with ``..``; else a refusal naming it and the ``rule``."""
    if not isinstance(value, str):
        raise refuse(what, value, f"expected text, got {type(value).__name__}")
    match = pattern.fullmatch(value) if len(value) <= limit and ".." not in value else None
    if match is None:
        raise refuse(what, value, rule)
    return match


def flag(params: dict[str, Any], name: str, default: bool = False) -> bool:
    """A yes/no parameter: a JSON ``true`` or ``false`` (absent or null: ``default``). Text
    such as ``"false"`` is refused, never read as yes: these flags allow data loss."""
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise refuse(name, value, "expected true or false")
    return value


def boolean(value: object, what: str) -> bool:
    """A required yes/no parameter: a JSON ``true`` or ``false``, nothing else."""
    if not isinstance(value, bool):
        raise refuse(what, value, "expected true or false")
    return value


HA_MODES = ("primary", "secondary")
# HA node ids (`ha-node n1`): NSO allows any string; ours are compared, never put into CLI
# text, but a plain grammar keeps messages and logs readable.
HA_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)


def ha_mode(value: object, what: str) -> str:
    """``primary`` or ``secondary``: the HA roles a step may ask for."""
    if value not in HA_MODES:
        raise refuse(what, value, f"expected one of {', '.join(HA_MODES)}")
    return str(value)


def ha_id(value: object, what: str) -> str:
    rule = "an HA node id is ASCII letters, digits and _ . - (e.g. n1)"
    return matched(value, what, HA_ID, rule)[0]


def ha_ids(params: dict[str, Any], key: str) -> list[str]:
    """``params[key]``: a list of HA node ids, each checked."""
    return [ha_id(v, f"{key}[{i}]") for i, v in enumerate(listed(params, key, "HA node ids"))]


MAX_SECONDS = 7 * 24 * 3600


def seconds(value: object, what: str, default: float) -> float:
    """A duration in seconds (absent or null: ``default``): a JSON number from 1 to a week.
    NaN, infinity, text or a huge number would make a wait never end, or never begin."""
    if value is None:
        return default
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 1 <= value <= MAX_SECONDS  # NaN compares false
    ):
        raise refuse(what, value, f"expected a number of seconds from 1 to {MAX_SECONDS}")
    return float(value)


def nso_version(value: object, what: str) -> str:
    """An NSO version as the catalog writes it (``6.2``, ``6.1.2``, ``5.0.20181016.1``)."""
    rule = "an NSO version is X.Y[.Z...] in ASCII digits, e.g. 6.2.1"
    return matched(value, what, NSO_VERSION, rule)[0]


def package_name(value: object, what: str) -> str:
    return matched(value, what, PACKAGE_WORD, f"a package name {WORD_RULE}")[0]


def package_version(value: object, what: str) -> str:
    return matched(value, what, PACKAGE_WORD, f"a package version {WORD_RULE}")[0]


def xml_name(value: object, what: str) -> str:
    return matched(value, what, XML_NAME, "an ncs.conf element name is an XML name, e.g. ssh")[0]


def package_file(value: object, what: str) -> re.Match[str]:
    """A package file name of the catalog's grammar: a plain ASCII name, never a path."""
    rule = f"package files are named {PACKAGE_FORM}"
    return matched(value, what, PACKAGE_FILE, rule, MAX_FILENAME)


def installer_file(value: object, what: str, target: Optional[str] = None) -> str:
    """An installer file name of the catalog's grammar, for ``target`` when given."""
    rule = f"installers are named {INSTALLER_FORM}"
    match = matched(value, what, INSTALLER_FILE, rule, MAX_FILENAME)
    if target is not None and match["vsn"] != target:
        raise refuse(what, value, f"it installs NSO {match['vsn']}, the step's target is {target}")
    return match[0]


def listed(params: dict[str, Any], key: str, of: str = "files") -> list[Any]:
    """``params[key]`` as a list (absent or null: empty); text or an object is refused, never
    taken apart into characters or keys."""
    value = params.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise refuse(key, value, f"expected a list of {of}")
    return value


def xml_names(params: dict[str, Any], key: str) -> list[str]:
    """``params[key]``: a list of ncs.conf element names, each checked."""
    return [xml_name(n, f"{key}[{i}]") for i, n in enumerate(listed(params, key, "names"))]


def artifact(data: object, what: str, check_name: Any) -> Artifact:
    """An artifact reference ({filename, sha256, size, url}), its file name checked by
    ``check_name(value, what)`` before anything else of it is used."""
    if not isinstance(data, dict):
        raise refuse(what, data, "expected {filename, sha256, size, url}")
    check_name(data.get("filename"), f"{what}.filename")
    return Artifact.from_params(data)


def package_artifacts(params: dict[str, Any], key: str = "packages") -> list[Artifact]:
    """``params[key]`` as artifacts, every file name checked first."""
    return [artifact(a, f"{key}[{i}]", package_file) for i, a in enumerate(listed(params, key))]


def installer_artifact(params: dict[str, Any], target: str) -> Artifact:
    return artifact(params.get("installer"), "installer", lambda v, w: installer_file(v, w, target))


def package_identity(data: object, what: str) -> tuple[str, Optional[str], Optional[str]]:
    """(filename, name, version) of one ``packages[]`` entry; name/version None when absent."""
    if not isinstance(data, dict):
        raise refuse(what, data, "expected {filename, name, version, ...}")
    filename = package_file(data.get("filename"), f"{what}.filename")[0]
    name, version = data.get("name"), data.get("version")
    if name is None and version is None:
        return filename, None, None
    return (
        filename,
        package_name(name, f"{what}.name"),
        package_version(version, f"{what}.version"),
    )


def staged_identity(paths: HostPaths, filename: str) -> tuple[str, str]:
    """(name, version) of a checked package file in ``/opt/ncs/packages``, from its own
    ``package-meta-data.xml`` (the file name when it has none), in the grammar and in
    agreement with its file name, as the catalog checked at upload."""
    match = package_file(filename, "package file")
    path = paths.package_store / filename
    try:
        meta = pkgs.read_meta(path)
    except pkgs.PackageMetaError as exc:
        raise StepFailed(f"{exc}; remove {paths.host_path(path)} and check the catalog") from None
    if meta is None:
        parsed = pkgs.PackageName.parse(filename)
        meta = (parsed.name, parsed.version) if parsed else (match["rest"], "")
    name, version = meta
    what = f"{paths.host_path(path)}: package-meta-data.xml"
    package_name(name, f"{what} name")
    package_version(version, f"{what} package-version")
    if f"{name}-{version}" != match["rest"]:
        raise StepFailed(
            f"{filename} is {name} {version} by its package-meta-data.xml, which its file name "
            "does not say: refused (the catalog checks this at upload; check the file)"
        )
    return name, version


def under_root(paths: HostPaths, value: object, what: str) -> Path:
    """A host path (``/var/opt/ncs/...``) resolved under the root, links followed; refused
    if it is not absolute or ends up outside the root."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise StepFailed(f"{what} {value!r} is not an absolute host path: refused")
    real = Path(os.path.realpath(paths.path(value)))
    root = Path(os.path.realpath(paths.root))
    if real != root and root not in real.parents:
        raise StepFailed(
            f"{what} {value!r} resolves to {real}, outside the host root {root}: refused; "
            "nothing was done"
        )
    return real


def checked_path(
    ctx: StepContext, name: str, pattern: str, base: str = "backups"
) -> Optional[Path]:
    """A path parameter (``restore_point``, ``extra_dir``...) resolved on the host, only if
    it is one the agent itself writes: under ``/var/opt/ncs/backups`` (``base="config"``:
    ``/etc/ncs``) and of the form ``pattern``. The agent renames, copies and restores from
    these folders as root: a value naming anything else is refused, not followed. None when
    the step has no such parameter."""
    value = ctx.param(name)
    if not value:
        return None
    paths = ctx.paths
    folder = paths.backups_dir if base == "backups" else paths.config_dir
    top = Path(os.path.realpath(folder))
    try:
        rel = str(under_root(paths, value, name).relative_to(top))
    except (StepFailed, ValueError):
        rel = ""
    if not rel or not re.fullmatch(pattern, rel, re.ASCII):
        raise StepFailed(
            f"{name} {value!r} is not a place this agent writes "
            f"({paths.host_path(folder)}/{pattern}): refused"
        )
    return top / rel
