from __future__ import annotations

import random

import pytest
from packaging.version import Version

from repo_server.catalog.versions import NsoVersion, package_version_key

V = NsoVersion.parse


@pytest.mark.parametrize(
    ("text", "release", "shown"),
    [
        ("6.2", (6, 2), "6.2"),
        ("6.1.2", (6, 1, 2), "6.1.2"),
        ("5.5.2.6", (5, 5, 2, 6), "5.5.2.6"),
        ("6.1.2.1", (6, 1, 2, 1), "6.1.2.1"),
        ("5.0.20181016.1", (5, 0, 20181016, 1), "5.0.20181016.1"),
        ("6.2.1_231120", (6, 2, 1), "6.2.1"),
        ("3.4_HEAD", (3, 4), "3.4"),
        (" 6.2\n", (6, 2), "6.2"),
    ],
)
def test_parse_accepts_nso_forms(text: str, release: tuple[int, ...], shown: str) -> None:
    version = V(text)
    assert version.release == release
    assert str(version) == shown
    assert repr(version) == f"NsoVersion({shown!r})"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not an NSO version"),
        ("_231120", "not an NSO version"),
        ("abc", "not an NSO version"),
        ("v6.2", "not an NSO version"),
        ("6.2.x", "not an NSO version"),
        ("6..2", "not an NSO version"),
        ("6", "at least X.Y"),
        ("1!6.2", "epochs"),
        ("6.2+local", "local"),
        ("6.12345678901", "more than 10 digits"),
        ("1.2.3.4.5.6.7.8.9", "more than 8 release numbers"),
    ],
)
def test_parse_rejects_garbage_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        V(text)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        V(6.2)  # type: ignore[arg-type]


def test_ordering_equality_and_hashing() -> None:
    assert V("6.1.2") < V("6.1.2.1") < V("6.2") < V("6.10")
    assert V("6.2") == V("6.2.0") and V("6.2") <= V("6.2.0") and V("6.2") >= V("6.2.0")
    assert hash(V("6.2")) == hash(V("6.2.0"))
    assert len({V("6.2"), V("6.2.0"), V("6.2.1_1")}) == 2
    assert V("6.9") < V("6.10")  # numeric, not text, order
    assert max([V("5.7"), V("6.10"), V("6.9.9")]) == V("6.10")
    assert V("6.2") != "6.2"
    with pytest.raises(TypeError):
        _ = V("6.2") < "6.3"


def test_branch_maintenance_and_next_sibling() -> None:
    assert V("6.2.1.3").branch == "6.2"
    assert V("6.2.3").is_maintenance_of(V("6.2"))
    assert not V("6.3").is_maintenance_of(V("6.2.9"))
    assert not V("5.2").is_maintenance_of(V("6.2"))
    assert str(V("6.2").next_sibling()) == "6.3"
    assert str(V("6.2.1").next_sibling()) == "6.2.2"
    assert str(V("6.9").next_sibling()) == "6.10"
    assert str(V("5.0.20181016.1").next_sibling()) == "5.0.20181016.2"


# Every form the catalog meets, plus PEP 440 pre/post/dev forms, deliberately unsorted.
ALL_FORMS = [
    "6.10",
    "6.2",
    "6.2.0",
    "6.1.2",
    "6.1.2.1",
    "5.5.2.6",
    "5.0.20181016.1",
    "5.0",
    "6.2.1_231120",
    "6.2.1",
    "6.2.0.1",
    "6.2.dev1",
    "6.2a1",
    "6.2a1.dev3",
    "6.2a1.post1",
    "6.2a1.post1.dev1",
    "6.2a2",
    "6.2b1",
    "6.2rc1",
    "6.2rc10",
    "6.2.post1",
    "6.2.post1.dev2",
    "6.2.post2",
    "6.3.dev0",
    "10.0",
    "9.99.9999999999",
    "0.0.1",
]


def test_sort_key_order_is_version_order() -> None:
    versions = [V(text) for text in ALL_FORMS]
    expected = sorted(versions)
    rng = random.Random(20240601)
    for _ in range(200):
        shuffled = versions[:]
        rng.shuffle(shuffled)
        assert sorted(shuffled, key=lambda v: v.sort_key) == expected
    # pairwise: the key comparison agrees with the version comparison in every case
    for a in versions:
        for b in versions:
            assert (a.sort_key < b.sort_key) == (a < b), (a, b)
            assert (a.sort_key == b.sort_key) == (a == b), (a, b)


def test_sort_key_shape() -> None:
    assert V("6.2").sort_key == "0000000006.0000000002-4"
    assert V("6.2.0").sort_key == V("6.2").sort_key
    assert V("5.0.20181016.1").sort_key.startswith("0000000005.0000000000.0020181016.0000000001-")
    assert max(len(V(text).sort_key) for text in ALL_FORMS) <= 128
    assert len(V("9999999999." * 7 + "1_x").sort_key) <= 128


PACKAGE_VERSIONS = [
    "1.0",
    "1.0.0",
    "1.0.2",
    "1.0.10",
    "6.88.3",
    "7.43.1",
    "1.0rc1",
    "1.0.dev1",
    "1.0.post1",
    "1.0+local.7",
    "1.0+local.10",
    "1.0+abc",
    "1!0.1",
    "1.0.20240101123045",
    "2.0a1",
]
INVALID_PACKAGE_VERSIONS = ["weird", "1.0-SNAPSHOT-x", "", "v..1", "~1"]


def test_package_version_key_orders_valid_by_version_then_invalid_by_text() -> None:
    texts = PACKAGE_VERSIONS + INVALID_PACKAGE_VERSIONS
    rng = random.Random(7)
    expected_valid = sorted(PACKAGE_VERSIONS, key=Version)
    for _ in range(100):
        rng.shuffle(texts)
        ordered = sorted(texts, key=package_version_key)
        # compared as Versions: 1.0 and 1.0.0 are equal, so either may come first
        assert [Version(t) for t in ordered[: len(PACKAGE_VERSIONS)]] == [
            Version(t) for t in expected_valid
        ]
        assert ordered[len(PACKAGE_VERSIONS) :] == sorted(INVALID_PACKAGE_VERSIONS)
    for a in PACKAGE_VERSIONS:
        for b in PACKAGE_VERSIONS:
            assert (package_version_key(a) < package_version_key(b)) == (Version(a) < Version(b))


def test_package_version_key_stays_short() -> None:
    long_valid = ".".join(["1"] * 60)
    assert len(package_version_key(long_valid)) <= 255
    assert package_version_key(long_valid) > package_version_key("999.0")  # fallback bucket
    assert package_version_key("1.0") == package_version_key("1.0.0")
