from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from repo_server.catalog.filenames import parse_filename
from repo_server.catalog.inspect import ArchiveLimits, PackageMeta, inspect_package
from repo_server.errors import InvalidArtifact, MetadataMismatch, UnsafeArchive

from .archives import (
    NS,
    Member,
    PackageSpec,
    directory,
    hardlink,
    meta_xml,
    symlink,
    tar_bytes,
)
from .conftest import Build


def inspect(path: Path, spec: PackageSpec, limits: ArchiveLimits) -> PackageMeta:
    return inspect_package(path, parse_filename(spec.filename), limits)


def build_with(build: Build, spec: PackageSpec, *extra: Member) -> Path:
    return build(spec.filename, [*spec.members(), *extra])


# ------------------------------------------------------------------------------ good


def test_good_package_metadata(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    meta = inspect(build_with(build, spec), spec, limits)
    assert (meta.name, meta.version) == ("router-nc", "1.0.2")
    assert meta.description == "Router NETCONF NED"
    assert meta.ncs_min_versions == ["6.2"] and meta.ncs_max_versions == []
    assert meta.required_packages == [
        {"name": "resource-manager", "min_version": "4.2", "max_version": None}
    ]
    assert meta.ned_ids == ["router-nc-1.0"]
    assert meta.components == [
        {"name": "router", "type": "ned"},
        {"name": "upgrade", "type": "upgrade"},
    ]
    assert meta.top_folder == "router-nc"
    data = meta.to_json()
    assert data["name"] == "router-nc" and data["ned_ids"] == ["router-nc-1.0"]


def test_dashes_and_digits_in_package_name(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec(
        name="cisco-iosxr-cli-7.43",
        version="7.43.1",
        top="cisco-iosxr-cli-7.43",
        meta=meta_xml("cisco-iosxr-cli-7.43", "7.43.1", min_versions=("6.0",)),
    )
    meta = inspect(build_with(build, spec), spec, limits)
    assert meta.name == "cisco-iosxr-cli-7.43"


def test_full_version_prefix(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec(
        name="tailf-hcc",
        version="6.0.8",
        nso="6.7.1",
        top="tailf-hcc",
        meta=meta_xml("tailf-hcc", "6.0.8", min_versions=("6.7.1",), max_versions=("6.7.1.9",)),
    )
    assert inspect(build_with(build, spec), spec, limits).ncs_max_versions == ["6.7.1.9"]


def test_no_namespace_and_dot_slash_prefix_are_tolerated(
    build: Build, limits: ArchiveLimits
) -> None:
    spec = PackageSpec(meta=meta_xml(namespace=None))
    members = [Member("./", type=tarfile.DIRTYPE)]
    for member in spec.members():
        member.name = "./" + member.name
        if member.type == tarfile.LNKTYPE:
            member.linkname = "./" + member.linkname
        members.append(member)
    meta = inspect(build(spec.filename, members), spec, limits)
    assert meta.name == "router-nc" and meta.ned_ids == ["router-nc-1.0"]


def test_ned_ids_from_every_ned_type(build: Build, limits: ArchiveLimits) -> None:
    body = """
      <name>multi</name><package-version>2.0</package-version>
      <component><name>a</name><ned><cli><ned-id xmlns:id="x">id:cisco-ios-cli-6.88</ned-id>
        </cli></ned></component>
      <component><name>b</name><ned><netconf><ned-id>router-nc-1.0</ned-id></netconf></ned>
      </component>
      <component><name>c</name><ned><generic><ned-id>gen-1.0</ned-id></generic></ned></component>
      <component><name>d</name><ned><snmp><ned-id>p:snmp-1.0</ned-id></snmp></ned></component>
      <component><name>e</name><callback><java-class-name>x</java-class-name></callback>
      </component>
      <component><name>f</name><ned><cli><ned-id>cisco-ios-cli-6.88</ned-id></cli></ned>
      </component>
      <other xmlns="urn:elsewhere"><ned-id>ignored-1.0</ned-id></other>
      <ncs-min-version>6.2</ncs-min-version>
    """
    spec = PackageSpec(name="multi", version="2.0", top="multi", meta=meta_xml(body=body))
    meta = inspect(build_with(build, spec), spec, limits)
    assert meta.ned_ids == ["cisco-ios-cli-6.88", "router-nc-1.0", "gen-1.0", "snmp-1.0"]
    assert [c["type"] for c in meta.components] == ["ned"] * 4 + ["callback", "ned"]
    assert NS not in str(meta.to_json())


# ---------------------------------------------------------------------- not a package


def test_not_gzip(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    path = tmp_path / spec.filename
    path.write_bytes(tar_bytes(spec.members()))  # an uncompressed tar
    with pytest.raises(InvalidArtifact, match="not a gzip file"):
        inspect(path, spec, limits)
    path.write_bytes(b"")
    with pytest.raises(InvalidArtifact, match="not a gzip file"):
        inspect(path, spec, limits)


def test_gzip_of_something_else(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    path = tmp_path / spec.filename
    path.write_bytes(gzip.compress(b"hello, not a tar" * 100))
    with pytest.raises(InvalidArtifact, match="not a valid tar"):
        inspect(path, spec, limits)


def test_corrupt_gzip(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    data = bytearray(gzip.compress(tar_bytes(spec.members())))
    data[-8] ^= 0xFF  # the CRC in the trailer
    path = tmp_path / spec.filename
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidArtifact, match="not a valid gzip"):
        inspect(path, spec, limits)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95, -4])
def test_truncated_gzip(tmp_path: Path, limits: ArchiveLimits, keep: float) -> None:
    spec = PackageSpec()
    data = gzip.compress(tar_bytes([*spec.members(), Member("router-nc/big", os.urandom(50_000))]))
    cut = int(len(data) * keep) if keep > 0 else len(data) + int(keep)
    path = tmp_path / spec.filename
    path.write_bytes(data[:cut])
    with pytest.raises(InvalidArtifact, match="truncated") as caught:
        inspect(path, spec, limits)
    assert not isinstance(caught.value, UnsafeArchive)


def _blocks(data: bytes) -> list[int]:
    """Offsets of the member headers in a tar (to cut it at member boundaries)."""
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offsets = [info.offset for info in tar]
    return offsets


def test_tar_truncated_at_a_member_boundary(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    raw = tar_bytes(spec.members())
    last_header = _blocks(raw)[-1]
    path = tmp_path / spec.filename
    # Everything but the last member and the end-of-archive blocks; the gzip itself is fine.
    path.write_bytes(gzip.compress(raw[:last_header]))
    with pytest.raises(InvalidArtifact, match="truncated"):
        inspect(path, spec, limits)


def test_tar_truncated_inside_member_data(tmp_path: Path, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [*spec.members(), Member("router-nc/zz-big", b"x" * 20_000)]
    raw = tar_bytes(members)
    path = tmp_path / spec.filename
    path.write_bytes(gzip.compress(raw[: _blocks(raw)[-1] + 512 + 5000]))
    with pytest.raises(InvalidArtifact, match="truncated: a member's data ends early"):
        inspect(path, spec, limits)


def test_corrupt_header_in_the_middle_is_not_silently_ignored(
    tmp_path: Path, limits: ArchiveLimits
) -> None:
    spec = PackageSpec()
    raw = bytearray(tar_bytes(spec.members()))
    third = _blocks(bytes(raw))[2]
    raw[third : third + 512] = b"\x01" * 512  # tarfile just stops at an invalid header
    path = tmp_path / spec.filename
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InvalidArtifact, match="truncated or corrupt"):
        inspect(path, spec, limits)


def test_empty_archive(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    with pytest.raises(InvalidArtifact, match="empty"):
        inspect(build(spec.filename, []), spec, limits)


# --------------------------------------------------------------------------- unsafe


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (Member("/etc/passwd", b"x"), "absolute path"),
        (Member("router-nc/../../evil", b"x"), "'..'"),
        (Member("router-nc/sub/../../x", b"x"), "'..'"),
        (Member("router-nc\\..\\evil", b"x"), "backslash"),
        (Member("router-nc/a\nb", b"x"), "control character"),
        (symlink("router-nc/up", "../../etc/passwd"), "outside the package folder"),
        (symlink("router-nc/up", ".."), "outside the package folder"),
        (symlink("router-nc/abs", "/etc/passwd"), "absolute path"),
        (symlink("router-nc/load-dir/x", "../../other/x"), "outside the package folder"),
        (hardlink("router-nc/h", "/etc/passwd"), "not a safe path"),
        (hardlink("router-nc/h", "router-nc/../../etc/passwd"), "not a safe path"),
        (hardlink("router-nc/h", "etc/passwd"), "outside the package folder"),
        (Member("router-nc/tty", type=tarfile.CHRTYPE), "character device"),
        (Member("router-nc/sda", type=tarfile.BLKTYPE), "block device"),
        (Member("router-nc/pipe", type=tarfile.FIFOTYPE), "FIFO"),
        (Member("router-nc/odd", type=b"Z"), "tar type"),
        (Member(".", b"a file posing as the root"), "archive root"),
        (Member("./", type=tarfile.SYMTYPE, linkname="/"), "archive root"),
        (symlink("router-nc/l", "a\\b"), "in its target"),
        (hardlink("router-nc/h", "router-nc/a\nb"), "in its target"),
    ],
)
def test_unsafe_members(build: Build, limits: ArchiveLimits, member: Member, fragment: str) -> None:
    spec = PackageSpec()
    with pytest.raises(UnsafeArchive, match=fragment) as caught:
        inspect(build_with(build, spec, member), spec, limits)
    assert caught.value.code == "unsafe_archive"


def test_nul_in_a_pax_member_name(tmp_path: Path, limits: ArchiveLimits) -> None:
    # tarfile cannot write a NUL in a name, so write a pax path record and patch it.
    spec = PackageSpec()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in spec.members():
            tar.addfile(member.tarinfo(), io.BytesIO(member.data) if member.data else None)
        info = tarfile.TarInfo("router-nc/aXb")
        info.pax_headers = {"path": "router-nc/aXb"}
        tar.addfile(info)
    raw = buffer.getvalue()
    assert raw.count(b"router-nc/aXb\n") == 1  # the pax record, not the ustar header
    path = tmp_path / spec.filename
    path.write_bytes(gzip.compress(raw.replace(b"router-nc/aXb\n", b"router-nc/a\x00b\n")))
    with pytest.raises(UnsafeArchive, match="NUL"):
        inspect(path, spec, limits)


def test_symlink_escaping_through_another_symlink(build: Build, limits: ArchiveLimits) -> None:
    # Each target looks harmless on its own: `d` points at the package folder and `l` at
    # `d/../x`, which reads like router-nc/sub/x but really is <root>/x once `d` is followed.
    spec = PackageSpec()
    members = [
        directory("router-nc/sub"),
        symlink("router-nc/sub/l", "d/../x"),  # before the link it depends on
        symlink("router-nc/sub/d", ".."),
    ]
    with pytest.raises(UnsafeArchive, match=r"'router-nc/sub/l'"):
        inspect(build_with(build, spec, *members), spec, limits)


def test_hardlink_through_an_escaping_symlink(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [symlink("router-nc/out", "../.."), hardlink("router-nc/h", "router-nc/out/x")]
    with pytest.raises(UnsafeArchive, match="outside the package folder"):
        inspect(build_with(build, spec, *members), spec, limits)


def test_symlink_loop_is_refused(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [symlink("router-nc/a", "b"), symlink("router-nc/b", "a")]
    with pytest.raises(UnsafeArchive, match="router-nc/a"):
        inspect(build_with(build, spec, *members), spec, limits)


def test_links_inside_the_package_are_fine(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [
        symlink("router-nc/self", "."),
        symlink("router-nc/load-dir/via", "../self/load-dir/router.fxs"),
        symlink("router-nc/load-dir/back-in", "../../router-nc/python"),
        hardlink("router-nc/h2", "router-nc/self/load-dir/router.fxs"),
    ]
    assert inspect(build_with(build, spec, *members), spec, limits).name == "router-nc"


def test_too_many_members(build: Build) -> None:
    spec = PackageSpec()
    members = spec.members() + [Member(f"router-nc/f{i}", b"x") for i in range(5)]
    tight = ArchiveLimits(max_members=len(members) - 1, max_unpacked_bytes=1 << 30, max_ratio=1000)
    with pytest.raises(UnsafeArchive, match="more than 12 members"):
        inspect(build(spec.filename, members), spec, tight)
    exact = ArchiveLimits(max_members=len(members), max_unpacked_bytes=1 << 30, max_ratio=1000)
    assert inspect(build(spec.filename, members), spec, exact).name == "router-nc"


def test_decompression_bomb_by_ratio(build: Build) -> None:
    spec = PackageSpec()
    bomb = Member("router-nc/zeros", bytes(8 << 20))  # 8 MiB of zeros -> ~8 KiB compressed
    path = build_with(build, spec, bomb)
    assert path.stat().st_size < 64 << 10
    limits = ArchiveLimits(max_members=100, max_unpacked_bytes=1 << 30, max_ratio=50)
    with pytest.raises(UnsafeArchive, match="NSO_REPO_TAR_MAX_RATIO"):
        inspect(path, spec, limits)
    # the same archive is fine when the ratio allows it
    relaxed = ArchiveLimits(max_members=100, max_unpacked_bytes=1 << 30, max_ratio=5000)
    assert inspect(path, spec, relaxed).name == "router-nc"


def test_decompression_bomb_by_size(build: Build) -> None:
    spec = PackageSpec()
    path = build_with(build, spec, Member("router-nc/noise", os.urandom(3 << 20)))
    limits = ArchiveLimits(max_members=100, max_unpacked_bytes=2 << 20, max_ratio=200)
    with pytest.raises(UnsafeArchive, match="NSO_REPO_TAR_MAX_UNPACKED_SIZE"):
        inspect(path, spec, limits)


def test_huge_pax_header_is_refused_before_it_is_read(
    tmp_path: Path, limits: ArchiveLimits
) -> None:
    spec = PackageSpec()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("router-nc/x")
        info.pax_headers = {"comment": "y" * (2 << 20)}
        tar.addfile(info)
    path = tmp_path / spec.filename
    path.write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(UnsafeArchive, match="extended header"):
        inspect(path, spec, limits)


# ------------------------------------------------------------------------- layout


def test_two_top_folders(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    with pytest.raises(InvalidArtifact, match="more than one top-level folder") as caught:
        inspect(build_with(build, spec, Member("other/file", b"x")), spec, limits)
    assert "router-nc, other" in caught.value.message


def test_file_at_top_level(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [Member("router-nc", b"i am a file, not a folder")]
    with pytest.raises(InvalidArtifact, match="file at the top level"):
        inspect(build(spec.filename, members), spec, limits)


def test_duplicate_member(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    dup = Member("router-nc/package-meta-data.xml", meta_xml(version="9.9"))
    with pytest.raises(InvalidArtifact, match="appears twice"):
        inspect(build_with(build, spec, dup), spec, limits)


def test_missing_metadata(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [m for m in spec.members() if not m.name.endswith("package-meta-data.xml")]
    members.append(Member("router-nc/src/package-meta-data.xml", spec.meta))
    with pytest.raises(InvalidArtifact, match="missing") as caught:
        inspect(build(spec.filename, members), spec, limits)
    message = caught.value.message
    assert "router-nc/package-meta-data.xml" in message
    assert "found router-nc/src/package-meta-data.xml instead" in message
    assert caught.value.details["expected"] == "router-nc/package-meta-data.xml"


def test_metadata_must_be_a_regular_file(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [m for m in spec.members() if not m.name.endswith("package-meta-data.xml")]
    members += [
        Member("router-nc/real.xml", spec.meta),
        symlink("router-nc/package-meta-data.xml", "real.xml"),
    ]
    with pytest.raises(InvalidArtifact, match="must be a regular file"):
        inspect(build(spec.filename, members), spec, limits)


def test_metadata_too_large(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec(meta=meta_xml() + b"<!--" + b"x" * (1 << 20) + b"-->")
    with pytest.raises(InvalidArtifact, match="over the 1048576 limit"):
        inspect(build_with(build, spec), spec, limits)


# ----------------------------------------------------------------------- metadata

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<ncs-package xmlns="http://tail-f.com/ns/ncs-packages"><name>&lol9;</name>
<package-version>1.0.2</package-version></ncs-package>
"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ncs-package><name>&xxe;</name><package-version>1.0.2</package-version></ncs-package>
"""


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        (BILLION_LAUGHS, "not allowed"),
        (EXTERNAL_ENTITY, "not allowed"),
        (b"<ncs-package><name>router-nc</name>", "not well-formed"),
        (b"", "not well-formed"),
        (b"\xff\xfe garbage", "not well-formed"),
        (b"<package><name>router-nc</name></package>", "root element"),
        (b'<ncs-package xmlns="urn:other"><name>x</name></ncs-package>', "root element"),
        (meta_xml(body="<package-version>1.0.2</package-version>"), "no <name>"),
        (meta_xml(body="<name>router-nc</name>"), "no <package-version>"),
        (meta_xml(body="<name> </name><package-version>1</package-version>"), "no <name>"),
        (meta_xml(min_versions=("six",)), "bad ncs-min-version"),
        (meta_xml(max_versions=("7.x",)), "bad ncs-max-version"),
        (meta_xml(min_versions=("",)), "bad ncs-min-version"),
    ],
    ids=[
        "billion-laughs",
        "external-entity",
        "unclosed",
        "empty",
        "binary",
        "wrong-root",
        "wrong-namespace",
        "no-name",
        "no-version",
        "blank-name",
        "bad-min",
        "bad-max",
        "empty-min",
    ],
)
def test_bad_metadata(build: Build, limits: ArchiveLimits, meta: bytes, fragment: str) -> None:
    spec = PackageSpec(meta=meta)
    with pytest.raises(InvalidArtifact, match=fragment) as caught:
        inspect(build_with(build, spec), spec, limits)
    assert not isinstance(caught.value, (UnsafeArchive, MetadataMismatch))


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (meta_xml("router-nc", "1.0.3"), "ncs-6.2-router-nc-1.0.3.tar.gz"),
        (meta_xml("other-ned", "1.0.2"), "ncs-6.2-other-ned-1.0.2.tar.gz"),
        (meta_xml("router-nc-1.0.2", "1"), "ncs-6.2-router-nc-1.0.2-1.tar.gz"),
    ],
    ids=["version", "name", "split"],
)
def test_name_version_mismatch(
    build: Build, limits: ArchiveLimits, meta: bytes, expected: str
) -> None:
    spec = PackageSpec(meta=meta)
    with pytest.raises(MetadataMismatch) as caught:
        inspect(build_with(build, spec), spec, limits)
    message = caught.value.message
    assert "the file name says 'router-nc-1.0.2' but package-meta-data.xml says" in message
    assert f"rename the file to {expected}" in message
    assert caught.value.code == "metadata_mismatch"


def test_name_version_compared_as_one_string(build: Build, limits: ArchiveLimits) -> None:
    # The file name cannot say where the name ends when the version has a dash.
    spec = PackageSpec(meta=meta_xml("router", "nc-1.0.2"))
    assert inspect(build_with(build, spec), spec, limits).name == "router"


@pytest.mark.parametrize(
    ("nso", "mins", "maxes", "fragment"),
    [
        ("6.2", ("6.3",), (), "ncs-min-version 6.3"),
        ("6.2", ("6.1", "6.3.1"), (), None),  # one min per branch: 6.2.x needs only 6.1
        ("6.2", ("6.1", "6.3", "6.2.9"), (), None),  # 6.2's own entry leaves 6.2.9
        ("6.2", ("6.1", "6.3"), ("6.1.9",), "ncs-max-version 6.1.9"),
        ("6.2", (), ("6.1",), "ncs-max-version 6.1"),
        ("6.2", (), ("6.1.5", "7.0"), None),  # no 6.2 entry: the highest max counts
        ("6.2", (), ("6.1.5", "7.0", "6.1.9"), None),
        ("6.7.1", ("6.7.2",), (), "ncs-min-version 6.7.2"),
        ("6.2", ("6.2.4",), ("6.2.9",), None),
        ("6.2", ("5.4",), ("6.2",), None),
        ("6.7.1", ("6.7.1.2",), (), None),
    ],
)
def test_prefix_against_min_and_max(
    build: Build,
    limits: ArchiveLimits,
    nso: str,
    mins: tuple[str, ...],
    maxes: tuple[str, ...],
    fragment: str,
) -> None:
    spec = PackageSpec(nso=nso, meta=meta_xml(min_versions=mins, max_versions=maxes))
    path = build_with(build, spec)
    if fragment is None:
        assert inspect(path, spec, limits).ncs_min_versions == list(mins)
        return
    with pytest.raises(MetadataMismatch, match=fragment) as caught:
        inspect(path, spec, limits)
    assert f"compiled for NSO {nso}" in caught.value.message
