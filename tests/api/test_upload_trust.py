"""Uploads that would make a reader see something else than the catalog checked: a second
package-meta-data.xml, an installer name a shell would read, a look-alike name."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from tests.api.helpers import assert_error, put_file, snapshot
from tests.factories import make_installer, package_meta_xml

DECOY_NAME = "router-nc | save overwrite /etc/ncs/ncs.conf"


def package_with_decoy(folder: Path) -> Path:
    """A good router-nc 1.0.2 for 6.2, plus ``router-nc/doc/package-meta-data.xml`` first:
    a reader that takes the first file of that name at any depth sees another package."""
    members = [
        ("router-nc/doc/package-meta-data.xml", package_meta_xml(DECOY_NAME, "1.0.2")),
        ("router-nc/package-meta-data.xml", package_meta_xml("router-nc", "1.0.2")),
        ("router-nc/load-dir/router-nc.fxs", b"fxs compiled for 6.2"),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = folder / "ncs-6.2-router-nc-1.0.2.tar.gz"
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def test_a_nested_decoy_package_meta_data_xml_is_refused(live, app_state, tmp_path: Path):
    before = snapshot(app_state)
    response = put_file(live.session("uploader"), live.url, package_with_decoy(tmp_path))
    error = assert_error(response, 400, "ambiguous_package")
    assert "router-nc/doc/package-meta-data.xml" in error["message"]
    assert snapshot(app_state) == before


@pytest.mark.parametrize(
    "filename",
    [
        "nso-6.2_$(reboot).linux.x86_64.installer.bin",
        "nso-6.2_x|y.linux.arm64.signed.bin",
        "nso-6.2 .linux.x86_64.installer.bin",
        "nso-6.2_\u00e4.linux.x86_64.installer.bin",
        "nso-\uff16.2.linux.x86_64.installer.bin",  # FULLWIDTH 6
    ],
)
def test_installer_names_outside_the_grammar_are_refused(
    live, app_state, tmp_path: Path, filename: str
):
    body = make_installer(tmp_path, "6.2").read_bytes()
    before = snapshot(app_state)
    http = live.session("uploader")
    response = http.post(
        f"{live.url}/api/v1/artifacts", files={"file": (filename, body)}, timeout=30
    )
    assert_error(response, 400, "invalid_filename")
    assert snapshot(app_state) == before
