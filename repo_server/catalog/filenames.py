"""Recognise artifact file names: what kind of artifact, for which NSO release.

The file name is the first thing checked on upload and the only identity a NED or an
installer has, so it is parsed strictly and every rejection says what was wrong and which
forms are accepted (see docs/artifact-formats.md).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from repo_server.catalog.versions import NsoVersion
from repo_server.errors import InvalidFilename

KINDS = ("installer", "package", "ned", "patch")


def a_kind(kind: str) -> str:
    """The kind with its article, as a message says it: "an installer", "a package"."""
    return f"{'an' if kind[:1] and kind[0] in 'aeiou' else 'a'} {kind}"


ARCHES = ("x86_64", "arm64")
MAX_NAME_BYTES = 255  # the usual file-system limit for one path component

ACCEPTED_FORMS = (
    "installer: nso-<VSN>.linux.<arch>.installer.bin, e.g. nso-6.2.1.linux.x86_64.installer.bin",
    "signed installer: nso-<VSN>.linux.<arch>.signed.bin, e.g. nso-6.2.1.linux.arm64.signed.bin",
    "package: ncs-<VSN>-<name>-<version>.tar.gz, e.g. ncs-6.2-cisco-iosxr-cli-7.43-7.43.1.tar.gz",
    "NED: ncs-<VSN>-<ned>-<version>.signed.bin, e.g. ncs-6.2-cisco-ios-6.88.3.signed.bin",
    "patch bundle: nso-<VSN>-patch-<id>.tar.gz, e.g. nso-6.2.1-patch-ps1234.tar.gz",
)

# The NSO version in a package/NED name is the longest dotted number run followed by `-`;
# a greedy match plus the required `-` gives exactly that.
_VSN = r"[0-9]+(?:\.[0-9]+)+"
# What looks like an installer; its <VSN> is then held to _INSTALLER_VSN, so the message can
# say what is wrong with it.
_INSTALLER = re.compile(
    r"nso-(?P<vsn>[^-]+?)\.linux\.(?P<arch>[^.]+)\.(?P<form>installer|signed)\.bin"
)
# X.Y[.Z...], an optional PEP 440 tail (6.3rc1, 6.2.post1) and Cisco's `_<build>`: nothing a
# shell, a URL or a log line could read as anything but a version. The agent holds installer
# names to the same grammar (agent/trust.py).
_INSTALLER_VSN = re.compile(rf"{_VSN}(?:\.?[A-Za-z]+[0-9]*)*(?:_[A-Za-z0-9]+)?", re.ASCII)
_PATCH = re.compile(
    rf"nso-(?P<vsn>{_VSN})-patch-(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*)\.tar\.gz", re.ASCII
)
PATCH_ID_MAX = 128  # as patch_rollouts.patch_id stores it and the agent takes it
_NCS = re.compile(rf"ncs-(?P<vsn>{_VSN})-(?P<rest>.+?)(?P<suffix>\.tar\.gz|\.signed\.bin)")
# The agent puts <name>-<version> into NSO CLI commands and accepts only these characters.
_REMAINDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)


@dataclass(frozen=True)
class ParsedName:
    """What a file name says.

    `name`/`version` are the catalog identity as far as the name tells it:
    installer -> ("nso", VSN); package/NED -> `remainder` split at its last `-` (best
    effort: the package's own metadata is authoritative); patch -> (patch id, VSN).
    """

    kind: str
    nso_version: NsoVersion
    filename: str = ""
    arch: Optional[str] = None
    remainder: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    signed: bool = False  # a Cisco `.signed.bin` (installer or NED)


def _reject(filename: str, reason: str) -> InvalidFilename:
    forms = "; ".join(ACCEPTED_FORMS)
    return InvalidFilename(
        f"{reason}. Accepted file names: {forms}",
        filename=filename,
        accepted=list(ACCEPTED_FORMS),
    )


def _check_safe(filename: str) -> None:
    """Reject names that are unsafe anywhere a file name ends up (paths, logs, headers)."""
    if not filename:
        raise _reject(filename, "the file name is empty")
    try:
        size = len(filename.encode("utf-8"))
    except UnicodeEncodeError:
        raise _reject(filename, "the file name is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise _reject(filename, f"the file name is {size} bytes long, over {MAX_NAME_BYTES}")
    if "/" in filename or "\\" in filename:
        raise _reject(filename, "the file name contains a path separator: send the bare name")
    if ".." in filename:
        raise _reject(filename, "the file name contains '..'")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in filename):
        raise _reject(filename, "the file name contains NUL or control characters")
    if filename.startswith("."):
        raise _reject(filename, "the file name starts with a dot")
    if not filename.isascii():
        raise _reject(filename, _non_ascii(filename))


def _non_ascii(filename: str) -> str:
    """Why a non-ASCII name is refused, naming the look-alike it would pass for."""
    bad = next(ch for ch in filename if not ch.isascii())
    folded = unicodedata.normalize("NFKC", filename)
    looks = f"; it looks like {folded!r}" if folded.isascii() else ""
    return (
        f"the file name has the non-ASCII character {bad!r} (U+{ord(bad):04X}){looks}: artifact "
        "names are ASCII only, so that no name can pass for another; rename the file"
    )


def _vsn(filename: str, text: str) -> NsoVersion:
    try:
        return NsoVersion.parse(text)
    except ValueError as exc:
        raise _reject(filename, f"the NSO version in the file name is not valid: {exc}") from None


def _parse_installer(filename: str, m: re.Match[str]) -> ParsedName:
    text = m["vsn"]
    if not re.fullmatch(r"[A-Za-z0-9._]+", text, re.ASCII):
        raise _reject(
            filename,
            f"the installer's <VSN> {text!r} has characters other than ASCII letters, digits, "
            "'.' and '_' (a shell or a log would read them): rename the file",
        )
    vsn = _vsn(filename, text)
    if not _INSTALLER_VSN.fullmatch(text):
        raise _reject(
            filename,
            f"the installer's <VSN> {text!r} is not an NSO version: use X.Y[.Z...] with an "
            "optional _<build> of letters and digits, e.g. 6.2.1 or 6.2.1_231120",
        )
    arch = m["arch"]
    if arch not in ARCHES:
        raise _reject(
            filename, f"the installer architecture {arch!r} is not supported: use x86_64 or arm64"
        )
    return ParsedName(
        kind="installer",
        nso_version=vsn,
        filename=filename,
        arch=arch,
        name="nso",
        version=str(vsn),
        signed=m["form"] == "signed",
    )


def _parse_ncs(filename: str, m: re.Match[str]) -> ParsedName:
    kind = "package" if m["suffix"] == ".tar.gz" else "ned"
    rest = m["rest"]
    if not _REMAINDER.fullmatch(rest):
        raise _reject(
            filename,
            f"{rest!r} is not a valid <name>-<version>: use ASCII letters, digits and . _ -",
        )
    name, sep, version = rest.rpartition("-")
    if not sep or not name or not version:
        raise _reject(
            filename, f"expected <name>-<version> after 'ncs-{m['vsn']}-', found {rest!r}"
        )
    return ParsedName(
        kind=kind,
        nso_version=_vsn(filename, m["vsn"]),
        filename=filename,
        remainder=rest,
        name=name,
        version=version,
        signed=kind == "ned",
    )


def parse_filename(filename: str) -> ParsedName:
    """Parse an artifact file name or raise `InvalidFilename` saying what is accepted."""
    if not isinstance(filename, str):
        raise InvalidFilename(f"a file name must be a string, not {type(filename).__name__}")
    _check_safe(filename)
    m = _PATCH.fullmatch(filename)
    if m:
        if len(m["id"]) > PATCH_ID_MAX:
            raise InvalidFilename(
                f"the patch id in {filename!r} is {len(m['id'])} characters long: at most "
                f"{PATCH_ID_MAX} (agents refuse longer ones); rename the file with the id "
                "Cisco gave the patch"
            )
        vsn = _vsn(filename, m["vsn"])
        return ParsedName(
            kind="patch", nso_version=vsn, filename=filename, name=m["id"], version=str(vsn)
        )
    m = _INSTALLER.fullmatch(filename)
    if m:
        return _parse_installer(filename, m)
    m = _NCS.fullmatch(filename)
    if m:
        return _parse_ncs(filename, m)
    raise _reject(filename, _hint(filename))


def _hint(filename: str) -> str:
    """The most likely reason a name did not match, for the error message."""
    if filename.startswith("ncs-"):
        if not re.match(rf"ncs-{_VSN}-", filename):
            return f"{filename!r} does not start with ncs-<NSO version>-, e.g. ncs-6.2-"
        return f"{filename!r} does not end with .tar.gz (package) or .signed.bin (NED)"
    if filename.startswith("nso-"):
        if ".linux." not in filename and "-patch-" not in filename:
            return f"{filename!r} is neither an installer (.linux.<arch>.) nor a patch bundle"
        return f"{filename!r} is not a well-formed installer or patch bundle name"
    return f"{filename!r} does not start with nso- or ncs-"
