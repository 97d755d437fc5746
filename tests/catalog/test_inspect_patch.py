from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from repo_server.catalog.filenames import parse_filename
from repo_server.catalog.inspect import ArchiveLimits, PatchMeta, inspect_patch_bundle
from repo_server.errors import InvalidArtifact, UnsafeArchive

from .archives import Member, PatchSpec, beam, directory, hardlink, symlink
from .conftest import Build


def inspect(path: Path, spec: PatchSpec, limits: ArchiveLimits) -> PatchMeta:
    return inspect_patch_bundle(path, parse_filename(spec.filename), limits)


def test_good_bundle(build: Build, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    meta = inspect(build(spec.filename, spec.members()), spec, limits)
    assert meta.patch_id == "ps1234" and meta.nso_version == "6.2.1"
    assert meta.modules == ["ncs_fix", "ncs_other_fix"]
    assert meta.readme is not None and meta.readme.startswith("Fixes CSCxx12345 —")
    assert meta.to_json() == {
        "patch_id": "ps1234",
        "nso_version": "6.2.1",
        "modules": ["ncs_fix", "ncs_other_fix"],
        "readme": meta.readme,
    }


def test_bundle_made_with_tar_dash_c_dot(build: Build, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    members = [directory("./")] + [Member("./" + m.name, m.data) for m in spec.members()]
    assert inspect(build(spec.filename, members), spec, limits).modules == [
        "ncs_fix",
        "ncs_other_fix",
    ]


def test_readme_is_optional(build: Build, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    meta = inspect(build(spec.filename, [Member("m.beam", beam())]), spec, limits)
    assert meta.modules == ["m"] and meta.readme is None


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (Member("bad.beam", b"FOR1\x00\x00\x00\x04JUNK"), "no FOR1...BEAM header"),
        (Member("bad.beam", b"\x7fELF" + b"\x00" * 100), "no FOR1...BEAM header"),
        (Member("short.beam", b"FOR1"), "no FOR1...BEAM header"),
        (Member("empty.beam", b""), "no FOR1...BEAM header"),
        (Member("cut.beam", beam(b"x" * 100)[:60]), "truncated"),
        (Member("zero.beam", b"FOR1\x00\x00\x00\x00BEAM"), "truncated"),
        (Member("sub/fix.beam", beam()), "nested in a folder"),
        (directory("sub"), "is a folder"),
        (Member("Fix.beam", beam()), "not allowed"),
        (Member("1fix.beam", beam()), "not allowed"),
        (Member("fix-2.beam", beam()), "not allowed"),
        (Member(".beam", beam()), "not allowed"),
        (Member("fix.erl", b"-module(fix)."), "not allowed"),
        (Member("readme", b"lower case"), "not allowed"),
        (Member("ncs_fix.beam", beam()), "appears twice"),
        (symlink("link.beam", "ncs_fix.beam"), "is a link"),
        (hardlink("hard.beam", "ncs_fix.beam"), "is a link"),
    ],
)
def test_bad_members(build: Build, limits: ArchiveLimits, extra: Member, fragment: str) -> None:
    spec = PatchSpec()
    with pytest.raises(InvalidArtifact, match=fragment) as caught:
        inspect(build(spec.filename, [*spec.members(), extra]), spec, limits)
    assert not isinstance(caught.value, UnsafeArchive)
    assert caught.value.details.get("member", "").lstrip("./") in extra.name


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (Member("/tmp/x.beam", beam()), "absolute path"),
        (Member("../x.beam", beam()), "'..'"),
        (Member("pipe", type=tarfile.FIFOTYPE), "FIFO"),
        (Member("null", type=tarfile.CHRTYPE), "character device"),
    ],
)
def test_unsafe_members(build: Build, limits: ArchiveLimits, extra: Member, fragment: str) -> None:
    spec = PatchSpec()
    with pytest.raises(UnsafeArchive, match=fragment):
        inspect(build(spec.filename, [*spec.members(), extra]), spec, limits)


def test_no_beams(build: Build, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    with pytest.raises(InvalidArtifact, match=r"no \.beam files"):
        inspect(build(spec.filename, [Member("README", b"nothing here")]), spec, limits)
    with pytest.raises(InvalidArtifact, match=r"no \.beam files"):
        inspect(build(spec.filename, []), spec, limits)


def test_duplicate_readme(build: Build, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    with pytest.raises(InvalidArtifact, match="'README' appears twice"):
        inspect(build(spec.filename, [*spec.members(), Member("./README", b"x")]), spec, limits)


def test_readme_must_be_small_utf8(build: Build, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    bad = [Member("a.beam", beam()), Member("README", b"\xff\xfe\x00latin")]
    with pytest.raises(InvalidArtifact, match="not UTF-8"):
        inspect(build(spec.filename, bad), spec, limits)
    big = [Member("a.beam", beam()), Member("README", b"x" * (64 * 1024 + 1))]
    with pytest.raises(InvalidArtifact, match="README is 65537 bytes"):
        inspect(build(spec.filename, big), spec, limits)
    exact = [Member("a.beam", beam()), Member("README", b"x" * (64 * 1024))]
    assert len(inspect(build(spec.filename, exact), spec, limits).readme or "") == 64 * 1024


def test_bundle_limits(build: Build) -> None:
    spec = PatchSpec()
    many = [Member(f"m{i}.beam", beam()) for i in range(6)]
    tight = ArchiveLimits(max_members=5, max_unpacked_bytes=1 << 30, max_ratio=1000)
    with pytest.raises(UnsafeArchive, match="more than 5 members"):
        inspect(build(spec.filename, many), spec, tight)
    bomb = [Member("a.beam", beam(bytes(8 << 20)))]
    small = ArchiveLimits(max_members=5, max_unpacked_bytes=1 << 20, max_ratio=1000)
    with pytest.raises(UnsafeArchive, match="NSO_REPO_TAR_MAX_UNPACKED_SIZE"):
        inspect(build(spec.filename, bomb), spec, small)


def test_not_gzip(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PatchSpec()
    path = tmp_path / spec.filename
    path.write_bytes(beam())
    with pytest.raises(InvalidArtifact, match="not a gzip file"):
        inspect(path, spec, limits)
