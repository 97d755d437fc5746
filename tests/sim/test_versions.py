"""NSO version strings as they appear in the wild."""

from __future__ import annotations

import pytest

from nso_sim import versions


@pytest.mark.parametrize(
    ("vsn", "major"),
    [
        ("6.2", "6.2"),
        ("6.1.2", "6.1"),
        ("5.5.2.6", "5.5"),
        ("6.1.2.1", "6.1"),
        ("5.0.20181016.1", "5.0"),
        ("6.2_240101", "6.2"),
    ],
)
def test_major_of_every_form(vsn, major):
    assert versions.major(vsn) == major


def test_ordering_and_bad_input():
    assert versions.at_least("6.1.2", "6.1")
    assert not versions.at_least("5.4.9", "5.5")
    assert versions.parse("5.5.2.6") > versions.parse("5.5.2")
    with pytest.raises(ValueError):
        versions.parse("six")
