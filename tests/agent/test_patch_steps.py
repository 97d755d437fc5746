"""apply_patch and remove_patch on simulated NSO hosts, driven as the runner drives them,
with the bundle served over real HTTP: what lands in the patches folder, what NSO loads,
that a second run changes nothing, and that a bundle or a release that is not right is
refused before anything is written."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agent import inventory
from agent.config import Config
from agent.errors import StepFailed
from agent.journal import Journal
from agent.steps import patches
from agent.steps.context import StepContext
from tests.support.sim_hosts import SimHost, sim

PATCHES = "/opt/ncs/current/lib/ncs/patches"


def config_for(host: SimHost) -> Config:
    """The agent's configuration for ``host``: its root and its CLI (user admin)."""
    return Config(
        root=str(host.root), cli_host=host.address, cli_port=host.cli_port, cli_password="admin"
    )


def make_bundle(folder: Path, vsn: str, patch_id: str, *modules: str) -> Path:
    sim(
        "make-patch",
        vsn,
        patch_id,
        *(a for m in modules for a in ("--module", m)),
        "--out",
        str(folder),
    )
    return folder / f"nso-{vsn}-patch-{patch_id}.tar.gz"


def params(file_server: Any, bundle: Path, vsn: str, patch_id: str, *modules: str) -> dict:
    served = file_server.add(bundle)
    return {
        "patch": {
            "filename": served.filename,
            "sha256": served.sha256,
            "size": served.size,
            "url": served.url,
        },
        "patch_id": patch_id,
        "nso_version": vsn,
        "modules": list(modules),
    }


def folder_state(host: SimHost) -> dict[str, tuple[int, bytes]]:
    """Each file of the patches folder: (inode, bytes)."""
    folder = host.path(PATCHES)
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(folder.iterdir())}


def listed(host: SimHost) -> str:
    return host.cli("show ncs-state patches")[0]


def test_apply_twice_then_remove_twice(make_host, file_server, driver, tmp_path) -> None:
    host = make_host("6.2", [])
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    step = params(file_server, bundle, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    drive = driver(config_for(host), file_server)

    assert drive.step("apply_patch", step) == {"modules": ["ncs_a", "ncs_b"], "changed": True}
    with tarfile.open(bundle) as tar:
        for module in ("ncs_a", "ncs_b"):
            member = tar.extractfile(f"{module}.beam")
            assert member is not None
            assert (host.path(PATCHES) / f"{module}.beam").read_bytes() == member.read()
    rows = [line.split()[:3] for line in listed(host).splitlines()[2:]]
    assert rows == [["ncs_a", "6.2", "CSCfix1"], ["ncs_b", "6.2", "CSCfix1"]]
    # Only the modules and NSO's own .keep: no temporary file left behind.
    assert sorted(folder_state(host)) == [".keep", "ncs_a.beam", "ncs_b.beam"]
    facts = inventory.collect(config_for(host))
    assert facts["patches"] == [
        {
            "module": m,
            "file": f"{m}.beam",
            "loaded": True,
            "patch_id": "CSCfix1",
            "nso_version": "6.2",
        }
        for m in ("ncs_a", "ncs_b")
    ]

    before = folder_state(host)
    assert drive.step("apply_patch", step) == {"modules": ["ncs_a", "ncs_b"], "changed": False}
    assert folder_state(host) == before  # not even rewritten: same inodes
    assert "load-modules" not in "\n".join(drive.last.lines)

    # Another patch's build of ncs_b lands meanwhile: removing CSCfix1 leaves it alone.
    other = make_bundle(tmp_path / "other", "6.2", "CSCfix2", "ncs_b")
    with tarfile.open(other) as tar:
        member = tar.extractfile("ncs_b.beam")
        assert member is not None
        (host.path(PATCHES) / "ncs_b.beam").write_bytes(member.read())
    host.cli("ncs-state patches load-modules")
    removed = drive.step("remove_patch", step)
    assert removed == {"modules": ["ncs_a"], "kept": ["ncs_b"], "changed": True}
    assert sorted(folder_state(host)) == [".keep", "ncs_b.beam"]
    shown = listed(host)
    assert "ncs_a" not in shown and "CSCfix2" in shown
    facts = inventory.collect(config_for(host))
    assert [p["module"] for p in facts["patches"]] == ["ncs_b"]

    again = drive.step("remove_patch", step)
    assert again == {"modules": ["ncs_a"], "kept": ["ncs_b"], "changed": False}


def test_a_patch_for_another_release_is_refused_before_anything(
    make_host, file_server, driver, tmp_path
) -> None:
    host = make_host("6.1", [])
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive = driver(config_for(host), file_server)
    before = folder_state(host)
    with pytest.raises(StepFailed, match=re.escape("built for NSO 6.2 and NSO here runs 6.1")):
        drive.step("apply_patch", params(file_server, bundle, "6.2", "CSCfix1", "ncs_a"))
    assert folder_state(host) == before
    assert file_server.requests == []  # not even downloaded
    # A step whose file name names another release than its nso_version is refused too.
    step = params(file_server, bundle, "6.1", "CSCfix1", "ncs_a")
    with pytest.raises(StepFailed, match=re.escape("the step 6.1 CSCfix1")):
        drive.step("apply_patch", step)
    assert folder_state(host) == before


def _hostile_bundle(folder: Path, name: str, members: list[tarfile.TarInfo], data: bytes) -> Path:
    path = folder / name
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "members,why",
    [
        (["../ncs_a.beam"], "is not at the top level"),
        (["/tmp/ncs_a.beam"], "is not at the top level"),
        ([("ncs_a.beam", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
        ([("ncs_a.beam", tarfile.LNKTYPE, "README")], "is a link"),
        (["ncs_a.beam", "run.sh"], "is no <module>.beam"),
        (["Ncs_A.beam"], "is no <module>.beam"),
    ],
    ids=["dot-dot", "absolute", "symlink", "hardlink", "script", "bad-module-name"],
)
def test_a_hostile_bundle_is_refused_and_nothing_is_written(
    make_host, file_server, driver, tmp_path, members, why
) -> None:
    host = make_host("6.2", [])
    with tarfile.open(make_bundle(tmp_path, "6.2", "real", "ncs_a")) as tar:
        handle = tar.extractfile("ncs_a.beam")
        assert handle is not None
        beam = handle.read()
    infos = [
        _member(m, beam) if isinstance(m, str) else _member(m[0], kind=m[1], link=m[2])
        for m in members
    ]
    hostile = _hostile_bundle(tmp_path, "nso-6.2-patch-CSCevil.tar.gz", infos, beam)
    drive = driver(config_for(host), file_server)
    before = folder_state(host)
    outside = sorted(os.listdir(host.path("/opt/ncs/current/lib/ncs")))
    with pytest.raises(StepFailed, match=re.escape(why)) as refused:
        drive.step("apply_patch", params(file_server, hostile, "6.2", "CSCevil", "ncs_a"))
    assert "nothing was written" in str(refused.value)
    assert folder_state(host) == before
    assert sorted(os.listdir(host.path("/opt/ncs/current/lib/ncs"))) == outside
    assert not host.path("/tmp/ncs_a.beam").exists()
    assert "% No entries found." in listed(host)


def test_a_bundle_holding_other_modules_than_the_step_names_is_refused(
    make_host, file_server, driver, tmp_path
) -> None:
    host = make_host("6.2", [])
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a", "ncs_extra")
    before = folder_state(host)
    with pytest.raises(StepFailed, match=re.escape("holds ncs_a, ncs_extra, the step names ncs_a")):
        driver(config_for(host), file_server).step(
            "apply_patch", params(file_server, bundle, "6.2", "CSCfix1", "ncs_a")
        )
    assert folder_state(host) == before


def test_a_module_nso_refuses_to_load_puts_the_folder_back(
    make_host, file_server, driver, tmp_path
) -> None:
    """NSO refuses a module (here: built for another release than its bundle says): the
    step fails with NSO's reason and the folder and NSO are as they were."""
    host = make_host("6.2", [])
    good = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive = driver(config_for(host), file_server)
    drive.step("apply_patch", params(file_server, good, "6.2", "CSCfix1", "ncs_a"))
    before = {k: v[1] for k, v in folder_state(host).items()}
    # A bundle named for 6.2 whose .beam says 6.1 inside (only NSO notices).
    wrong = make_bundle(tmp_path / "wrong", "6.1", "CSCfix2", "ncs_a")
    renamed = wrong.with_name("nso-6.2-patch-CSCfix2.tar.gz")
    wrong.rename(renamed)
    with pytest.raises(StepFailed, match=re.escape("built for NSO 6.1, running 6.2")) as failed:
        drive.step("apply_patch", params(file_server, renamed, "6.2", "CSCfix2", "ncs_a"))
    assert "put back" in str(failed.value)
    assert {k: v[1] for k, v in folder_state(host).items()} == before
    assert "CSCfix1" in listed(host)


def test_the_sha256_is_checked_before_the_bundle_is_read(
    make_host, file_server, driver, tmp_path
) -> None:
    host = make_host("6.2", [])
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    step = params(file_server, bundle, "6.2", "CSCfix1", "ncs_a")
    step["patch"]["sha256"] = hashlib.sha256(b"other bytes").hexdigest()
    before = folder_state(host)
    with pytest.raises(StepFailed, match=re.escape("does not match")):
        driver(config_for(host), file_server).step("apply_patch", step)
    assert folder_state(host) == before


def test_a_rerun_after_a_crash_still_puts_back_what_the_first_attempt_replaced(
    make_host, file_server, driver, tmp_path
) -> None:
    """The agent died after writing a module and before NSO loaded it; on the rerun the
    folder holds the new bytes. NSO refuses them: what goes back is what was there before
    the first attempt (saved under the agent's state folder), not the first attempt's bytes."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    good = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive.step("apply_patch", params(file_server, good, "6.2", "CSCfix1", "ncs_a"))
    before = {k: v[1] for k, v in folder_state(host).items()}
    wrong = make_bundle(tmp_path / "wrong", "6.1", "CSCfix2", "ncs_a")
    renamed = wrong.with_name("nso-6.2-patch-CSCfix2.tar.gz")
    wrong.rename(renamed)
    bad = params(file_server, renamed, "6.2", "CSCfix2", "ncs_a")

    # The first attempt, up to its crash: the bytes before saved, the new ones written.
    step = {"id": 555, "job_id": 7, "attempt": 1, "name": "apply_patch", "params": bad}
    journal = Journal(drive.config.journal_file)
    journal.begin(step)
    first = StepContext(drive.config, step, journal, drive.downloader)
    assert patches._before_apply(first, host.path(PATCHES), ["ncs_a"]) == {
        "ncs_a": before["ncs_a.beam"]
    }
    with tarfile.open(renamed) as tar:
        member = tar.extractfile("ncs_a.beam")
        assert member is not None
        host.path(PATCHES + "/ncs_a.beam").write_bytes(member.read())
    assert {k: v[1] for k, v in folder_state(host).items()} != before

    with pytest.raises(StepFailed, match="put back and loaded") as failed:
        drive.step("apply_patch", bad, step_id=555)  # the rerun, same step
    assert "built for NSO 6.1, running 6.2" in str(failed.value)
    assert {k: v[1] for k, v in folder_state(host).items()} == before
    assert "CSCfix1" in listed(host)
