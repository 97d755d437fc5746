"""apply_patch and remove_patch on simulated NSO hosts, driven as the runner drives them,
with the bundle served over real HTTP: what lands in the patches folder, what NSO loads,
that a second run changes nothing, and that a bundle or a release that is not right is
refused before anything is written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
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


def _signed(step: dict[str, Any], key: Any, **changes: Any) -> dict[str, Any]:
    """``step`` with the manifest `nso-repo patch sign` signs for it (``changes``: fields of
    the manifest made to differ from the step), signed with ``key``."""
    from repo_server.catalog import release_manifest as signing

    patch = step["patch"]
    fields: dict[str, Any] = {
        "filename": patch["filename"],
        "sha256": patch["sha256"],
        "size": patch["size"],
        "nso_version": step["nso_version"],
        "patch_id": step["patch_id"],
        "modules": step["modules"],
        **changes,
    }
    text = signing.canonical_bytes(signing.patch_manifest(**fields)).decode("ascii")
    signature = signing.sign(key, text.encode("ascii"))
    return {
        **step,
        "patch_manifest": text,
        "patch_signatures": [{"key_id": signing.key_id(key.public_key()), "signature": signature}],
    }


def test_an_agent_that_installs_only_signed_files_applies_only_a_signed_patch(
    make_host, file_server, driver, tmp_path
) -> None:
    """With the release manager's key, an agent refuses a bundle that key did not sign, or
    one that differs from what it signed, before a byte is fetched (a server in other hands
    could otherwise load any module into NSO); it applies the one signed; removing is not
    refused."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from repo_server.catalog import release_manifest as signing

    host = make_host("6.2", [])
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub = host.path("/etc/nso-agent/release-signing.pub")
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_text(signing.public_pem(key.public_key()))
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    step = params(file_server, bundle, "6.2", "CSCfix1", "ncs_a")
    trusting = Config(
        **{**vars(config_for(host)), "release_public_key": "/etc/nso-agent/release-signing.pub"}
    )
    drive = driver(trusting, file_server)
    before = folder_state(host)
    refusals = [
        (step, "it carries no signed manifest"),
        (_signed(step, other), "it is signed only by key(s)"),
        (_signed(step, key, sha256="0" * 64), "bundle nso-6.2-patch-CSCfix1.tar.gz: sha256"),
        (_signed(step, key, modules=["ncs_a", "ncs_b"]), "modules ['ncs_a'] in the step"),
        (_signed(step, key, patch_id="CSCfix2"), "patch_id CSCfix1 in the step, CSCfix2"),
        ({**_signed(step, key), "modules": ["ncs_b"]}, "modules ['ncs_b'] in the step"),
    ]
    for sent, why in refusals:
        file_server.requests.clear()
        with pytest.raises(StepFailed, match=re.escape(why)):
            drive.step("apply_patch", sent)
        assert file_server.requests == []
        assert folder_state(host) == before
    assert "ncs_a" not in listed(host)

    assert drive.step("apply_patch", _signed(step, key))["changed"] is True
    assert "ncs_a" in listed(host)
    # Taking a patch out installs nothing: no signature asked for.
    assert drive.step("remove_patch", step)["changed"] is True


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
    assert patches._before_apply(first, host.path(PATCHES), ["ncs_a"]).files == {
        "ncs_a": before["ncs_a.beam"]
    }
    first.close()
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


# -- failures after the first write: the node goes back, or the report says it did not ------


def beam(folder: Path, vsn: str, patch_id: str, module: str) -> bytes:
    """``module``'s .beam as ``nso-sim make-patch`` builds it for release ``vsn``."""
    out = folder / f"beams-{vsn}-{patch_id}-{module}"
    sim("make-patch", vsn, patch_id, "--module", module, "--beam-only", "--out", str(out))
    return (out / f"{module}.beam").read_bytes()


def rebuilt(data: bytes) -> bytes:
    """The same module of the same patch compiled again: another compile time in the
    simulator's NSOs chunk (as long as the first, so the container stays well formed)."""
    assert data.count(b"2024-01-21T10:00:00") == 1
    return data.replace(b"2024-01-21T10:00:00", b"2024-02-22T11:00:00")


def unreadable(data: bytes, module: str) -> bytes:
    """``module``'s .beam with a blank in its module atom (``ncs_b`` -> ``ncs b``): when NSO
    refuses it, load-modules answers a line the agent cannot read (CliError)."""
    atom = bytes([len(module)]) + module.encode()
    assert data.count(atom) == 1
    return data.replace(atom, atom.replace(b"_", b" "))


def bundle_of(folder: Path, vsn: str, patch_id: str, beams: dict[str, bytes]) -> Path:
    """nso-<vsn>-patch-<patch_id>.tar.gz holding ``beams`` as given: the catalog and the
    agent check the name and the BEAM header, not what the module says inside."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"nso-{vsn}-patch-{patch_id}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for module, data in beams.items():
            info = tarfile.TarInfo(f"{module}.beam")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def files(host: SimHost) -> dict[str, bytes]:
    return {k: v[1] for k, v in folder_state(host).items()}


def undo_saves(drive: Any) -> list[str]:
    """The undo folders the agent keeps under its state folder."""
    saved = drive.config.state_path / "patch-undo"
    return sorted(os.listdir(saved)) if saved.exists() else []


def mislabelled_bundle(tmp_path):
    """A bundle named for patch CSCfix2 whose ncs_a.beam is CSCfix1's build."""
    return bundle_of(
        tmp_path / "mislabelled",
        "6.2",
        "CSCfix2",
        {"ncs_a": beam(tmp_path, "6.2", "CSCfix1", "ncs_a")},
    )


def test_a_beam_of_another_patch_is_taken_out_again(
    make_host, file_server, driver, tmp_path
) -> None:
    """The bundle's name says CSCfix2, its .beam is CSCfix1's: NSO loads it and lists it
    under CSCfix1. The step fails, the file goes out again, and the report says unchanged."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    before = files(host)
    mislabelled = mislabelled_bundle(tmp_path)
    with pytest.raises(StepFailed, match="does not list ncs_a with patch CSCfix2") as failed:
        drive.step("apply_patch", params(file_server, mislabelled, "6.2", "CSCfix2", "ncs_a"))
    assert "put back and loaded: the node is as it was" in str(failed.value)
    assert failed.value.result == {"changed": False}
    assert files(host) == before
    assert "% No entries found." in listed(host)
    assert undo_saves(drive) == []


def test_an_answer_the_agent_cannot_read_after_nso_loaded_still_puts_back(
    make_host, file_server, driver, tmp_path
) -> None:
    """NSO loads ncs_a, then load-modules answers a line the agent cannot read (a CliError,
    not a StepFailed): the files still go out and NSO unloads what it loaded."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    before = files(host)
    bundle = bundle_of(
        tmp_path / "odd",
        "6.2",
        "CSCfix2",
        {
            "ncs_a": beam(tmp_path, "6.2", "CSCfix2", "ncs_a"),
            "ncs_b": unreadable(beam(tmp_path, "6.1", "CSCfix2", "ncs_b"), "ncs_b"),
        },
    )
    with pytest.raises(StepFailed, match="did not say result ok") as failed:
        drive.step("apply_patch", params(file_server, bundle, "6.2", "CSCfix2", "ncs_a", "ncs_b"))
    assert "put back and loaded: the node is as it was" in str(failed.value)
    assert failed.value.result == {"changed": False}
    assert files(host) == before
    assert "% No entries found." in listed(host)


def test_a_put_back_that_fails_says_both_errors_and_that_the_node_changed(
    make_host, file_server, driver, tmp_path
) -> None:
    """The folder held a module NSO refuses (left there by hand). The step fails, and the
    load-modules after the put-back fails too: the report keeps the first reason, adds the
    second, says where the folder and NSO stand, and says changed."""
    host = make_host("6.2", [])
    leftover = unreadable(beam(tmp_path, "6.1", "CSCold", "ncs_a"), "ncs_a")
    (host.path(PATCHES) / "ncs_a.beam").write_bytes(leftover)
    drive = driver(config_for(host), file_server)
    before = files(host)
    mislabelled = mislabelled_bundle(tmp_path)
    with pytest.raises(StepFailed, match="does not list ncs_a with patch CSCfix2") as failed:
        drive.step("apply_patch", params(file_server, mislabelled, "6.2", "CSCfix2", "ncs_a"))
    message = str(failed.value)
    assert "load-modules after putting the files back failed" in message
    assert "did not say result ok" in message
    assert "the patches folder holds ncs_a.beam as before" in message
    assert (
        "NSO lists ncs_a 6.2 CSCfix1 2024-01-21T10:00:00 (before the step: none of ncs_a)"
        in message
    )
    assert failed.value.result == {"changed": True}
    assert files(host) == before
    # The files from before stay where the message says, for the operator.
    [saved] = undo_saves(drive)
    assert saved in message
    assert (drive.config.state_path / "patch-undo" / saved / "ncs_a.beam").read_bytes() == leftover
    # `nso-agent status` names it, as long as it is kept.
    conf = tmp_path / "agent.conf"
    conf.write_text(f"[host]\nroot = {host.root}\n[cli]\nhost = {host.address}\n")
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(conf), "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert [Path(p).name for p in json.loads(shown.stdout)["patch_undo_saves"]] == [saved]

    # A later apply takes out saves older than UNDO_KEEP_DAYS, and only those.
    young = drive.config.state_path / "patch-undo" / "job-1-step-2"
    young.mkdir()
    old = drive.config.state_path / "patch-undo" / saved
    aged = time.time() - patches.UNDO_KEEP_DAYS * 86400 - 60
    os.utime(old, (aged, aged))
    (host.path(PATCHES) / "ncs_a.beam").unlink()
    host.cli("ncs-state patches load-modules")
    good = make_bundle(tmp_path / "good", "6.2", "CSCfix3", "ncs_c")
    drive.step("apply_patch", params(file_server, good, "6.2", "CSCfix3", "ncs_c"))
    assert undo_saves(drive) == ["job-1-step-2"]


def test_the_put_back_is_checked_against_what_nso_listed_before(
    make_host, file_server, driver, tmp_path
) -> None:
    """NSO ran CSCfix1's ncs_a while the folder held another build nobody had loaded. The
    files go back as they were, but NSO now runs that other build: not as before."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    good = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive.step("apply_patch", params(file_server, good, "6.2", "CSCfix1", "ncs_a"))
    (host.path(PATCHES) / "ncs_a.beam").write_bytes(beam(tmp_path, "6.2", "CSCfix0", "ncs_a"))
    before = files(host)
    wrong = bundle_of(
        tmp_path / "wrong", "6.2", "CSCfix2", {"ncs_a": beam(tmp_path, "6.1", "CSCfix2", "ncs_a")}
    )
    with pytest.raises(StepFailed, match=re.escape("built for NSO 6.1, running 6.2")) as failed:
        drive.step("apply_patch", params(file_server, wrong, "6.2", "CSCfix2", "ncs_a"))
    message = str(failed.value)
    assert "the node is not as it was before the step" in message
    assert (
        "NSO lists ncs_a 6.2 CSCfix0 2024-01-21T10:00:00 (before the step: ncs_a 6.2 CSCfix1 "
        "2024-01-21T10:00:00)"
    ) in message
    assert failed.value.result == {"changed": True}
    assert files(host) == before


def test_a_put_back_that_loads_another_build_than_nso_ran_says_changed(
    make_host, file_server, driver, tmp_path
) -> None:
    """NSO ran one build of CSCfix1's ncs_a while the folder held another of the same patch,
    never loaded. A failed apply puts that file back and loads it: NSO now runs the other
    build (its compile time tells them apart), so the node is not as it was."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    good = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive.step("apply_patch", params(file_server, good, "6.2", "CSCfix1", "ncs_a"))
    folder = host.path(PATCHES)
    (folder / "ncs_a.beam").write_bytes(rebuilt((folder / "ncs_a.beam").read_bytes()))
    before = files(host)
    wrong = bundle_of(
        tmp_path / "wrong", "6.2", "CSCfix2", {"ncs_a": beam(tmp_path, "6.1", "CSCfix2", "ncs_a")}
    )
    with pytest.raises(StepFailed) as failed:
        drive.step("apply_patch", params(file_server, wrong, "6.2", "CSCfix2", "ncs_a"))
    assert failed.value.result == {"changed": True}, str(failed.value)
    assert "2024-02-22T11:00:00" in str(failed.value)
    assert "(before the step: ncs_a 6.2 CSCfix1 2024-01-21T10:00:00)" in str(failed.value)
    assert files(host) == before and "2024-02-22T11:00:00" in listed(host)


def _patched_then_rebuilt(
    make_host: Any, file_server: Any, driver: Any, tmp_path: Path
) -> tuple[SimHost, Any, dict[str, bytes], dict]:
    """A host running CSCfix1's ncs_a, its agent, a rebuild of that module (same patch id,
    another compile time) and the step that applies the rebuild."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    first = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive.step("apply_patch", params(file_server, first, "6.2", "CSCfix1", "ncs_a"))
    assert "2024-01-21T10:00:00" in listed(host)
    new = {"ncs_a": rebuilt((host.path(PATCHES) / "ncs_a.beam").read_bytes())}
    step = params(
        file_server, bundle_of(tmp_path / "new", "6.2", "CSCfix1", new), "6.2", "CSCfix1", "ncs_a"
    )
    return host, drive, new, step


def test_an_apply_loads_the_folder_when_nso_runs_another_build_of_it(
    make_host, file_server, driver, tmp_path
) -> None:
    """The folder already holds the bundle's build of ncs_a and NSO lists ncs_a of this
    patch, but runs another build of it (the file was copied after the last load): the
    apply loads it and says changed; a second apply then finds nothing to do."""
    host, drive, new, step = _patched_then_rebuilt(make_host, file_server, driver, tmp_path)
    (host.path(PATCHES) / "ncs_a.beam").write_bytes(new["ncs_a"])
    assert drive.step("apply_patch", step) == {"modules": ["ncs_a"], "changed": True}
    assert "2024-02-22T11:00:00" in listed(host)
    assert drive.step("apply_patch", step) == {"modules": ["ncs_a"], "changed": False}


def test_another_patch_module_nso_refuses_does_not_spoil_the_put_back(
    make_host, file_server, driver, tmp_path
) -> None:
    """A module of another patch in the folder fails at every load-modules: the put-back
    of this patch's files is judged on this patch's modules alone."""
    host = make_host("6.2", [])
    (host.path(PATCHES) / "ncs_z.beam").write_bytes(beam(tmp_path, "6.1", "CSCold", "ncs_z"))
    drive = driver(config_for(host), file_server)
    before = files(host)
    wrong = bundle_of(
        tmp_path / "wrong", "6.2", "CSCfix2", {"ncs_a": beam(tmp_path, "6.1", "CSCfix2", "ncs_a")}
    )
    with pytest.raises(StepFailed, match=re.escape("ncs_a: built for NSO 6.1")) as failed:
        drive.step("apply_patch", params(file_server, wrong, "6.2", "CSCfix2", "ncs_a"))
    assert "put back and loaded: the node is as it was" in str(failed.value)
    assert failed.value.result == {"changed": False}
    assert files(host) == before


def _crash_after_write(
    drive: Any, host: SimHost, step: dict, step_id: int, beams: dict[str, bytes], load: bool
) -> None:
    """The first attempt of step ``step_id`` up to a crash: the undo state saved, the new
    bytes written, and with ``load`` NSO told to load them (the report never went out)."""
    entry = {"id": step_id, "job_id": 7, "attempt": 1, "name": "apply_patch", "params": step}
    journal = Journal(drive.config.journal_file)
    journal.begin(entry)
    first = StepContext(drive.config, entry, journal, drive.downloader)
    patches._before_apply(first, host.path(PATCHES), list(beams))
    first.close()
    for module, data in beams.items():
        (host.path(PATCHES) / f"{module}.beam").write_bytes(data)
    if load:
        host.cli("ncs-state patches load-modules")


@pytest.mark.parametrize("loaded", [False, True], ids=["before-load-modules", "after-it"])
def test_a_rerun_after_a_crash_loads_the_new_build_and_says_changed(
    make_host, file_server, driver, tmp_path, loaded
) -> None:
    """A rebuild of CSCfix1 (same patch id, NSO lists it alike) replaces the running build.
    The agent dies after writing it (before or after load-modules): the rerun finds the
    folder as it wants it and must still have NSO load it, and say it changed the node."""
    host, drive, new, step = _patched_then_rebuilt(make_host, file_server, driver, tmp_path)
    _crash_after_write(drive, host, step, 556, new, load=loaded)
    assert drive.step("apply_patch", step, step_id=556) == {"modules": ["ncs_a"], "changed": True}
    assert "2024-02-22T11:00:00" in listed(host)
    assert files(host)["ncs_a.beam"] == new["ncs_a"]
    assert undo_saves(drive) == []


def test_remove_leaves_a_failure_of_a_module_it_keeps_alone(
    make_host, file_server, driver, tmp_path
) -> None:
    """ncs_b is a later patch's now (CSCfix3, loaded), and its file yet another build that
    NSO refuses: the removal keeps it, so its failure at load-modules is not the removal's."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    step = params(file_server, bundle, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    drive.step("apply_patch", step)
    later = make_bundle(tmp_path, "6.2", "CSCfix3", "ncs_b")
    drive.step("apply_patch", params(file_server, later, "6.2", "CSCfix3", "ncs_b"))
    (host.path(PATCHES) / "ncs_b.beam").write_bytes(beam(tmp_path, "6.1", "CSCfix4", "ncs_b"))
    removed = drive.step("remove_patch", step)
    assert removed == {"modules": ["ncs_a"], "kept": ["ncs_b"], "changed": True}
    assert sorted(files(host)) == [".keep", "ncs_b.beam"]
    assert "ncs_a" not in listed(host)


def unpatched(make_host, file_server, driver, tmp_path) -> tuple[SimHost, Any, dict, Path]:
    """A host on 6.2 and patch CSCfix1 (ncs_a) served: the host, its driver, the apply
    step's params, the bundle."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    return host, drive, params(file_server, bundle, "6.2", "CSCfix1", "ncs_a"), bundle


def patched(make_host, file_server, driver, tmp_path) -> tuple[SimHost, Any, dict]:
    """As `unpatched`, with the patch applied."""
    host, drive, step, _ = unpatched(make_host, file_server, driver, tmp_path)
    drive.step("apply_patch", step)
    return host, drive, step


def test_a_removal_that_fails_after_taking_files_out_says_changed(
    make_host, file_server, driver, tmp_path
) -> None:
    host, drive, step = patched(make_host, file_server, driver, tmp_path)
    # Another module whose failure NSO reports in a line the agent cannot read.
    odd = unreadable(beam(tmp_path, "6.1", "CSCold", "ncs_z"), "ncs_z")
    (host.path(PATCHES) / "ncs_z.beam").write_bytes(odd)
    with pytest.raises(StepFailed, match="did not say result ok") as failed:
        drive.step("remove_patch", step)
    assert "taken ncs_a.beam out of the patches folder" in str(failed.value)
    assert failed.value.result == {"changed": True}
    assert sorted(files(host)) == [".keep", "ncs_z.beam"]


@pytest.mark.parametrize("stage", ["files-out", "unloaded"])
def test_a_removal_rerun_after_a_crash_still_says_changed(
    make_host, file_server, driver, tmp_path, stage
) -> None:
    """The agent dies during a removal: after taking the files out, or after NSO unloaded
    them, before the report went out. The rerun finds nothing left to remove, and must still
    say it changed the node (the server would call a node it unpatched unchanged)."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    step = params(file_server, bundle, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    drive.step("apply_patch", step)
    entry = {"id": 777, "job_id": 7, "attempt": 1, "name": "remove_patch", "params": step}
    journal = Journal(drive.config.journal_file)
    journal.begin(entry)
    first = StepContext(drive.config, entry, journal, drive.downloader)
    if stage == "unloaded":
        # The whole first attempt, its journal kept: the report is what never went out.
        assert patches.remove_patch(first)["changed"] is True
    else:
        # Up to the unlinks, as the step records them, then the crash.
        journal.update("patch_removal", patch_removal_began=True)
        for module in ("ncs_a", "ncs_b"):
            (host.path(PATCHES) / f"{module}.beam").unlink()
    first.close()

    again = drive.step("remove_patch", step, step_id=777)
    assert again == {"modules": ["ncs_a", "ncs_b"], "kept": [], "changed": True}
    assert "ncs_a" not in listed(host) and "ncs_b" not in listed(host)
    assert sorted(files(host)) == [".keep"]
    # A new removal step (another job) of the same, now absent, patch changes nothing.
    assert drive.step("remove_patch", step)["changed"] is False


def test_a_removal_stops_when_nso_runs_the_patch_from_a_file_since_replaced(
    make_host, file_server, driver, tmp_path
) -> None:
    """The file of the patch's module holds another build, written but not loaded (a later
    patch cut short): NSO still runs CSCfix1's ncs_a. The removal must not say the patch is
    off, nor load a build nobody asked for; it changes nothing and says what to do."""
    host, drive, step = patched(make_host, file_server, driver, tmp_path)
    other = beam(tmp_path, "6.2", "CSCfix9", "ncs_a")
    (host.path(PATCHES) / "ncs_a.beam").write_bytes(other)
    with pytest.raises(StepFailed, match="NSO still runs ncs_a of patch CSCfix1") as failed:
        drive.step("remove_patch", step)
    assert failed.value.result == {"changed": False}
    assert "CSCfix1" in listed(host) and files(host)["ncs_a.beam"] == other
    # Once that file is dealt with (taken out here), the removal unloads the patch.
    (host.path(PATCHES) / "ncs_a.beam").unlink()
    assert drive.step("remove_patch", step)["changed"] is True
    assert "ncs_a" not in listed(host)


# -- reruns: the outcome of an earlier attempt is told, and never undone by mistake ---------


def _first_attempt(drive: Any, step_id: int, name: str, step: dict) -> Any:
    """The whole first attempt of step ``step_id``, its journal kept (the agent stopped
    before the final report was saved): what the step returned."""
    entry = {"id": step_id, "job_id": 7, "attempt": 1, "name": name, "params": step}
    journal = Journal(drive.config.journal_file)
    journal.begin(entry)
    first = StepContext(drive.config, entry, journal, drive.downloader)
    try:
        return getattr(patches, name)(first)
    finally:
        first.close()


def rerun_fails(drive: Any, name: str, step: dict, step_id: int, match: str) -> StepFailed:
    """The rerun of step ``step_id`` (its journal kept), which must fail saying ``match``."""
    with pytest.raises(StepFailed, match=match) as failed:
        drive.step(name, step, step_id=step_id)
    return failed.value


@pytest.mark.parametrize("already", [False, True], ids=["new-patch", "already-there"])
def test_a_rerun_of_an_apply_that_succeeded_reports_it_and_puts_nothing_back(
    make_host, file_server, driver, tmp_path, already
) -> None:
    """The agent stopped after the apply succeeded (the undo save taken out) and before its
    report was saved. The rerun says what the first attempt did, runs no load-modules, and
    a lost CLI session on the rerun cannot make it take out modules that were loaded."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    bundle = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    step = params(file_server, bundle, "6.2", "CSCfix1", "ncs_a", "ncs_b")
    if already:
        drive.step("apply_patch", step)
    first = _first_attempt(drive, 901, "apply_patch", step)
    assert first == {"modules": ["ncs_a", "ncs_b"], "changed": not already}
    there = files(host)
    sim("fault", "set", "--root", str(host.root), "cli-exec-reply-lost", "load-modules", "--once")

    assert drive.step("apply_patch", step, step_id=901) == first
    assert drive.last is not None
    assert "load-modules" not in "\n".join(drive.last.lines)
    assert files(host) == there
    shown = listed(host)
    assert "ncs_a" in shown and "ncs_b" in shown
    assert undo_saves(drive) == []


def test_a_rerun_of_an_apply_that_succeeded_whose_listing_fails_still_says_changed(
    make_host, file_server, driver, tmp_path
) -> None:
    host, drive, step, _ = unpatched(make_host, file_server, driver, tmp_path)
    assert _first_attempt(drive, 905, "apply_patch", step)["changed"] is True
    lose_listing = ("fault", "set", "--root", str(host.root), "cli-exec-reply-lost")
    sim(*lose_listing, "ncs-state patches", "--once")
    failed = rerun_fails(drive, "apply_patch", step, 905, "an earlier attempt of this step applied")
    assert failed.result == {"changed": True}
    assert "CSCfix1" in listed(host)  # nothing was undone
    # An earlier attempt that found the patch in place changed nothing, and says so.
    assert _first_attempt(drive, 906, "apply_patch", step)["changed"] is False
    sim(*lose_listing, "ncs-state patches", "--once")
    failed = rerun_fails(drive, "apply_patch", step, 906, "an earlier attempt of this step applied")
    assert failed.result == {"changed": False}


def test_a_rerun_that_cannot_look_after_an_earlier_attempt_wrote_says_changed(
    make_host, file_server, driver, tmp_path
) -> None:
    """The first apply wrote its files, then the agent stopped; NSO was stopped meanwhile
    (a reboot). The rerun is refused before it can look, and must not call the node
    unchanged."""
    host, drive, step, bundle = unpatched(make_host, file_server, driver, tmp_path)
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("ncs_a.beam")
        assert member is not None
        _crash_after_write(drive, host, step, 902, {"ncs_a": member.read()}, load=False)
    Journal(drive.config.journal_file).update("patch_changing", patch_changing=True)
    host.stop()
    failed = rerun_fails(drive, "apply_patch", step, 902, "NSO is stopped")
    assert failed.result == {"changed": True}
    assert "an earlier attempt of this step" in str(failed)


def test_a_removal_rerun_that_cannot_start_says_changed(
    make_host, file_server, driver, tmp_path
) -> None:
    host, drive, step = patched(make_host, file_server, driver, tmp_path)
    assert _first_attempt(drive, 904, "remove_patch", step)["changed"] is True
    host.stop()
    failed = rerun_fails(drive, "remove_patch", step, 904, "NSO is stopped")
    assert failed.result == {"changed": True}


def test_a_temporary_file_of_a_write_cut_short_is_taken_out(
    make_host, file_server, driver, tmp_path
) -> None:
    """An attempt killed in the middle of a write leaves write_atomic's temporary file
    beside the module; the next apply or removal of the patch takes it out (and nothing of
    anyone else's)."""
    host, drive, step, _ = unpatched(make_host, file_server, driver, tmp_path)
    folder = host.path(PATCHES)
    (folder / ".ncs_a.beam.k2x_9q0z").write_bytes(b"half a module")
    (folder / ".ncs_a.beam.notours").write_bytes(b"someone else's")
    (folder / ".ncs_zz.beam.k2x_9q0z").write_bytes(b"another patch's")
    drive.step("apply_patch", step)
    assert sorted(files(host)) == [
        ".keep",
        ".ncs_a.beam.notours",
        ".ncs_zz.beam.k2x_9q0z",
        "ncs_a.beam",
    ]
    (folder / ".ncs_a.beam.abcdefgh").write_bytes(b"half a module")
    drive.step("remove_patch", step)
    assert sorted(files(host)) == [".keep", ".ncs_a.beam.notours", ".ncs_zz.beam.k2x_9q0z"]


def test_a_patch_that_replaces_another_patchs_module_says_so(
    make_host, file_server, driver, tmp_path
) -> None:
    """CSCfixB ships ncs_b too: its apply says whose build it replaces, since removing
    CSCfixB later takes ncs_b out and does not bring CSCfixA's back (docs/patches.md)."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    first = make_bundle(tmp_path, "6.2", "CSCfixA", "ncs_a", "ncs_b")
    drive.step("apply_patch", params(file_server, first, "6.2", "CSCfixA", "ncs_a", "ncs_b"))
    second = make_bundle(tmp_path / "b", "6.2", "CSCfixB", "ncs_b")
    step = params(file_server, second, "6.2", "CSCfixB", "ncs_b")
    assert drive.step("apply_patch", step)["changed"] is True
    assert drive.last is not None
    said = "\n".join(drive.last.lines)
    assert "ncs_b.beam replaces the build of patch CSCfixA" in said
    assert "ncs_a.beam replaces" not in said
    drive.step("remove_patch", step)
    assert sorted(files(host)) == [".keep", "ncs_a.beam"]


def test_a_rerun_after_a_failed_apply_was_put_back_keeps_the_earlier_patch(
    make_host, file_server, driver, tmp_path
) -> None:
    """An apply NSO refuses puts the folder back and drops its undo save; the agent dies
    before its failed report is kept, and the server hands the same step out again. The
    rerun must read the folder as it is (CSCfix1's ncs_a.beam), not the dropped save as
    "no file before": that would delete CSCfix1's module and unload it from NSO."""
    host = make_host("6.2", [])
    drive = driver(config_for(host), file_server)
    good = make_bundle(tmp_path, "6.2", "CSCfix1", "ncs_a")
    drive.step("apply_patch", params(file_server, good, "6.2", "CSCfix1", "ncs_a"))
    before = files(host)
    wrong = make_bundle(tmp_path / "wrong", "6.1", "CSCfix2", "ncs_a")
    renamed = wrong.rename(wrong.with_name("nso-6.2-patch-CSCfix2.tar.gz"))
    bad = params(file_server, renamed, "6.2", "CSCfix2", "ncs_a")
    with pytest.raises(StepFailed, match="put back and loaded") as first:
        drive.step("apply_patch", bad, step_id=555)
    assert first.value.result == {"changed": False}
    assert files(host) == before
    # Driver.step leaves the journal as a killed runner would (no final report kept).
    with pytest.raises(StepFailed) as rerun:
        drive.step("apply_patch", bad, step_id=555)
    assert rerun.value.result == {"changed": False}, rerun.value
    assert files(host) == before
    assert "CSCfix1" in listed(host)


def test_a_rerun_after_a_failure_with_nothing_to_undo_keeps_the_applied_patch(
    make_host, file_server, driver, tmp_path
) -> None:
    """The patch rolled out again to a node that runs it: nothing to write, and the listing
    after fails, so the step fails with nothing to undo and its undo save goes. The agent
    dies before that report is kept. The rerun must not read the save, gone, as "no file
    before": it would write the module again and say changed (or, failing, delete it)."""
    host, drive, step = patched(make_host, file_server, driver, tmp_path)
    there = files(host)
    # The step's first listing (what the node runs before it) answers; the second is lost.
    lose = ("fault", "set", "--root", str(host.root), "--once", "--skip", "1")
    sim(*lose, "cli-exec-reply-lost", "ncs-state patches")
    rerun_fails(drive, "apply_patch", step, 557, "nothing was changed")
    assert undo_saves(drive) == []
    assert drive.step("apply_patch", step, step_id=557) == {"modules": ["ncs_a"], "changed": False}
    assert files(host) == there
    assert "CSCfix1" in listed(host)


def test_a_rerun_whose_undo_save_is_gone_stops_and_touches_nothing(
    make_host, file_server, driver, tmp_path
) -> None:
    """The first attempt saved what the folder held (CSCfix1's ncs_a.beam), wrote the
    rebuild and died; the save was then removed by hand. Without it a put-back would take
    the module out: the rerun stops before writing, and never says the node is unchanged."""
    host, drive, new, step = _patched_then_rebuilt(make_host, file_server, driver, tmp_path)
    _crash_after_write(drive, host, step, 558, new, load=False)
    there = files(host)
    (save,) = undo_saves(drive)
    shutil.rmtree(drive.config.state_path / "patch-undo" / save)
    failed = rerun_fails(drive, "apply_patch", step, 558, "undo save .* is gone")
    assert failed.result.get("changed") is not False
    assert files(host) == there
