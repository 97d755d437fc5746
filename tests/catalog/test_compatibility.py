"""The package compatibility rules (repo_server/catalog/compatibility.py), one table each."""

from __future__ import annotations

from typing import Optional

import pytest

from repo_server.catalog.compatibility import PackageBuild, Requirement, unmet_requirements
from repo_server.catalog.versions import NsoVersion

V = NsoVersion.parse


def build(
    compiled_for: str = "6.2",
    mins: tuple[str, ...] = (),
    maxes: tuple[str, ...] = (),
    requires: tuple[Requirement, ...] = (),
    name: str = "foo",
) -> PackageBuild:
    return PackageBuild(
        filename=f"ncs-{compiled_for}-{name}-1.0.tar.gz",
        name=name,
        version="1.0",
        compiled_for=V(compiled_for),
        min_versions=tuple(V(m) for m in mins),
        max_versions=tuple(V(m) for m in maxes),
        requires=requires,
    )


def refused_by(package: PackageBuild, release: str) -> Optional[str]:
    refusal = package.load_refusal(V(release))
    return None if refusal is None else refusal.fact


@pytest.mark.parametrize(
    ("compiled_for", "release", "ok"),
    [
        ("6.2", "6.2", True),
        ("6.2", "6.2.4", True),
        ("6.2.1", "6.2.2", True),  # maintenance releases are binary compatible
        ("6.2.1", "6.2", True),
        ("6.2.1", "6.3", False),
        ("6.1", "6.2", False),
        ("6.10", "6.1", False),
    ],
)
def test_compiled_for_branch(compiled_for: str, release: str, ok: bool) -> None:
    fact = refused_by(build(compiled_for), release)
    assert (fact is None) is ok
    if not ok:
        assert fact is not None and f"is built for NSO {compiled_for}" in fact


@pytest.mark.parametrize(
    ("mins", "release", "ok"),
    [
        # show packages: ncs-min-version [ 3.2.2 3.3 3.4 ]
        (("3.2.2", "3.3", "3.4"), "3.2.1", False),
        (("3.2.2", "3.3", "3.4"), "3.2.2", True),
        (("3.2.2", "3.3", "3.4"), "3.3", True),
        (("3.2.2", "3.3", "3.4"), "3.4.1", True),
        (("3.2.2", "3.3", "3.4"), "3.1.9", False),  # no 3.1 entry: the lowest counts
        (("3.2.2", "3.3", "3.4"), "3.5", True),
        (("6.2.3",), "6.2.1", False),
        (("6.2.3",), "6.2.3", True),
        (("6.1", "6.3.1"), "6.2.1", True),  # no 6.2 entry: the lowest, 6.1
        (("6.1", "6.3.1"), "6.3", False),  # 6.3's own entry
        (("6.9",), "6.10", True),  # versions, not strings
    ],
)
def test_min_versions_one_per_branch(mins: tuple[str, ...], release: str, ok: bool) -> None:
    fact = refused_by(build(V(release).branch, mins=mins), release)
    assert (fact is None) is ok, fact
    if not ok:
        assert fact is not None and "(ncs-min-version)" in fact


@pytest.mark.parametrize(
    ("maxes", "release", "ok"),
    [
        (("6.2",), "6.2.3", True),  # X.Y covers its branch
        (("6.2.1",), "6.2.1", True),  # X.Y.Z is inclusive
        (("6.2.1",), "6.2.2", False),
        (("6.1.5", "7.0"), "6.1.7", False),  # 6.1's own entry
        (("6.1.5", "7.0"), "6.2.1", True),  # no 6.2 entry: the highest, 7.0
        (("6.9",), "6.10", False),  # 6.10 > 6.9 as versions
        (("6.10",), "6.9.4", True),
    ],
)
def test_max_versions(maxes: tuple[str, ...], release: str, ok: bool) -> None:
    fact = refused_by(build(V(release).branch, maxes=maxes), release)
    assert (fact is None) is ok, fact
    if not ok:
        assert fact is not None and "(ncs-max-version)" in fact


def test_refusals_are_worded_for_a_release_or_a_node() -> None:
    package = build("6.2", mins=("6.2.3",))
    refusal = package.load_refusal(V("6.2.1"))
    assert str(refusal) == (
        "ncs-6.2-foo-1.0.tar.gz needs NSO 6.2.3 or newer (ncs-min-version); release 6.2.1 "
        "cannot load it: use a build for 6.2.1 or target 6.2.3+"
    )
    on_node = package.load_refusal(V("6.2.1"), node="edge-1")
    assert on_node is not None
    assert on_node.fix == "use a build for 6.2.1 or upgrade NSO to 6.2.3+ first"
    capped = build("6.3", maxes=("6.2",)).load_refusal(V("6.3"))  # refused at upload today
    assert capped is not None and "supports NSO 6.2.x at most" in capped.fact


@pytest.mark.parametrize(
    ("prefix", "mins", "maxes", "fragment"),
    [
        ("6.2", ("6.2",), (), None),
        ("6.2", ("6.2.3",), (), None),  # built for 6.2.x needing >= 6.2.3: fine
        ("6.2", ("6.1",), ("6.3",), None),
        ("6.2", (), ("6.2",), None),  # max 6.2 admits all of 6.2
        ("6.2", (), (), None),
        ("6.2", ("6.1", "6.3.1"), (), None),  # one entry per branch: 6.2 needs only 6.1
        ("6.2", (), ("6.1.5", "7.0"), None),  # no 6.2 entry: the highest max counts
        ("6.2", ("6.3",), (), "ncs-min-version 6.3"),
        ("6.2", ("7.0",), (), "ncs-min-version 7.0"),
        ("6.2", (), ("6.1.9",), "ncs-max-version 6.1.9"),
        ("6.2", ("5.0",), ("5.9",), "ncs-max-version 5.9.x"),
        ("6.2", ("6.2.5",), ("6.2.3",), "ncs-min-version 6.2.5 and ncs-max-version 6.2.3"),
        ("6.7.1", ("6.7.1.4",), (), None),
        ("6.7.1", ("6.7.2",), (), "ncs-min-version 6.7.2"),
        ("6.7.1", (), ("6.7",), None),  # 6.7 covers 6.7.1
        ("6.7.1", (), ("6.7.0",), "ncs-max-version 6.7.0"),
        ("6.7.1", (), ("6.7.1",), None),
    ],
)
def test_file_name_prefix_against_min_and_max(
    prefix: str, mins: tuple[str, ...], maxes: tuple[str, ...], fragment: Optional[str]
) -> None:
    problems = build(prefix, mins, maxes).metadata_problems()
    if fragment is None:
        assert problems == []
        return
    (message,) = problems
    assert fragment in message
    assert f"ncs-{prefix}-" in message
    assert "rebuild" in message and "rename" in message


@pytest.mark.parametrize(
    ("requirement", "fragment"),
    [
        (Requirement(None, "1.0"), "without a <name>"),
        (Requirement("foo"), "requires itself"),
        (Requirement("bar", "2.0", "1.10"), "min-version 2.0 above max-version 1.10"),
        (Requirement("bar", "1.0", "1.10"), None),
        (Requirement("bar", "abc", "1.0"), None),  # nothing to compare: left to the sets
    ],
)
def test_required_package_metadata(requirement: Requirement, fragment: Optional[str]) -> None:
    problems = build(requires=(requirement,)).metadata_problems()
    if fragment is None:
        assert problems == []
    else:
        (message,) = problems
        assert fragment in message and "rebuild" in message


@pytest.mark.parametrize(
    ("requirement", "present", "found"),
    [
        (Requirement("bar"), {"bar": "0.1"}, None),
        (Requirement("bar"), {}, "missing"),
        (Requirement("bar", "1.2", "1.9"), {"bar": "1.10"}, "1.10"),  # 1.10 > 1.9
        (Requirement("bar", "1.2", "1.9"), {"bar": "1.9"}, None),
        (Requirement("bar", "1.2", "1.9"), {"bar": "1.1.9"}, "1.1.9"),
        (Requirement("bar", "1.2"), {"bar": "1.2.0"}, None),  # 1.2 == 1.2.0
        (Requirement("bar", "r7"), {"bar": "r7"}, None),  # text: equal strings only
        (Requirement("bar", "r7"), {"bar": "r8"}, "r8"),
    ],
)
def test_required_packages_in_a_set(
    requirement: Requirement, present: dict[str, str], found: Optional[str]
) -> None:
    unmet = unmet_requirements([build(requires=(requirement,))], present)
    if found is None:
        assert unmet == []
        return
    (one,) = unmet
    assert one.found == (None if found == "missing" else found)
    assert one.fact("release 6.2").startswith(
        f"ncs-6.2-foo-1.0.tar.gz requires package {requirement.wanted}"
    )


def test_from_artifact_meta_reads_what_upload_kept() -> None:
    meta = {
        "name": "l3vpn",
        "version": "2.1",
        "ncs_min_versions": ["6.1.4", "6.2.3"],
        "ncs_max_versions": ["6.2"],
        "required_packages": [{"name": "router-nc", "min_version": "1.0", "max_version": None}],
    }
    package = PackageBuild.from_meta("ncs-6.2-l3vpn-2.1.tar.gz", V("6.2"), meta)
    assert package.min_for(V("6.2.9")) == V("6.2.3")
    assert package.min_for(V("6.0")) == V("6.1.4")
    assert package.max_for(V("6.2.9")) == V("6.2")
    assert package.requires == (Requirement("router-nc", "1.0", None),)
    with pytest.raises(ValueError, match="bad ncs-min-version for l3vpn"):
        PackageBuild.from_meta("x", V("6.2"), {**meta, "ncs_min_versions": ["six"]})
