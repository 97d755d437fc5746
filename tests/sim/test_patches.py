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


def test_a_file_never_loads_as_another_module_and_a_bad_entry_fails_alone(make_host, tmp_path):
    """As Erlang's loader: ncs_x.beam holding module ncs_y is refused, not loaded as ncs_y;
    an entry named like a module that is no file fails that entry, and the rest load."""
    host = make_host("6.2", [])
    patches = host.path("/opt/ncs/current/lib/ncs/patches")
    beams = [("P1", "ncs_good"), ("P2", "ncs_y")]
    for patch_id, module in beams:
        out = tmp_path / module
        sim("make-patch", "6.2", patch_id, "--module", module, "--beam-only", "--out", str(out))
    (patches / "ncs_good.beam").write_bytes((tmp_path / "ncs_good" / "ncs_good.beam").read_bytes())
    (patches / "ncs_x.beam").write_bytes((tmp_path / "ncs_y" / "ncs_y.beam").read_bytes())
    (patches / "ncs_a_dir.beam").mkdir()
    out, status = host.cli("ncs-state patches load-modules")
    assert status == 1, out
    assert "module ncs_good loaded" in out
    assert "ncs_x.beam holds module ncs_y, not ncs_x" in out
    assert "ncs_a_dir" in out and "failed" in out
    listing = host.cli("show ncs-state patches")[0]
    assert "ncs_good" in listing and "ncs_y" not in listing and "ncs_x" not in listing
