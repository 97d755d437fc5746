"""Artifact names are strict ASCII: no shell metacharacters hidden in an installer's version,
no look-alike Unicode, and one name per release (docs/artifact-formats.md, "File names")."""

from __future__ import annotations

import unicodedata

import pytest

from repo_server.catalog.filenames import ACCEPTED_FORMS, parse_filename
from repo_server.errors import InvalidFilename


def refused(filename: str) -> str:
    with pytest.raises(InvalidFilename) as caught:
        parse_filename(filename)
    error = caught.value
    assert error.to_dict()["error"]["code"] == "invalid_filename"
    assert error.details["accepted"] == list(ACCEPTED_FORMS)
    return error.message


@pytest.mark.parametrize(
    "filename",
    [
        "nso-6.2_$(reboot).linux.x86_64.installer.bin",
        "nso-6.2_`id`.linux.x86_64.installer.bin",
        "nso-6.2_x|y.linux.arm64.signed.bin",
        "nso-6.2_a;b.linux.x86_64.installer.bin",
        "nso-6.2_a&b.linux.x86_64.installer.bin",
        "nso-6.2_>x.linux.x86_64.installer.bin",
        "nso-6.2_*.linux.x86_64.installer.bin",
        "nso-6.2_'x'.linux.x86_64.installer.bin",
        "nso-6.2 .linux.x86_64.installer.bin",
        "nso- 6.2.linux.x86_64.installer.bin",
        "nso-6.2_.linux.x86_64.installer.bin",
        "nso-6.2__1.linux.x86_64.installer.bin",
        "nso-6.2_1_2.linux.x86_64.installer.bin",
        "nso-6.2!1.linux.x86_64.installer.bin",
        "nso-1!6.2.linux.x86_64.installer.bin",
        "nso-6.2+local.linux.x86_64.installer.bin",
    ],
)
def test_installer_version_has_no_shell_metacharacters(filename: str) -> None:
    message = refused(filename)
    assert "the installer's <VSN>" in message, message


@pytest.mark.parametrize(
    ("filename", "lookalike"),
    [
        ("nso-\uff16.2.linux.x86_64.installer.bin", "nso-6.2.linux.x86_64.installer.bin"),
        ("nso-6.2.linux.x86\uff3f64.installer.bin", "nso-6.2.linux.x86_64.installer.bin"),
        ("ncs-6.2-router-nc-1.0.2.tar.gz\u2024bin", "ncs-6.2-router-nc-1.0.2.tar.gz.bin"),
        ("ncs-6.2-\ufb01rewall-1.0.tar.gz", "ncs-6.2-firewall-1.0.tar.gz"),  # the fi ligature
        ("nso-6.2.1-patch-ps\u2460.tar.gz", "nso-6.2.1-patch-ps1.tar.gz"),  # circled one
    ],
)
def test_lookalike_unicode_is_refused_and_named(filename: str, lookalike: str) -> None:
    assert unicodedata.normalize("NFKC", filename) == lookalike
    message = refused(filename)
    assert f"looks like {lookalike!r}" in message, message
    assert "ASCII" in message


@pytest.mark.parametrize(
    "filename",
    [
        "ncs-6.2-r\u043euter-nc-1.0.2.tar.gz",  # Cyrillic o: NFKC keeps it, still not ASCII
        "nso-6.2_\u00e4.linux.x86_64.installer.bin",
        "nso-6.2.1-patch-caf\u00e9.tar.gz",
        "ncs-6.2-cisco-ios-6.88.3\u00e9.signed.bin",
    ],
)
def test_any_non_ascii_character_is_refused(filename: str) -> None:
    message = refused(filename)
    assert "ASCII" in message and "U+" in message, message


@pytest.mark.parametrize(
    "filename", ["ncs-6.2-router-nc-1.0.2+local.tar.gz", "ncs-6.2-router-nc-1.0.2~rc1.tar.gz"]
)
def test_package_remainder_is_what_every_agent_accepts(filename: str) -> None:
    """The agent refuses `+` and `~` in names and versions before they reach the NSO CLI; the
    catalog refuses them at upload rather than publish what no node will install."""
    assert "not a valid <name>-<version>" in refused(filename)


@pytest.mark.parametrize(
    ("filename", "vsn", "arch", "signed"),
    [
        ("nso-6.2.1.linux.x86_64.installer.bin", "6.2.1", "x86_64", False),
        ("nso-6.2.1_231120.linux.x86_64.installer.bin", "6.2.1", "x86_64", False),
        ("nso-6.2.linux.arm64.signed.bin", "6.2", "arm64", True),
        ("nso-5.0.20181016.1.linux.x86_64.installer.bin", "5.0.20181016.1", "x86_64", False),
        ("nso-6.3rc1.linux.x86_64.installer.bin", "6.3rc1", "x86_64", False),
    ],
)
def test_real_installer_names_still_parse(filename: str, vsn: str, arch: str, signed: bool):
    parsed = parse_filename(filename)
    assert (parsed.kind, str(parsed.nso_version), parsed.arch, parsed.signed) == (
        "installer",
        vsn,
        arch,
        signed,
    )
