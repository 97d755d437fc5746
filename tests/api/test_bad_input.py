"""Every rejected upload gets a clear 4xx and leaves storage and database as they were."""

from __future__ import annotations

import gzip
import io
import socket
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.helpers import assert_error, put_file, snapshot
from tests.factories import make_package, package_meta_xml


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, b""


META = package_meta_xml("router-nc", "1.0.2", min_version="6.2")
NAME = "ncs-6.2-router-nc-1.0.2.tar.gz"


def _with_meta(*extra: tuple[tarfile.TarInfo, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_file("router-nc/package-meta-data.xml", META), *extra]


BAD_PACKAGES: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    "prefix contradicts min version": (
        lambda d: make_package(d, nso="6.2", min_version="6.3"),
        400,
        "metadata_mismatch",
    ),
    "name disagrees with metadata": (
        lambda d: _tar(d / "ncs-6.2-router-nc-1.0.3.tar.gz", _with_meta()),
        400,
        "metadata_mismatch",
    ),
    "missing package-meta-data.xml": (
        lambda d: _tar(d / NAME, [_file("router-nc/load-dir/x.fxs")]),
        400,
        "invalid_artifact",
    ),
    "malformed package-meta-data.xml": (
        lambda d: _tar(
            d / NAME, [_file("router-nc/package-meta-data.xml", b"<ncs-package><name>")]
        ),
        400,
        "invalid_artifact",
    ),
    "not gzip": (
        lambda d: (d / NAME).write_bytes(b"PK\x03\x04 this is a zip") and d / NAME,
        400,
        "invalid_artifact",
    ),
    "absolute member path": (
        lambda d: _tar(d / NAME, _with_meta(_file("/etc/passwd"))),
        400,
        "unsafe_archive",
    ),
    "dot-dot member path": (
        lambda d: _tar(d / NAME, _with_meta(_file("router-nc/../../evil"))),
        400,
        "unsafe_archive",
    ),
    "symlink escaping": (
        lambda d: _tar(
            d / NAME, _with_meta(_link("router-nc/x", "../../etc/shadow", tarfile.SYMTYPE))
        ),
        400,
        "unsafe_archive",
    ),
    "hardlink escaping": (
        lambda d: _tar(d / NAME, _with_meta(_link("router-nc/x", "/etc/shadow", tarfile.LNKTYPE))),
        400,
        "unsafe_archive",
    ),
    "device file": (
        lambda d: _tar(d / NAME, _with_meta(_special("router-nc/sda", tarfile.BLKTYPE))),
        400,
        "unsafe_archive",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PACKAGES))
def test_bad_package_is_rejected_and_leaves_nothing(case, live, app_state, tmp_path) -> None:
    build, status, code = BAD_PACKAGES[case]
    # A catalog that holds something already: a rejection must not touch it either.
    seeded = tmp_path / "seed"
    seeded.mkdir()
    assert (
        put_file(
            live.session("uploader"), live.url, make_package(seeded, "seed", "1.0")
        ).status_code
        == 201
    )
    path = build(tmp_path)
    before = snapshot(app_state)
    assert before["blobs"] and before["stored"]
    assert_error(put_file(live.session("uploader"), live.url, path), status, code)
    assert snapshot(app_state) == before


@pytest.mark.parametrize(
    "filename",
    [
        "router.tar.gz",
        "ncs-router-nc-1.0.tar.gz",
        "nso-6.2.linux.sparc.installer.bin",
        "nso-6.2-patch-.tar.gz",
        ".hidden",
        "ncs-6.2-router-nc-1.0.zip",
    ],
)
def test_unknown_file_names_are_rejected(filename, live, app_state) -> None:
    before = snapshot(app_state)
    response = live.session("uploader").put(
        f"{live.url}/api/v1/artifacts/{filename}", data=b"some bytes"
    )
    error = assert_error(response, 400, "invalid_filename")
    assert "ncs-" in error["message"] or "nso-" in error["message"]  # shows accepted forms
    assert snapshot(app_state) == before


@pytest.fixture
def small_limits(app_overrides):
    app_overrides.update(
        max_upload_bytes=64 * 1024, tar_max_members=20, tar_max_unpacked_bytes=1 << 20
    )
    return app_overrides


def test_too_many_members(small_limits, live, app_state, tmp_path) -> None:
    path = _tar(tmp_path / NAME, _with_meta(*[_file(f"router-nc/f{i}") for i in range(30)]))
    before = snapshot(app_state)
    assert_error(put_file(live.session("uploader"), live.url, path), 400, "unsafe_archive")
    assert snapshot(app_state) == before


def test_decompression_bomb(small_limits, live, app_state, tmp_path) -> None:
    path = _tar(tmp_path / NAME, _with_meta(_file("router-nc/zeros", b"\0" * (8 << 20))))
    assert path.stat().st_size < 64 * 1024  # small on the wire, large unpacked
    before = snapshot(app_state)
    assert_error(put_file(live.session("uploader"), live.url, path), 400, "unsafe_archive")
    assert snapshot(app_state) == before


def test_oversize_body_is_refused(small_limits, live, app_state, tmp_path) -> None:
    path = tmp_path / "nso-6.2.linux.x86_64.installer.bin"
    path.write_bytes(b"#!/bin/sh\n" + b"x" * (200 * 1024))
    before = snapshot(app_state)
    assert_error(put_file(live.session("uploader"), live.url, path), 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit must hold inside the read loop
        for _ in range(10):
            yield b"y" * 32 * 1024

    response = live.session("uploader").put(
        f"{live.url}/api/v1/artifacts/{path.name}", data=chunks()
    )
    assert response.status_code == 413
    assert snapshot(app_state) == before


def test_checksum_mismatch(live, app_state, tmp_path) -> None:
    path = make_package(tmp_path)
    before = snapshot(app_state)
    response = put_file(
        live.session("uploader"), live.url, path, **{"X-Checksum-SHA256": "ab" * 32}
    )
    error = assert_error(response, 400, "checksum_mismatch")
    assert error["details"]["expected"] == "ab" * 32
    assert snapshot(app_state) == before


def test_malformed_checksum(live, tmp_path) -> None:
    path = make_package(tmp_path)
    response = put_file(live.session("uploader"), live.url, path, **{"X-Checksum-SHA256": "xyz"})
    assert_error(response, 400, "bad_request")


def test_truncated_body(live, app_state, tmp_path) -> None:
    path = make_package(tmp_path)
    data = path.read_bytes()
    before = snapshot(app_state)
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            (
                f"PUT /api/v1/artifacts/{path.name} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {live.tokens['uploader']}\r\n"
                f"Content-Length: {len(data) + 1000}\r\nConnection: close\r\n\r\n"
            ).encode()
            + data
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"400", answer[:300]
    assert b"truncated_body" in answer
    assert snapshot(app_state) == before


def test_truncated_gzip(live, app_state, tmp_path) -> None:
    good = make_package(tmp_path).read_bytes()
    path = tmp_path / "cut" / NAME
    path.parent.mkdir()
    path.write_bytes(good[: len(good) // 2])
    before = snapshot(app_state)
    assert_error(put_file(live.session("uploader"), live.url, path), 400, "invalid_artifact")
    assert snapshot(app_state) == before


def test_gzip_of_garbage(live, app_state, tmp_path) -> None:
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(b"not a tar archive at all" * 100))
    before = snapshot(app_state)
    assert_error(put_file(live.session("uploader"), live.url, path), 400, "invalid_artifact")
    assert snapshot(app_state) == before
