"""The artifacts `nso-sim` builds are the ones the catalog ingests in tests and the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.helpers import put_file


def nso_sim(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "nso_sim", *args], check=True, capture_output=True, timeout=120
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_simulator_artifacts_are_accepted(live, tmp_path: Path) -> None:
    out_dir = tmp_path / "artifacts"
    out = str(out_dir)
    nso_sim("make-installer", "6.2", "--out", out)
    nso_sim(
        "make-package",
        "router-nc",
        "1.0.2",
        "--nso",
        "6.2",
        "--ned-id",
        "router-nc-1.0",
        "--out",
        out,
    )
    nso_sim(
        "make-package", "l3vpn", "2.1", "--nso", "6.2", "--requires", "router-nc:1.0", "--out", out
    )
    nso_sim("make-patch", "6.2", "PSIRT-42", "--module", "ncs_fix", "--out", out)
    uploader = live.session("uploader")
    kinds = {}
    for path in sorted(out_dir.iterdir()):
        answer = put_file(uploader, live.url, path)
        assert answer.status_code == 201, f"{path.name}: {answer.text}"
        kinds[path.name] = (answer.json()["kind"], answer.json()["meta"])
    assert kinds["nso-6.2.linux.x86_64.installer.bin"][0] == "installer"
    kind, meta = kinds["ncs-6.2-router-nc-1.0.2.tar.gz"]
    assert kind == "package" and meta["ned_ids"] == ["router-nc-1.0"]
    kind, meta = kinds["ncs-6.2-l3vpn-2.1.tar.gz"]
    assert [r["name"] for r in meta["required_packages"]] == ["router-nc"]
    kind, meta = kinds["nso-6.2-patch-PSIRT-42.tar.gz"]
    assert kind == "patch" and meta["modules"] == ["ncs_fix"]
