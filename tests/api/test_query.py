"""Listing, filtering, pagination and version order."""

from __future__ import annotations

from pathlib import Path

from tests.api.helpers import assert_error, put_file
from tests.factories import make_installer, make_package, make_patch_bundle


def _publish(live, paths: list[Path]) -> None:
    http = live.session("uploader")
    for path in paths:
        response = put_file(http, live.url, path)
        assert response.status_code == 201, response.text


def test_installers_sorted_by_nso_version(live, tmp_path: Path) -> None:
    versions = ["6.2", "6.1.2", "5.5.2.6", "6.1.2.1", "5.0.20181016.1", "6.10", "6.1"]
    _publish(live, [make_installer(tmp_path, v) for v in versions])
    answer = live.session("viewer").get(
        f"{live.url}/api/v1/artifacts", params={"kind": "installers"}
    )
    assert answer.status_code == 200
    got = [item["version"] for item in answer.json()["items"]]
    assert got == ["5.0.20181016.1", "5.5.2.6", "6.1", "6.1.2", "6.1.2.1", "6.2", "6.10"]


def test_filter_by_nso_and_name(live, tmp_path: Path) -> None:
    dirs = [tmp_path / str(i) for i in range(4)]
    for d in dirs:
        d.mkdir()
    _publish(
        live,
        [
            make_package(dirs[0], "router-nc", "1.0.2", "6.2"),
            make_package(dirs[1], "router-nc", "1.0.2", "6.1"),
            make_package(dirs[2], "l3vpn", "2.1", "6.2"),
            make_package(dirs[3], "router-nc", "1.0.10", "6.2"),
            make_patch_bundle(tmp_path, "6.2", "PSIRT-1"),
        ],
    )
    http = live.session("operator")
    for_62 = http.get(
        f"{live.url}/api/v1/artifacts", params={"kind": "packages", "nso": "6.2"}
    ).json()
    assert sorted(i["filename"] for i in for_62["items"]) == [
        "ncs-6.2-l3vpn-2.1.tar.gz",
        "ncs-6.2-router-nc-1.0.10.tar.gz",
        "ncs-6.2-router-nc-1.0.2.tar.gz",
    ]
    router = http.get(
        f"{live.url}/api/v1/artifacts",
        params={"kind": "package", "nso": "6.2.1", "name": "router-nc"},
    ).json()
    # A build for the 6.2 branch serves 6.2.1; package versions in version order, not text order.
    assert [i["version"] for i in router["items"]] == ["1.0.2", "1.0.10"]
    patches = http.get(f"{live.url}/api/v1/artifacts", params={"kind": "patches"}).json()
    assert [i["name"] for i in patches["items"]] == ["PSIRT-1"]
    both = http.get(f"{live.url}/api/v1/artifacts", params={"kind": "patch,package", "nso": "6.2"})
    assert both.status_code == 200, both.text
    assert both.json()["total"] == 4
    exact = http.get(f"{live.url}/api/v1/artifacts", params={"nso": "6.2.0.0"}).json()
    assert exact["total"] == 4  # 6.2.0.0 is 6.2: builds for the 6.2 branch and the patch


def test_pagination(live, tmp_path: Path) -> None:
    _publish(live, [make_installer(tmp_path, f"6.{i}") for i in range(1, 8)])
    http = live.session("viewer")
    seen = []
    for page in (1, 2, 3, 4):
        answer = http.get(
            f"{live.url}/api/v1/artifacts",
            params={"kind": "installer", "page": page, "per_page": 3},
        ).json()
        assert answer["total"] == 7
        seen += [i["version"] for i in answer["items"]]
    assert seen == [f"6.{i}" for i in range(1, 8)]


def test_get_one_and_404(live, tmp_path: Path) -> None:
    path = make_package(tmp_path)
    _publish(live, [path])
    http = live.session("viewer")
    one = http.get(f"{live.url}/api/v1/artifacts/{path.name}")
    assert one.status_code == 200
    assert one.json()["filename"] == path.name
    assert one.json()["download_url"] == f"/api/v1/blobs/{one.json()['sha256']}"
    assert_error(http.get(f"{live.url}/api/v1/artifacts/ncs-6.2-nope-1.0.tar.gz"), 404, "not_found")


def test_bad_query_arguments(live) -> None:
    http = live.session("viewer")
    assert_error(
        http.get(f"{live.url}/api/v1/artifacts", params={"per_page": 0}), 422, "validation_failed"
    )
    assert_error(
        http.get(f"{live.url}/api/v1/artifacts", params={"kind": "boats"}), 422, "validation_failed"
    )
    assert_error(
        http.get(f"{live.url}/api/v1/artifacts", params={"nso": "six"}), 422, "validation_failed"
    )
