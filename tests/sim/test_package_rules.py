"""Which NSO releases and which package sets a package accepts: ncs-min-version and
ncs-max-version per branch, required-package min/max versions, all compared as versions."""

from __future__ import annotations

import pytest

from nso_sim import versions


@pytest.mark.parametrize(
    ("running", "floors", "failed"),
    [
        ("6.10", ["6.9"], None),  # numbers, not strings
        ("6.2.10", ["6.2.9"], None),
        ("6.2.9", ["6.2.10"], "6.2.10"),
        ("3.2.1", ["3.2.2", "3.3", "3.4"], "3.2.2"),  # the entry of the own branch
        ("3.3.0", ["3.2.2", "3.3", "3.4"], None),
        ("3.5", ["3.2.2", "3.3", "3.4"], None),  # no entry for 3.5: the lowest applies
        ("3.1", ["3.2.2", "3.3", "3.4"], "3.2.2"),
        ("6.2", ["6.2.0"], None),
        ("6.2", [], None),
    ],
)
def test_ncs_min_version(running, floors, failed):
    assert versions.failed_min_version(running, floors) == failed


@pytest.mark.parametrize(
    ("running", "ceilings", "failed"),
    [
        ("6.10", ["6.9"], "6.9"),  # "6.10" > "6.9" is False as strings
        ("6.9.5", ["6.10"], None),
        ("6.2.3", ["6.2"], None),  # X.Y covers its whole branch
        ("6.3", ["6.2"], "6.2"),
        ("6.2.10", ["6.2.9"], "6.2.9"),  # X.Y.Z is an inclusive bound
        ("6.2.9", ["6.2.9"], None),
        ("6.2.5", ["6.1", "6.2.4", "6.4"], "6.2.4"),  # the own branch's entry
        ("6.3.1", ["6.1", "6.2.4", "6.4"], None),  # else the highest
        ("6.5", ["6.1", "6.2.4", "6.4"], "6.4"),
    ],
)
def test_ncs_max_version(running, ceilings, failed):
    assert versions.failed_max_version(running, ceilings) == failed


@pytest.mark.parametrize(
    ("version", "low", "high", "ok"),
    [
        ("1.10", "1.9", None, True),
        ("1.9", "1.10", None, False),
        ("2.0", "1.0", "1.10", False),
        ("1.10", "1.0", "1.10", True),
        ("1.0.0", "1.0", "1.0", True),
        ("1.0-beta", "1.0-beta", None, True),  # not numeric: equal strings only
        ("1.1", "1.0-beta", None, False),
        ("1.0", None, None, True),
    ],
)
def test_required_package_versions(version, low, high, ok):
    assert versions.package_version_within(version, low, high) is ok


def test_load_checks_on_a_maintenance_release(make_host, artifacts, shell):
    """6.2.10 loads packages compiled for 6.2 (one branch is binary compatible), within the
    limits their package-meta-data.xml sets."""
    host = make_host("6.2.10", [artifacts.ned("6.2", "1.0")])
    load_dir = host.path("/var/opt/ncs/packages")
    cases = [
        (("--ncs-max-version", "6.2.9"), "requires NCS version 6.2.9"),
        (("--ncs-max-version", "6.2"), None),
        (("--ncs-max-version", "6.2.10"), None),
        (("--ncs-max-version", "6.1", "--ncs-max-version", "6.2.11"), None),
        (("--ncs-min-version", "6.1.5", "--ncs-min-version", "6.2.11"), "version 6.2.11"),
        (("--ncs-min-version", "6.1.5", "--ncs-min-version", "6.2.9"), None),
        (("--ncs-min-version", "6.1.5"), None),
        (("--ncs-min-version", "6.3"), "requires NCS version 6.3"),
        (
            ("--requires", "router-nc:1.0.2"),
            "required package router-nc has version 1.0, needs at least 1.0.2",
        ),
        (
            ("--requires", "router-nc:0.9:0.9.9"),
            "required package router-nc has version 1.0, needs at least 0.9 and at most 0.9.9",
        ),
        (("--requires", "router-nc:1.0:1.10"), None),
        (("--requires", "router-nc:1.0-beta"), "needs at least 1.0-beta"),
        (("--requires", "base:1.0"), "required package base is not loaded"),
    ]
    for n, (options, refusal) in enumerate(cases):
        pkg = artifacts.package(f"vpn{n}", "1.0", "6.2", *options)
        (load_dir / pkg.name).symlink_to(pkg)
        out, status = host.cli("packages reload dry-run")
        (load_dir / pkg.name).unlink()
        if refusal is None:
            assert status == 0, (options, out)
            continue
        assert status == 1, (options, out)
        assert f"Error: Failed to load NCS package: vpn{n}; " in out, out
        assert refusal in out, (options, out)

    # Several minimum versions, one per branch, as show packages lists them.
    pkg = artifacts.package(
        "multi", "1.0", "6.2", "--ncs-min-version", "6.1.5", "--ncs-min-version", "6.2.9"
    )
    (load_dir / pkg.name).symlink_to(pkg)
    assert host.cli("packages reload")[1] == 0
    assert " ncs-min-version [ 6.1.5 6.2.9 ]" in host.cli("show packages package multi")[0]
