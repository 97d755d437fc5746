"""Emergency patches: .beam files in lib/ncs/patches, load-modules, listing, start-up."""

from __future__ import annotations

import tarfile

from tests.support.sim_hosts import run, sim


def test_patch_load_list_and_reload_at_start(make_host, tmp_path):
    host = make_host("6.2", [])
    assert host.cli("show ncs-state patches")[0].strip() == "% No entries found."
    sim("make-patch", "6.2", "CSCfix1", "--module", "ncs_fix1", "--out", str(tmp_path))
    with tarfile.open(tmp_path / "nso-6.2-patch-CSCfix1.tar.gz") as tar:
        tar.extract("ncs_fix1.beam", host.path("/opt/ncs/current/lib/ncs/patches"))
    assert host.cli("show ncs-state patches")[0].strip() == "% No entries found."
    out, status = host.cli("ncs-state patches load-modules")
    assert status == 0 and "module ncs_fix1 loaded" in out
    listing = host.cli("show ncs-state patches")[0].splitlines()
    assert listing[0] == "ncs-state patches"
    assert listing[1].split()[:3] == ["NAME", "VERSION", "PATCH-ID"]
    assert listing[2].split()[:3] == ["ncs_fix1", "6.2", "CSCfix1"]
    run(host.init, "restart")
    host.clients.clear()
    assert "ncs_fix1" in host.cli("show ncs-state patches")[0]


def test_patch_for_another_release_is_not_loaded(make_host, tmp_path):
    host = make_host("6.2", [])
    sim(
        "make-patch",
        "6.1",
        "old",
        "--module",
        "ncs_old",
        "--beam-only",
        "--out",
        str(host.path("/opt/ncs/current/lib/ncs/patches")),
    )
    out, status = host.cli("ncs-state patches load-modules")
    assert status == 1 and "built for NSO 6.1" in out
    assert "ncs_old" not in host.cli("show ncs-state patches")[0]


def test_load_modules_unloads_a_patch_whose_file_was_removed(make_host, tmp_path):
    host = make_host("6.2", [])
    patches = host.path("/opt/ncs/current/lib/ncs/patches")
    sim(
        "make-patch",
        "6.2",
        "P1",
        "--module",
        "ncs_a",
        "--module",
        "ncs_b",
        "--beam-only",
        "--out",
        str(patches),
    )
    out, status = host.cli("ncs-state patches load-modules")
    assert status == 0 and "module ncs_a loaded" in out and "module ncs_b loaded" in out
    (patches / "ncs_a.beam").unlink()
    # Until load-modules runs again, NSO keeps what it loaded.
    assert "ncs_a" in host.cli("show ncs-state patches")[0]
    out, status = host.cli("ncs-state patches load-modules")
    assert status == 0, out
    assert "module ncs_a unloaded" in out and "module ncs_b loaded" in out
    listing = host.cli("show ncs-state patches")[0]
    assert "ncs_a" not in listing and "ncs_b" in listing
    (patches / "ncs_b.beam").unlink()
    out, _ = host.cli("ncs-state patches load-modules")
    assert "module ncs_b unloaded" in out
    assert host.cli("show ncs-state patches")[0].strip() == "% No entries found."
