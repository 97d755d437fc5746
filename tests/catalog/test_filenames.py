from __future__ import annotations

import dataclasses
import re

import pytest

from repo_server.catalog.filenames import ACCEPTED_FORMS, ParsedName, parse_filename
from repo_server.errors import InvalidFilename


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (
            "nso-6.2.1.linux.x86_64.installer.bin",
            dict(kind="installer", vsn="6.2.1", arch="x86_64", name="nso", version="6.2.1"),
        ),
        (
            "nso-6.2.linux.arm64.signed.bin",
            dict(kind="installer", vsn="6.2", arch="arm64", signed=True),
        ),
        (
            "nso-5.0.20181016.1.linux.x86_64.installer.bin",
            dict(kind="installer", vsn="5.0.20181016.1", version="5.0.20181016.1"),
        ),
        ("nso-6.2.1_231120.linux.x86_64.installer.bin", dict(kind="installer", vsn="6.2.1")),
        (
            "ncs-6.2-router-nc-1.0.2.tar.gz",
            dict(
                kind="package",
                vsn="6.2",
                remainder="router-nc-1.0.2",
                name="router-nc",
                version="1.0.2",
                arch=None,
                signed=False,
            ),
        ),
        (
            "ncs-6.2-cisco-iosxr-cli-7.43-7.43.1.tar.gz",
            dict(
                kind="package",
                vsn="6.2",
                remainder="cisco-iosxr-cli-7.43-7.43.1",
                name="cisco-iosxr-cli-7.43",
                version="7.43.1",
            ),
        ),
        (
            "ncs-6.7.1-tailf-hcc-6.0.8.tar.gz",
            dict(kind="package", vsn="6.7.1", name="tailf-hcc", version="6.0.8"),
        ),
        (
            "ncs-5.5.2.6-my_pkg-2-1.0.tar.gz",
            dict(kind="package", vsn="5.5.2.6", remainder="my_pkg-2-1.0", name="my_pkg-2"),
        ),
        (
            "ncs-6.2-cisco-ios-6.88.3.signed.bin",
            dict(
                kind="ned",
                vsn="6.2",
                remainder="cisco-ios-6.88.3",
                name="cisco-ios",
                version="6.88.3",
                signed=True,
            ),
        ),
        (
            "nso-6.2.1-patch-ps1234.tar.gz",
            dict(kind="patch", vsn="6.2.1", name="ps1234", version="6.2.1", remainder=None),
        ),
        ("nso-6.2-patch-CSC_wx.12-a.tar.gz", dict(kind="patch", name="CSC_wx.12-a")),
    ],
)
def test_accepted_forms(filename: str, expected: dict[str, object]) -> None:
    parsed = parse_filename(filename)
    assert parsed.filename == filename
    for key, value in expected.items():
        if key == "vsn":
            assert str(parsed.nso_version) == value
        else:
            assert getattr(parsed, key) == value, key


def test_parsed_name_is_frozen() -> None:
    parsed = parse_filename("ncs-6.2-router-nc-1.0.2.tar.gz")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.kind = "ned"  # type: ignore[misc]
    assert isinstance(parsed, ParsedName)


def test_every_advertised_example_parses_to_its_kind() -> None:
    kinds = {
        "installer": "installer",
        "signed installer": "installer",
        "package": "package",
        "NED": "ned",
        "patch bundle": "patch",
    }
    for form in ACCEPTED_FORMS:
        label, _, rest = form.partition(":")
        example = rest.rsplit("e.g. ", 1)[1]
        assert parse_filename(example).kind == kinds[label]


@pytest.mark.parametrize(
    ("filename", "fragment"),
    [
        ("", "empty"),
        ("dir/ncs-6.2-a-1.tar.gz", "path separator"),
        ("..\\ncs-6.2-a-1.tar.gz", "path separator"),
        ("ncs-6.2-a..b-1.tar.gz", "'..'"),
        ("..", "'..'"),
        ("ncs-6.2-a-1.tar.gz\x00.bin", "control"),
        ("ncs-6.2-a-1\n.tar.gz", "control"),
        ("ncs-6.2-a\u202e-1.tar.gz", "control"),  # right-to-left override
        (".ncs-6.2-a-1.tar.gz", "starts with a dot"),
        ("ncs-6.2-" + "a" * 240 + "-1.0.tar.gz", "over 255"),
        ("ncs-6.2-" + "é" * 120 + "-1.0.tar.gz", "over 255"),  # 255 chars, more bytes
        ("ncs-6.2-a-1.tar.gz\udcff", "not valid UTF-8"),
        ("nso-6.2.linux.i386.installer.bin", "'i386' is not supported"),
        ("nso-6.2.linux.aarch64.signed.bin", "use x86_64 or arm64"),
        ("nso-6.2.darwin.x86_64.installer.bin", "neither an installer"),
        ("nso-six.linux.x86_64.installer.bin", "NSO version in the file name is not valid"),
        ("nso-6.linux.x86_64.installer.bin", "at least X.Y"),
        ("nso-6.2.linux.x86_64.installer.bin.exe", "not a well-formed"),
        ("ncs-6.2-router.tar.gz", "expected <name>-<version>"),
        ("ncs-6.2-router-.tar.gz", "expected <name>-<version>"),
        ("ncs-6.2--1.0.tar.gz", "not a valid <name>-<version>"),
        ("ncs-6.2-router nc-1.0.tar.gz", "not a valid <name>-<version>"),
        ("ncs-6.2.x-router-1.0.tar.gz", "does not start with ncs-<NSO version>-"),
        ("ncs-router-1.0.tar.gz", "does not start with ncs-<NSO version>-"),
        ("ncs-6-router-1.0.tar.gz", "does not start with ncs-<NSO version>-"),
        ("ncs-6.2-router-1.0.zip", "does not end with .tar.gz"),
        ("ncs-6.2-router-1.0.tgz", "does not end with .tar.gz"),
        ("router-nc-1.0.2.tar.gz", "does not start with nso- or ncs-"),
        ("nso-6.2-patch-.tar.gz", "not a well-formed"),
        ("nso-6.2-patch-_x.tar.gz", "not a well-formed"),
        ("nso-6.2-patch-x.beam", "not a well-formed"),
    ],
)
def test_rejections_say_what_was_wrong(filename: str, fragment: str) -> None:
    with pytest.raises(InvalidFilename) as caught:
        parse_filename(filename)
    error = caught.value
    assert fragment in error.message
    # every rejection lists the accepted forms, with an example each
    assert error.details["accepted"] == list(ACCEPTED_FORMS)
    assert all(form in error.message for form in ACCEPTED_FORMS)
    assert error.to_dict()["error"]["code"] == "invalid_filename"


def test_name_of_exactly_255_bytes_is_accepted() -> None:
    filler = "a" * (255 - len("ncs-6.2--1.0.tar.gz"))
    name = f"ncs-6.2-{filler}-1.0.tar.gz"
    assert len(name.encode()) == 255
    assert parse_filename(name).name == filler


def test_rejects_non_string() -> None:
    with pytest.raises(InvalidFilename, match="must be a string"):
        parse_filename(b"ncs-6.2-a-1.tar.gz")  # type: ignore[arg-type]


def test_vsn_is_the_longest_leading_dotted_run() -> None:
    parsed = parse_filename("ncs-6.2.1-2.0-pkg-1.tar.gz")
    assert str(parsed.nso_version) == "6.2.1"
    assert parsed.remainder == "2.0-pkg-1"
    assert re.fullmatch(r"[\w.-]+", parsed.remainder or "")
