from __future__ import annotations

import io
from pathlib import Path

import pytest

from repo_server.catalog.filenames import parse_filename
from repo_server.catalog.inspect import (
    ArchiveLimits,
    _Budget,
    inspect_artifact,
    inspect_installer,
    inspect_ned,
)
from repo_server.config import Settings
from repo_server.errors import InvalidArtifact, UnsafeArchive

from .archives import PackageSpec, PatchSpec, write_tar_gz
from .conftest import Build

INSTALLER = "nso-6.2.1.linux.x86_64.installer.bin"
SIGNED = "nso-6.2.1.linux.arm64.signed.bin"
NED = "ncs-6.2-cisco-ios-6.88.3.signed.bin"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_limits_from_settings() -> None:
    settings = Settings().with_overrides(
        tar_max_members=7, tar_max_unpacked_bytes=1234, tar_max_ratio=9
    )
    assert ArchiveLimits.from_settings(settings) == ArchiveLimits(7, 1234, 9)
    assert ArchiveLimits.from_settings(Settings()).max_members == 10_000


def test_installer(tmp_path: Path) -> None:
    path = write(tmp_path, INSTALLER, b"#!/bin/sh\nexit 0\n")
    assert inspect_installer(path, parse_filename(INSTALLER)) == {
        "arch": "x86_64",
        "signed": False,
    }


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(b"", "empty"), (b"\x7fELF...", "does not start with '#!'"), (b"#", "'#!'")],
)
def test_bad_installer(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = write(tmp_path, INSTALLER, data)
    with pytest.raises(InvalidArtifact, match=fragment):
        inspect_installer(path, parse_filename(INSTALLER))


def test_signed_installer_is_only_checked_for_content(tmp_path: Path) -> None:
    path = write(tmp_path, SIGNED, b"\x00binary signed bundle")
    assert inspect_installer(path, parse_filename(SIGNED))["signed"] is True
    with pytest.raises(InvalidArtifact, match="empty"):
        inspect_installer(write(tmp_path, SIGNED, b""), parse_filename(SIGNED))


def test_ned(tmp_path: Path) -> None:
    assert inspect_ned(write(tmp_path, NED, b"anything"), parse_filename(NED)) == {"signed": True}
    with pytest.raises(InvalidArtifact, match="NED is empty"):
        inspect_ned(write(tmp_path, NED, b""), parse_filename(NED))


def test_inspect_artifact_dispatches(tmp_path: Path, build: Build, limits: ArchiveLimits) -> None:
    installer = inspect_artifact(
        write(tmp_path, INSTALLER, b"#!/bin/sh\n"), parse_filename(INSTALLER), limits
    )
    assert installer == {"arch": "x86_64", "signed": False, "name": "nso", "version": "6.2.1"}

    ned = inspect_artifact(write(tmp_path, NED, b"x"), parse_filename(NED), limits)
    assert ned == {"signed": True, "name": "cisco-ios", "version": "6.88.3"}

    spec = PackageSpec()
    package = inspect_artifact(
        build(spec.filename, spec.members()), parse_filename(spec.filename), limits
    )
    assert (package["name"], package["version"]) == ("router-nc", "1.0.2")
    assert package["ned_ids"] == ["router-nc-1.0"]

    patch = PatchSpec()
    bundle = inspect_artifact(
        write_tar_gz(tmp_path / patch.filename, patch.members()),
        parse_filename(patch.filename),
        limits,
    )
    assert (bundle["name"], bundle["version"]) == ("ps1234", "6.2.1")
    assert bundle["modules"] == ["ncs_fix", "ncs_other_fix"]


def test_inspect_artifact_refuses_a_mislabelled_file(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    path = write(tmp_path, spec.filename, b"#!/bin/sh\nnot a tarball\n")
    with pytest.raises(InvalidArtifact, match="not a gzip file"):
        inspect_artifact(path, parse_filename(spec.filename), limits)


class Zeros(io.RawIOBase):
    """An endless stream: a bomb with no end at all."""

    def __init__(self) -> None:
        self.handed_out = 0

    def read(self, size: int = -1) -> bytes:
        size = 1 << 16 if size is None or size < 0 else size
        self.handed_out += size
        assert self.handed_out < 64 << 20, "the budget never stopped reading"
        return bytes(size)


@pytest.mark.parametrize(
    ("limits", "compressed", "bound"),
    [
        (ArchiveLimits(10, 3 << 20, 1000), 1 << 30, 3 << 20),  # size limit trips first
        (ArchiveLimits(10, 1 << 40, 100), 10_000, 100 * 10_000 + (1 << 20)),  # ratio first
    ],
)
def test_budget_stops_while_reading(limits: ArchiveLimits, compressed: int, bound: int) -> None:
    source = Zeros()
    budget = _Budget(source, limits, compressed)  # type: ignore[arg-type]
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        while True:
            budget.read(10240)
    # it gave up within one read of the limit, not after reading everything
    assert bound < source.handed_out <= bound + 10240
    with pytest.raises(UnsafeArchive):
        budget.read(-1)  # an unbounded read is capped, and still counted
