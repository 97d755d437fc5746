"""The agent trusts nothing it is sent: every name becomes a path or CLI text only after a
strict check, every path from the server stays under the host root, and a package is read
one way only (``<top>/package-meta-data.xml``).

The server's part is played by the test (driver + file server), as a compromised server
or a man in the middle would: the values are what reaches the agent, not what the catalog
would accept.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from agent import packages as pkgs
from agent.config import Config
from agent.errors import AgentError, StepFailed

from .conftest import agent_config
from .test_upgrade_steps import refs

INJECTED = "router-nc | save overwrite /etc/ncs/ncs.conf"


def meta_xml(name: str, version: str, extra: str = "") -> bytes:
    return (
        f'{extra}<ncs-package xmlns="http://tail-f.com/ns/ncs-packages">'
        f"<name>{name}</name><package-version>{version}</package-version></ncs-package>"
    ).encode()


def repack(source: Path, dest: Path, extra: list[tuple[str, bytes]], first: bool = True) -> Path:
    """``source``'s members plus ``extra`` files (before the originals when ``first``)."""
    added = []
    for name, data in extra:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        added.append((info, data))
    buffer = io.BytesIO()
    with tarfile.open(source, "r:gz") as src, tarfile.open(fileobj=buffer, mode="w") as out:
        originals = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src]
        order = added + originals if first else originals + added
        for info, data in order:
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(gzip.compress(buffer.getvalue()))
    return dest


def cli_lines(drive) -> list[str]:
    return [line for line in drive.last.lines if line.startswith("ncs# ")]


def bare_config(tmp_path: Path) -> Config:
    """An agent pointed at an empty root: for refusals that must happen before the host
    is touched (nothing there to touch)."""
    root = tmp_path / "root"
    root.mkdir()
    return Config(server_url="http://127.0.0.1:9", root=str(root))


# -- the CLI: names and versions ---------------------------------------------------------


def test_a_nested_decoy_name_never_reaches_the_nso_cli(
    make_host, artifacts, file_server, driver, tmp_path
):
    """The finding: a decoy ``<top>/doc/package-meta-data.xml`` read first put its name into
    ``software packages install package ...``. Only ``<top>/package-meta-data.xml`` counts."""
    host = make_host("6.1")
    good = artifacts.service("6.1", "1.1")
    crafted = repack(
        good,
        tmp_path / "crafted" / good.name,
        [("l3vpn/doc/package-meta-data.xml", meta_xml(INJECTED, "1.1"))],
    )
    ref = refs(file_server, [crafted])  # no name/version: the agent reads them from the file
    drive = driver(agent_config(host), file_server)
    drive.step("prestage_packages", {"packages": ref})
    out = drive.step("install_packages", {"packages": ref})
    assert out == {"installed": ["installed ncs-6.1-l3vpn-1.1"]}
    assert cli_lines(drive) == [
        "ncs# software packages install package ncs-6.1-l3vpn-1.1 replace-existing"
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", INJECTED),
        ("name", "l3vpn; reboot"),
        ("name", "l3vpn\nrequest system reboot"),
        ("name", "-l3vpn"),
        ("name", "l3vpn\u2024x"),  # ONE DOT LEADER, looks like "."
        ("version", "1.1 replace-existing | save overwrite /etc/passwd"),
        ("version", "1.1`id`"),
        ("version", "1..1"),
    ],
)
def test_package_names_and_versions_from_the_server_are_checked_before_the_cli(
    make_host, artifacts, file_server, driver, field, value
):
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    ref = refs(file_server, [artifacts.service("6.1", "1.1")])
    drive.step("prestage_packages", {"packages": ref})
    ref[0].update(name="l3vpn", version="1.1")
    ref[0][field] = value
    for step in ("install_packages", "verify_packages"):
        with pytest.raises(StepFailed) as failed:
            drive.step(step, {"packages": ref})
        message = str(failed.value)
        assert f"packages[0].{field} {value!r}" in message, message
        assert "refused" in message
        assert cli_lines(drive) == [], step


def test_server_name_that_disagrees_with_the_file_is_refused(
    make_host, artifacts, file_server, driver
):
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    ref = refs(file_server, [artifacts.service("6.1", "1.1")])
    drive.step("prestage_packages", {"packages": ref})
    ref[0].update(name="router-nc", version="1.0")  # a valid name, but not this file's
    with pytest.raises(StepFailed, match=r"ncs-6\.1-l3vpn-1\.1\.tar\.gz is l3vpn 1\.1"):
        drive.step("install_packages", {"packages": ref})
    assert cli_lines(drive) == []


# -- file names before they become paths --------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    [
        "evil.tar.gz",
        "ncs-6.1-l3vpn-1.1.tar.gz;reboot",
        "ncs-6.1-l3vpn-1.1 .tar.gz",
        "ncs-6.1-l3vpn-1.1.tar.gz\n",
        "ncs-6.1-x..y-1.1.tar.gz",
        "ncs-6.1-l3vpn-1.1.tar.gz.bin",
        "ncs-6.1-\uff4c3vpn-1.1.tar.gz",  # FULLWIDTH l
        "ncs-6.1-l3vpn-1.1.tar.gz\\..\\x",
    ],
)
def test_package_file_names_follow_the_catalog_grammar(tmp_path, driver, file_server, filename):
    drive = driver(bare_config(tmp_path), file_server)
    ref = {"filename": filename, "sha256": "0" * 64, "size": 1, "url": "/files/x"}
    steps = ("prestage_packages", "install_packages", "relink_packages", "verify_packages")
    for step in (*steps, "prestage", "verify"):
        with pytest.raises(StepFailed) as failed:
            drive.step(step, {"packages": [ref], "target_version": "6.1"})
        assert f"packages[0].filename {filename!r}" in str(failed.value), step
        assert "ncs-<X.Y>-<name>-<version>.tar.gz" in str(failed.value)
    assert file_server.requests == []
    assert not (tmp_path / "root" / "opt").exists()  # nothing made on the host


@pytest.mark.parametrize(
    "filename",
    [
        "evil.sh",
        "nso-6.2.linux.x86_64.installer.bin;reboot",
        "nso-6.2_$(reboot).linux.x86_64.installer.bin",
        "nso-6.2.linux.x86_64.installer.sh",
        "nso-6.2.linux.i386.installer.bin",
        "nso-\uff16.2.linux.x86_64.installer.bin",  # FULLWIDTH 6
        "nso-6.3.linux.x86_64.installer.bin",  # well-formed, but not the target release
    ],
)
def test_installer_file_names_follow_the_catalog_grammar(tmp_path, driver, file_server, filename):
    drive = driver(bare_config(tmp_path), file_server)
    installer = {"filename": filename, "sha256": "0" * 64, "size": 1, "url": "/files/x"}
    with pytest.raises(StepFailed) as failed:
        drive.step("prestage", {"installer": installer, "packages": [], "target_version": "6.2"})
    assert f"installer.filename {filename!r}" in str(failed.value)
    assert file_server.requests == []


@pytest.mark.parametrize(
    "version", ["6.1/../../../../evil", "../6.1", "6.1 ", "6.1;x", "6", "6.x", "\uff16.1"]
)
def test_nso_versions_are_checked_before_they_become_paths(tmp_path, driver, version):
    drive = driver(bare_config(tmp_path))
    for step, params in (
        ("switch_current", {"target_version": version}),
        ("prestage", {"target_version": version, "packages": []}),
        ("recover", {"source_version": version, "target_started": False}),
    ):
        with pytest.raises(StepFailed) as failed:
            drive.step(step, params)
        assert repr(version) in str(failed.value) and "NSO version" in str(failed.value), step


def test_switch_current_never_points_outside_the_release_folders(make_host, driver, tmp_path):
    """``ncs-<VSN>`` with ``..`` in VSN resolved outside the root: the agent then ran
    ``current/bin/ncs`` from a folder anyone may write (``/tmp`` on a real host)."""
    host = make_host("6.1")
    evil = host.root.parent / "evil" / "bin" / "ncs"
    evil.parent.mkdir(parents=True)
    evil.write_text(f"#!/bin/sh\ntouch {host.root.parent}/ran-as-root\necho 6.1/../../../../evil\n")
    evil.chmod(0o755)
    drive = driver(agent_config(host))
    with pytest.raises(StepFailed, match="NSO version"):
        drive.step("switch_current", {"target_version": "6.1/../../../../evil"})
    assert os.readlink(host.path("/opt/ncs/current")) == "ncs-6.1"
    assert not (host.root.parent / "ran-as-root").exists()


def test_ncs_conf_element_names_are_checked(tmp_path, driver):
    drive = driver(bare_config(tmp_path))
    with pytest.raises(StepFailed, match=r"remove_elements\[0\] '\.\*' .* refused"):
        drive.step("ncs_conf", {"remove_elements": [".*"]})


# -- paths from the server stay under the host root ---------------------------------------


def test_recover_packages_refuses_an_extra_dir_outside_the_agents_folders(
    make_host, artifacts, driver, tmp_path
):
    """The finding: ``extra_dir`` was joined to the root unchecked, so a server could make
    the agent (root) relink NSO's load path from a ``links.json`` anywhere."""
    host = make_host("6.1")
    before = pkgs.current_links(host.path("/var/opt/ncs/packages"))
    planted = tmp_path / "planted"  # outside the host's root
    (planted / "packages").mkdir(parents=True)
    only = "ncs-6.1-l3vpn-1.0.tar.gz"
    links = {"links": {only: f"/opt/ncs/packages/{only}"}}
    (planted / "links.json").write_text(json.dumps(links))
    drive = driver(agent_config(host))
    hops = "/.." * (len(host.root.parts) - 1)
    for extra_dir in (f"{hops}{planted}", "/etc/ncs", "/var/opt/ncs/backups/../../../../x"):
        with pytest.raises(StepFailed) as failed:
            drive.step("recover_packages", {"extra_dir": extra_dir})
        assert f"extra_dir {extra_dir!r}" in str(failed.value)
        assert "is not a place this agent writes" in str(failed.value)
    assert pkgs.current_links(host.path("/var/opt/ncs/packages")) == before


def test_saved_links_never_point_outside_the_host_root(make_host, driver, tmp_path):
    """A ``links.json`` in the agent's own folder is a file on the host: its targets are
    resolved under the root too, never followed out of it."""
    host = make_host("6.1")
    before = pkgs.current_links(host.path("/var/opt/ncs/packages"))
    extra = host.path("/var/opt/ncs/backups/nso-agent-job-7/package-links")
    (extra / "packages").mkdir(parents=True)
    outside = tmp_path / "ncs-6.1-evil-1.0.tar.gz"
    outside.write_bytes(b"not a package")
    hops = "/.." * (len(host.root.parts) - 1)
    target = f"{hops}{outside}"
    (extra / "links.json").write_text(json.dumps({"links": {outside.name: target}}))
    drive = driver(agent_config(host))
    with pytest.raises(StepFailed, match="outside the host root"):
        drive.step(
            "recover_packages", {"extra_dir": "/var/opt/ncs/backups/nso-agent-job-7/package-links"}
        )
    assert pkgs.current_links(host.path("/var/opt/ncs/packages")) == before


# -- one reading of a package ----------------------------------------------------------------


def tarball(path: Path, files: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def test_read_meta_reads_only_the_top_level_file(tmp_path):
    path = tarball(
        tmp_path / "ncs-6.1-l3vpn-1.1.tar.gz",
        {
            "l3vpn/a/package-meta-data.xml": meta_xml(INJECTED, "9"),
            "l3vpn/package-meta-data.xml": meta_xml("l3vpn", "1.1"),
            "l3vpn/z/package-meta-data.xml": meta_xml("other", "9"),
        },
    )
    assert pkgs.read_meta(path) == ("l3vpn", "1.1")


def test_read_meta_refuses_two_top_level_files_and_two_top_folders(tmp_path):
    twice = tmp_path / "twice.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, version in (("l3vpn", "1.1"), (INJECTED, "1.1")):
            data = meta_xml(name, version)
            info = tarfile.TarInfo("l3vpn/package-meta-data.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    twice.write_bytes(gzip.compress(buffer.getvalue()))
    with pytest.raises(AgentError, match=r"more than one l3vpn/package-meta-data\.xml"):
        pkgs.read_meta(twice)
    tops = tarball(
        tmp_path / "tops.tar.gz",
        {
            "l3vpn/package-meta-data.xml": meta_xml("l3vpn", "1.1"),
            "other/package-meta-data.xml": meta_xml("other", "1.1"),
        },
    )
    with pytest.raises(AgentError, match="more than one top-level folder"):
        pkgs.read_meta(tops)


def test_read_meta_refuses_dtds_and_entities(tmp_path):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    )
    path = tarball(
        tmp_path / "ncs-6.1-l3vpn-1.1.tar.gz",
        {"l3vpn/package-meta-data.xml": meta_xml("&b;", "1.1", extra=bomb)},
    )
    with pytest.raises(AgentError, match="DTD"):
        pkgs.read_meta(path)


def test_reading_a_package_for_its_name_takes_bounded_memory(tmp_path: Path) -> None:
    """A package whose tar header says it is 200 MiB long (a few hundred KiB on the wire):
    reading its metadata (every heartbeat, every install) must not take the header into
    memory, where the root agent beside NSO would take as much as the file says."""
    import subprocess
    import sys

    size = 200 << 20
    bomb = tmp_path / "ncs-6.2-bomb-1.0.tar.gz"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, size
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        out.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        chunk = b"x" * (1 << 20)
        for _ in range(size >> 20):
            out.write(chunk)
    probe = (
        "import resource, sys; from pathlib import Path; from agent import packages\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    print(packages.read_meta(Path(sys.argv[1])))\n"
        "except packages.PackageMetaError as exc:\n    print('refused', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    answer, peak_mib = ran.stdout.splitlines()
    assert answer == "None"  # unreadable: no name from it
    assert int(peak_mib) < 64, f"reading the package took {peak_mib} MiB more"
