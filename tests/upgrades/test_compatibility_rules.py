"""Package compatibility comes from package-meta-data.xml, checked at upload, release create
and preflight (issue 7, finding 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.catalog.versions import NsoVersion
from tests.api.helpers import assert_error, put_file
from tests.factories import make_installer, make_package
from tests.upgrades.builders import (
    codes,
    define_release,
    inventory,
    package_upgrade,
    plan,
    release_with,
    upload,
    upload_package,
)

# ------------------------------------------------------------------------------ upload


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"requires": ((None, "1.0", None),)}, "<required-package> without a <name>"),
        ({"requires": ("l3vpn",)}, "requires itself"),
        ({"requires": (("router-nc", "2.0", "1.5"),)}, "min-version 2.0 above max-version 1.5"),
        ({"requires": (("router-nc", "1.10", "1.9"),)}, "min-version 1.10 above max-version 1.9"),
        ({"min_version": "6.2.5", "max_version": "6.2.3"}, "ncs-min-version 6.2.5"),
    ],
    ids=["nameless", "itself", "min-above-max", "versions-not-strings", "ncs-min-above-max"],
)
def test_upload_refuses_metadata_that_contradicts_itself(
    live, tmp_path: Path, meta: dict[str, Any], fragment: str
) -> None:
    path = make_package(tmp_path, "l3vpn", "2.1", "6.2", **meta)
    error = assert_error(
        put_file(live.session("uploader"), live.url, path), 400, "metadata_mismatch"
    )
    assert fragment in error["message"]
    assert "rebuild" in error["message"]
    listed = live.session("viewer").get(f"{live.url}/api/v1/artifacts").json()
    assert path.name not in str(listed)


@pytest.mark.parametrize(
    "mins",
    [("6.1", "6.3.1"), ("3.2.2", "3.3", "3.4"), ("6.1.4", "6.2.3", "6.3.1")],
    ids=["older-and-newer-branch", "show-packages-example", "one-per-branch"],
)
def test_upload_accepts_one_min_version_per_branch(
    live, tmp_path: Path, mins: tuple[str, ...]
) -> None:
    # ncs-min-version is given once per branch: a 6.2 build needs only its own branch's
    # entry (or, with none for 6.2, the lowest), never the highest of all.
    answer = put_file(
        live.session("uploader"), live.url, make_package(tmp_path, nso="6.2", min_version=mins)
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["meta"]["ncs_min_versions"] == list(mins)


# ------------------------------------------------------------------------ release create


def test_release_refuses_a_build_whose_min_version_it_does_not_meet(live, tmp_path: Path) -> None:
    foo = upload_package(live, tmp_path, "foo", "1.0", "6.2", min_version="6.2.3")
    error = assert_error(define_release(live, tmp_path, "6.2.1", [foo]), 422, "validation_failed")
    assert error["details"]["problems"] == [
        "ncs-6.2-foo-1.0.tar.gz needs NSO 6.2.3 or newer (ncs-min-version); release 6.2.1 "
        "cannot load it: use a build for 6.2.1 or target 6.2.3+"
    ]
    assert define_release(live, tmp_path, "6.2.3", [foo]).status_code == 201


def test_release_takes_a_build_of_another_maintenance_release(live, tmp_path: Path) -> None:
    # Maintenance releases of one branch are binary compatible: a build compiled with
    # 6.2.1 loads on 6.2.2 unless its metadata says otherwise.
    bar = upload_package(live, tmp_path, "bar", "1.0", "6.2.1")
    answer = define_release(live, tmp_path, "6.2.2", [bar])
    assert answer.status_code == 201, answer.text
    other_branch = upload_package(live, tmp_path, "baz", "1.0", "6.1")
    error = assert_error(
        define_release(live, tmp_path, "6.2.3", [other_branch]), 422, "validation_failed"
    )
    assert "ncs-6.1-baz-1.0.tar.gz is built for NSO 6.1" in error["message"]
    assert "ncs-6.2-baz-1.0.tar.gz" in error["message"]  # the build to use instead


@pytest.mark.parametrize(
    ("max_version", "release", "ok"),
    [("6.2", "6.2.3", True), ("6.2.1", "6.2.1", True), ("6.2.1", "6.2.2", False)],
)
def test_release_applies_max_version(
    live, tmp_path: Path, max_version: str, release: str, ok: bool
) -> None:
    foo = upload_package(live, tmp_path, "foo", "1.0", "6.2", max_version=max_version)
    answer = define_release(live, tmp_path, release, [foo])
    if ok:
        assert answer.status_code == 201, answer.text
        return
    error = assert_error(answer, 422, "validation_failed")
    assert error["details"]["problems"] == [
        f"ncs-6.2-foo-1.0.tar.gz supports NSO {max_version} at most (ncs-max-version); release "
        f"{release} cannot load it: use a build for {release} or target {max_version} or older"
    ]


def test_release_checks_required_package_versions(live, tmp_path: Path) -> None:
    l3vpn = upload_package(
        live, tmp_path, "l3vpn", "2.1", "6.2", requires=(("router-nc", "1.2", "1.9"),)
    )
    too_new = upload_package(live, tmp_path, "router-nc", "1.10", "6.2")  # 1.10 > 1.9
    error = assert_error(
        define_release(live, tmp_path, "6.2", [l3vpn, too_new]), 422, "validation_failed"
    )
    assert error["details"]["problems"] == [
        "ncs-6.2-l3vpn-2.1.tar.gz requires package router-nc 1.2 to 1.9; release 6.2 has "
        "router-nc 1.10: add a build of router-nc 1.2 to 1.9 to the release"
    ]
    fits = upload_package(live, tmp_path, "router-nc", "1.5", "6.2")
    assert define_release(live, tmp_path, "6.2", [l3vpn, fits]).status_code == 201


# ---------------------------------------------------------------------------- preflight


def _legacy_release(app_state, version: str, installer: str, packages: list[str]) -> None:
    """A release defined before the metadata rules: written without create_release's checks."""
    with app_state.sessions() as session:
        artifacts = {
            a.filename: a
            for a in session.scalars(
                select(Artifact).where(Artifact.filename.in_([installer, *packages]))
            )
        }
        session.add(
            Release(
                nso_version=version,
                version_key=NsoVersion.parse(version).sort_key,
                installer=artifacts[installer],
                packages=[artifacts[p] for p in packages],
                requirements={},
                created_by="before-issue-7",
            )
        )
        session.commit()


def test_preflight_rechecks_a_release_defined_before_the_rules(
    live, app_state, enrolled, tmp_path: Path
) -> None:
    foo = upload_package(live, tmp_path, "foo", "1.0", "6.2", min_version="6.2.3")
    installer = upload(live, make_installer(tmp_path, "6.2.1"))
    _legacy_release(app_state, "6.2.1", installer, [foo])
    enrolled.heartbeat(inventory("6.1", {"foo": "1.0"}))
    refused = plan(live, "edge-1", "6.2.1")
    assert not refused["ok"]
    (reason,) = [r for r in refused["reasons"] if r["code"] == "package_release"]
    assert reason["message"] == (
        "ncs-6.2-foo-1.0.tar.gz needs NSO 6.2.3 or newer (ncs-min-version); "
        "release 6.2.1 cannot load it"
    )
    assert reason["remedy"] == "use a build for 6.2.1 or target 6.2.3+"
    assert codes(refused["reasons"]) == ["package_release"]


def test_preflight_sees_a_required_package_the_chosen_subset_lacks(
    live, enrolled, tmp_path: Path
) -> None:
    l3vpn = upload_package(live, tmp_path, "l3vpn", "2.1", "6.2", requires=("resource-manager",))
    manager = upload_package(live, tmp_path, "resource-manager", "4.2", "6.2")
    assert define_release(live, tmp_path, "6.2", [l3vpn, manager]).status_code == 201
    enrolled.heartbeat(inventory("6.1", {"l3vpn": "2.1"}))
    refused = plan(live, "edge-1", "6.2")
    assert codes(refused["reasons"]) == ["package_extra", "package_requires"]
    requires = next(r for r in refused["reasons"] if r["code"] == "package_requires")
    assert "ncs-6.2-l3vpn-2.1.tar.gz requires package resource-manager" in requires["message"]
    assert "--allow-extra-packages" in requires["remedy"]
    assert plan(live, "edge-1", "6.2", allow_extra_packages="true")["ok"]


def test_package_upgrade_checks_metadata_against_the_running_release_and_resulting_set(
    live, enrolled, tmp_path: Path
) -> None:
    # The node runs 6.2.2 with router-nc 1.0.2 and l3vpn 2.1, which needs router-nc <= 1.9.
    upload_package(live, tmp_path, "router-nc", "1.0.2", "6.2")
    upload_package(live, tmp_path, "l3vpn", "2.1", "6.2", requires=(("router-nc", "1.0", "1.9"),))
    enrolled.heartbeat(inventory("6.2.2", {"router-nc": "1.0.2", "l3vpn": "2.1"}))

    too_new_nso = upload_package(live, tmp_path, "router-nc", "1.0.4", "6.2", min_version="6.2.3")
    error = assert_error(package_upgrade(live, "edge-1", [too_new_nso]), 422, "preflight_failed")
    (reason,) = error["details"]["reasons"]
    assert (reason["code"], reason["remedy"]) == (
        "package_release",
        "use a build for 6.2.2 or upgrade NSO to 6.2.3+ first",
    )
    assert "needs NSO 6.2.3 or newer (ncs-min-version); edge-1 (NSO 6.2.2)" in reason["message"]

    breaks_l3vpn = upload_package(live, tmp_path, "router-nc", "2.0", "6.2")
    error = assert_error(package_upgrade(live, "edge-1", [breaks_l3vpn]), 422, "preflight_failed")
    (reason,) = error["details"]["reasons"]
    assert reason["code"] == "package_requires"
    assert reason["message"] == (
        "ncs-6.2-l3vpn-2.1.tar.gz requires package router-nc 1.0 to 1.9; edge-1 after this "
        "upgrade has router-nc 2.0"
    )

    needs_more = upload_package(
        live, tmp_path, "l3vpn", "2.2", "6.2", requires=("resource-manager",)
    )
    error = assert_error(package_upgrade(live, "edge-1", [needs_more]), 422, "preflight_failed")
    assert codes(error["details"]["reasons"]) == ["package_requires"]
    assert (
        "requires package resource-manager, which edge-1 after this upgrade does not"
        in (error["details"]["reasons"][0]["message"])
    )

    # A build compiled with 6.2.1 serves the 6.2.2 node: one branch, binary compatible.
    maintenance_build = upload_package(live, tmp_path, "router-nc", "1.0.3", "6.2.1")
    answer = package_upgrade(live, "edge-1", [maintenance_build])
    assert answer.status_code == 202, answer.text


def test_release_builds_of_the_running_branch_need_no_rebuild(
    live, enrolled, tmp_path: Path
) -> None:
    release_with(live, tmp_path, "6.2.3", {"router-nc": "1.0.2"})
    enrolled.heartbeat(inventory("6.2.1", {"router-nc": "1.0.2"}))
    verdict = plan(live, "edge-1", "6.2.3")
    assert verdict["ok"], verdict["reasons"]
    assert verdict["kind"] == "maintenance"
