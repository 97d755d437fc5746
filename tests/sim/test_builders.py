"""Artifact builders: installers, packages and patches in the formats the catalog expects."""

from __future__ import annotations

import gzip
import json
import re
import struct
import tarfile
import xml.etree.ElementTree as ET

from tests.support.sim_hosts import TIME_SCALE, sim

NS = "{http://tail-f.com/ns/ncs-packages}"


def test_installer_is_self_extracting_and_installs_beside_current(tmp_path, shell):
    out = tmp_path / "out"
    sim("make-installer", "6.2", "--arch", "arm64", "--out", str(out))
    sim("make-installer", "6.3", "--out", str(out))
    arm = out / "nso-6.2.linux.arm64.installer.bin"
    x86 = out / "nso-6.3.linux.x86_64.installer.bin"
    assert arm.read_bytes().startswith(b"#!/bin/sh")
    root = tmp_path / "root"
    (root / ".nso-sim").mkdir(parents=True)
    # The installer takes its nominal time (nso_sim/timings.py) times this scale.
    (root / ".nso-sim" / "host.json").write_text(json.dumps({"time_scale": TIME_SCALE}))
    first = shell(
        "sh", arm, "--system-install", "--non-interactive", env={"NSO_SIM_ROOT": str(root)}
    )
    assert first.returncode == 0, first.stderr
    assert (root / "opt/ncs/current").resolve().name == "ncs-6.2"
    for rel in ("bin/ncs", "bin/ncs-backup", "bin/ncs_cli", "lib/ncs/patches"):
        assert (root / "opt/ncs/ncs-6.2" / rel).exists(), rel
    assert (root / "etc/init.d/ncs").exists()
    keys = (root / "etc/ncs/ncs.crypto_keys").read_text()
    assert re.search(r"^AESCFB128_KEY=[0-9a-f]{32}$", keys, re.M)
    assert re.search(r"^AES256CFB128_KEY=[0-9a-f]{64}$", keys, re.M)
    # A second release lands beside the first; current is left alone by default.
    second = shell(
        "sh", x86, "--system-install", "--non-interactive", "--run-as-user", "admin", cwd=root
    )
    assert second.returncode == 0, second.stderr
    assert (root / "opt/ncs/ncs-6.3/bin/ncs").exists()
    assert (root / "opt/ncs/current").resolve().name == "ncs-6.2"
    assert shell(root / "opt/ncs/ncs-6.3/bin/ncs", "--version").stdout == "6.3\n"
    assert shell(root / "opt/ncs/current/bin/ncs", "--version").stdout == "6.2\n"


def test_installer_moving_current_is_a_host_knob(make_host, artifacts, shell):
    for moves, expected in ((False, "ncs-6.1"), (True, "ncs-6.2")):
        host = make_host(
            "6.1", [], start=False, extra=("--installer-moves-current",) if moves else ()
        )
        result = shell(
            "sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root
        )
        assert result.returncode == 0, result.stderr
        assert host.path("/opt/ncs/current").resolve().name == expected


def test_installer_without_a_root_refuses(tmp_path, artifacts, shell):
    result = shell("sh", artifacts.installer("6.2"), "--system-install", cwd=tmp_path)
    assert result.returncode == 1
    assert "no simulated host root" in result.stderr


def test_package_tarball_matches_the_catalog_contract(tmp_path):
    out = tmp_path / "pk"
    sim(
        "make-package",
        "router-nc",
        "1.0.2",
        "--nso",
        "6.2",
        "--ned-id",
        "router-nc-1.0",
        "--requires",
        "base:1.0",
        "--out",
        str(out),
    )
    path = out / "ncs-6.2-router-nc-1.0.2.tar.gz"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert {m.name.split("/")[0] for m in members} == {"router-nc"}
        assert all(m.isfile() or m.isdir() for m in members)
        assert all(not m.name.startswith("/") and ".." not in m.name for m in members)
        meta = ET.fromstring(tar.extractfile("router-nc/package-meta-data.xml").read())
        fxs = tar.extractfile("router-nc/load-dir/router-nc.fxs").read().decode()
    assert meta.tag == f"{NS}ncs-package"
    order = [child.tag.replace(NS, "") for child in meta]
    assert order[:4] == ["name", "package-version", "description", "ncs-min-version"]
    assert meta.findtext(f"{NS}name") == "router-nc"
    assert meta.findtext(f"{NS}package-version") == "1.0.2"
    assert meta.findtext(f"{NS}ncs-min-version") == "6.2"
    assert meta.findtext(f"{NS}required-package/{NS}name") == "base"
    ned_id = meta.find(f".//{NS}ned-id")
    assert ned_id is not None and ned_id.text == "id:router-nc-1.0"
    assert "compiled-for: 6.2" in fxs
    # Same inputs, same bytes: the catalog treats a re-upload as a no-op.
    first = path.read_bytes()
    sim(
        "make-package",
        "router-nc",
        "1.0.2",
        "--nso",
        "6.2",
        "--ned-id",
        "router-nc-1.0",
        "--requires",
        "base:1.0",
        "--out",
        str(out),
    )
    assert path.read_bytes() == first


def test_patch_bundle_holds_real_beam_containers(tmp_path):
    sim(
        "make-patch",
        "6.2",
        "CSC-fix.1",
        "--module",
        "ncs_fix",
        "--module",
        "cdb_fix",
        "--out",
        str(tmp_path),
    )
    bundle = tmp_path / "nso-6.2-patch-CSC-fix.1.tar.gz"
    with tarfile.open(bundle) as tar:
        names = sorted(m.name for m in tar.getmembers())
        assert names == ["README", "cdb_fix.beam", "ncs_fix.beam"]
        assert all(m.isfile() for m in tar.getmembers())
        data = tar.extractfile("ncs_fix.beam").read()
    assert data[:4] == b"FOR1" and data[8:12] == b"BEAM"
    assert struct.unpack(">I", data[4:8])[0] == len(data) - 8
    assert b"ncs_fix" in data and b"6.2" in data
    assert gzip.decompress(bundle.read_bytes())  # a real gzip stream
    bad = sim("make-patch", "6.2", "-bad", "--module", "x", "--out", str(tmp_path), check=False)
    assert bad.returncode != 0
