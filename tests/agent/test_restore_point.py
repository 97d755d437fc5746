"""The restore point on real files: taken whole or not at all, proven by checksum, restored
resumably after a crash at any point, and never trusted when damaged. Plus the load path
as a symlink to another volume (issue 7, finding 3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import packages
from agent import restore_point as rp
from agent.config import HostPaths
from agent.errors import StepFailed


def snapshot(root: Path) -> dict[str, object]:
    """Every file, link and folder under the run dir (without backups) and /etc/ncs."""
    seen: dict[str, object] = {}
    for area in ("var/opt/ncs", "etc/ncs"):
        base = root / area
        for folder, dirs, files in os.walk(base):
            rel = os.path.relpath(folder, root)
            if rel.startswith("var/opt/ncs/backups"):
                dirs[:] = []
                continue
            for name in dirs + files:
                path = Path(folder) / name
                key = f"{rel}/{name}"
                if path.is_symlink():
                    seen[key] = ("link", os.readlink(path))
                elif path.is_file():
                    seen[key] = ("file", path.read_bytes(), path.stat().st_mode & 0o777)
                else:
                    seen[key] = ("dir",)
    return seen


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    root = tmp_path / "root"
    (root / "var/opt/ncs/cdb").mkdir(parents=True)
    (root / "var/opt/ncs/cdb/A.cdb").write_bytes(b"snapshot\n" + b"tx\n" * 1000)
    (root / "var/opt/ncs/state").mkdir()
    (root / "var/opt/ncs/state/packages-in-use.json").write_text('{"packages": []}')
    (root / "var/opt/ncs/backups").mkdir()
    (root / "var/opt/ncs/backups/ncs-6.1@x.backup.gz").write_bytes(b"archive")
    (root / "opt/ncs/packages").mkdir(parents=True)
    (root / "opt/ncs/packages/ncs-6.1-a-1.0.tar.gz").write_bytes(b"a")
    (root / "var/opt/ncs/packages").mkdir()
    os.symlink(
        str(root / "opt/ncs/packages/ncs-6.1-a-1.0.tar.gz"),
        root / "var/opt/ncs/packages/ncs-6.1-a-1.0.tar.gz",
    )
    (root / "etc/ncs").mkdir(parents=True)
    (root / "etc/ncs/ncs.conf").write_text("<ncs-config/>\n")
    (root / "etc/ncs/ncs.crypto_keys").write_text("AES256CFB128_KEY=00\n")
    os.chmod(root / "etc/ncs/ncs.crypto_keys", 0o600)
    return HostPaths(root)


def upgrade_changes(paths: HostPaths) -> None:
    """What an upgraded release does to the data: new files, changed files, removed ones."""
    (paths.run_dir / "cdb/A.cdb").write_bytes(b"upgraded snapshot\n")
    (paths.run_dir / "cdb/O.cdb").write_bytes(b"new operational data")
    (paths.run_dir / "state/packages-in-use.json").unlink()
    (paths.run_dir / "streams").mkdir()
    (paths.config_dir / "ncs.conf").write_text("<ncs-config><edited/></ncs-config>\n")


TOKEN = "job-1-step-4-abc"


def restore(paths: HostPaths, dest: Path, tag: str, progress=None, save=None, guard=None):
    """Stage then swap, as ``recover`` does; the folders that hold what was replaced."""
    progress = {} if progress is None else progress
    save = save or (lambda p: None)
    rp.stage(paths, dest, TOKEN, progress, save, print)
    aside = rp.aside_folder(paths, paths.backups_dir / "job", tag)
    return rp.swap(paths, dest, aside, progress, save, guard or (lambda: None), print)


def test_a_restore_point_copies_everything_but_backups_and_proves_it(host, tmp_path):
    dest = host.backups_dir / "nso-agent-job-1" / "restore-point"
    before = snapshot(host.root)
    summary = rp.take(host, dest, TOKEN, print)
    assert summary == {
        "files": 4,
        "bytes": sum(len(v[1]) for v in before.values() if v[0] == "file"),
    }
    assert rp.check(dest) == []
    assert not (dest / "var/opt/ncs/backups").exists()
    assert os.readlink(dest / "var/opt/ncs/packages/ncs-6.1-a-1.0.tar.gz").endswith("a-1.0.tar.gz")
    assert (dest / "etc/ncs/ncs.crypto_keys").stat().st_mode & 0o777 == 0o600
    assert not dest.with_name("restore-point.partial").exists()
    # Taking it again keeps the whole one.
    mtime = (dest / rp.MANIFEST).stat().st_mtime_ns
    rp.take(host, dest, TOKEN, print)
    assert (dest / rp.MANIFEST).stat().st_mtime_ns == mtime


def test_another_jobs_restore_point_is_set_aside_and_never_used(host):
    """Job ids repeat when a server's database is rebuilt: the token tells them apart."""
    dest = host.backups_dir / "nso-agent-job-1" / "restore-point"
    rp.take(host, dest, "job-1-step-4-january", print)
    (host.run_dir / "cdb/A.cdb").write_bytes(b"june data")
    rp.take(host, dest, TOKEN, print)
    assert (dest / "var/opt/ncs/cdb/A.cdb").read_bytes() == b"june data"
    assert (dest.with_name("restore-point.stale-1") / "var/opt/ncs/cdb/A.cdb").exists()
    with pytest.raises(StepFailed, match="belongs to another job"):
        rp.stage(host, dest, "job-1-step-4-january", {}, lambda p: None, print)


@pytest.mark.parametrize("damage", ["changed", "missing", "manifest", "mode"])
def test_a_damaged_restore_point_is_never_restored(host, damage):
    dest = host.backups_dir / "rp"
    rp.take(host, dest, TOKEN, print)
    upgrade_changes(host)
    upgraded = snapshot(host.root)
    if damage == "changed":
        (dest / "var/opt/ncs/cdb/A.cdb").write_bytes(b"snapshot\n" + b"tx\n" * 999 + b"TX\n")
    elif damage == "missing":
        (dest / "etc/ncs/ncs.conf").unlink()
    elif damage == "mode":
        os.chmod(dest / "etc/ncs/ncs.crypto_keys", 0o644)
    else:
        (dest / rp.MANIFEST).write_text("{")
    with pytest.raises(StepFailed, match=r"damaged|cannot be trusted"):
        restore(host, dest, "replaced-1")
    assert snapshot(host.root) == upgraded  # nothing touched, no staged copy left


class Crash(Exception):
    pass


def test_restore_resumes_after_a_crash_at_every_point(host):
    dest = host.backups_dir / "rp"
    original = snapshot(host.root)
    rp.take(host, dest, TOKEN, print)
    upgrade_changes(host)
    upgraded = snapshot(host.root)

    # Count the journal saves of a whole restore, then crash after each one in turn.
    saves: list[dict[str, str]] = []
    restore(host, dest, "count", save=lambda p: saves.append(dict(p)))
    total = len(saves)
    assert total == 1 + 2 * 6  # all staged at once, then aside and placed per entry
    for crash_at in range(total):
        restore(host, dest, f"reset-{crash_at}")  # back to the upgraded state
        upgrade_changes(host)
        assert snapshot(host.root) == upgraded
        journal: dict[str, str] = {}
        calls = [0]

        def save(progress, crash_at=crash_at, journal=journal, calls=calls):
            calls[0] += 1
            if calls[0] > crash_at:
                raise Crash()
            journal.clear()
            journal.update(progress)

        with pytest.raises(Crash):
            restore(host, dest, f"aside-{crash_at}", dict(journal), save)
        # The restarted agent resumes from what the journal holds.
        kept = restore(host, dest, f"aside-{crash_at}", dict(journal))
        assert snapshot(host.root) == original, crash_at
        # What the upgrade had written is kept aside, not lost.
        aside = host.backups_dir / "job" / f"aside-{crash_at}"
        assert (aside / "var/opt/ncs/cdb/A.cdb").read_bytes() == b"upgraded snapshot\n"
        assert (aside / "var/opt/ncs/cdb/O.cdb").is_file()
        assert (aside / "etc/ncs/ncs.conf").read_text().startswith("<ncs-config><edited/>")
        assert kept or crash_at > 0  # a resumed attempt reports only its own moves


def test_a_staged_copy_cut_by_a_power_loss_is_made_again(host):
    dest = host.backups_dir / "rp"
    original = snapshot(host.root)
    rp.take(host, dest, TOKEN, print)
    upgrade_changes(host)
    progress: dict[str, str] = {}
    rp.stage(host, dest, TOKEN, progress, lambda p: None, print)
    # The journal says staged, but the copy on disk is cut short.
    (host.run_dir / f"{rp.STAGED}cdb" / "A.cdb").write_bytes(b"snap")
    restore(host, dest, "after-power-loss", progress)
    assert snapshot(host.root) == original


def test_swapping_stops_when_nso_is_started_meanwhile(host):
    dest = host.backups_dir / "rp"
    rp.take(host, dest, TOKEN, print)
    upgrade_changes(host)
    upgraded = snapshot(host.root)

    def started() -> None:
        raise StepFailed("NSO is started while its data is being restored")

    with pytest.raises(StepFailed, match="being restored"):
        restore(host, dest, "r", guard=started)
    # Nothing NSO uses was moved; the staged copies wait for the retry.
    after = snapshot(host.root)
    assert {k: v for k, v in after.items() if rp.STAGED not in k} == upgraded
    assert any(rp.STAGED in k for k in after)


def test_data_linked_to_another_volume_is_copied_and_restored(host, tmp_path):
    """/var/opt/ncs/cdb -> /data/cdb: the link alone would restore nothing."""
    volume = host.root / "data" / "cdb"
    volume.parent.mkdir()
    shutil.move(str(host.run_dir / "cdb"), str(volume))
    os.symlink("../../../data/cdb", host.run_dir / "cdb")
    dest = host.backups_dir / "rp"
    rp.take(host, dest, TOKEN, print)
    assert (dest / "elsewhere/data/cdb/A.cdb").is_file()
    assert os.readlink(dest / "var/opt/ncs/cdb") == "../../../data/cdb"
    original = (volume / "A.cdb").read_bytes()
    (volume / "A.cdb").write_bytes(b"UPGRADED schema data")
    kept = restore(host, dest, "r")
    assert (volume / "A.cdb").read_bytes() == original
    assert os.readlink(host.run_dir / "cdb") == "../../../data/cdb"
    assert any(p.endswith("elsewhere/data/cdb") for p in kept)


def test_a_cdb_folder_named_in_ncs_conf_outside_the_run_dir_is_copied(host):
    (host.root / "srv/cdb").mkdir(parents=True)
    (host.root / "srv/cdb/A.cdb").write_bytes(b"the real CDB")
    (host.config_dir / "ncs.conf").write_text(
        "<ncs-config><cdb><db-dir>/srv/cdb</db-dir></cdb></ncs-config>\n"
    )
    dest = host.backups_dir / "rp"
    rp.take(host, dest, TOKEN, print)
    assert (dest / "elsewhere/srv/cdb/A.cdb").read_bytes() == b"the real CDB"


def test_a_restore_point_needs_room(host, tmp_path):
    big = host.run_dir / "cdb" / "big.cdb"
    st = os.statvfs(host.run_dir)
    free = st.f_bavail * st.f_frsize
    with open(big, "wb") as fh:
        fh.truncate(free + (1 << 30))  # sparse: reported size beyond the free space
    with pytest.raises(StepFailed, match="MiB free; the restore point needs"):
        rp.take(host, host.backups_dir / "rp", TOKEN, print)
    assert not (host.backups_dir / "rp").exists()
    assert not (host.backups_dir / "rp.partial").exists()


def test_relink_keeps_an_operators_load_path_link(tmp_path):
    """/var/opt/ncs/packages -> /data/ncs-packages: the link stays, its folder changes."""
    store = tmp_path / "opt/ncs/packages"
    store.mkdir(parents=True)
    for name in ("ncs-6.1-a-1.0.tar.gz", "ncs-6.2-a-1.0.tar.gz"):
        (store / name).write_bytes(name.encode())
    volume = tmp_path / "data" / "ncs-packages"
    volume.mkdir(parents=True)
    os.symlink(store / "ncs-6.1-a-1.0.tar.gz", volume / "ncs-6.1-a-1.0.tar.gz")
    load_dir = tmp_path / "var/opt/ncs/packages"
    load_dir.parent.mkdir(parents=True)
    os.symlink("../../../data/ncs-packages", load_dir)
    # A staging folder a killed agent left behind is swept.
    (volume.parent / ".ncs-packages.new-99999").mkdir()

    assert packages.relink(load_dir, [store / "ncs-6.2-a-1.0.tar.gz"])
    assert os.readlink(load_dir) == "../../../data/ncs-packages"
    assert packages.current_links(volume) == {
        "ncs-6.2-a-1.0.tar.gz": str(store / "ncs-6.2-a-1.0.tar.gz")
    }
    assert sorted(p.name for p in volume.parent.iterdir()) == ["ncs-packages"]
    assert sorted(p.name for p in load_dir.parent.iterdir()) == ["packages"]
    assert not packages.relink(load_dir, [store / "ncs-6.2-a-1.0.tar.gz"])


MOUNTED = """
import os, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from agent import restore_point as rp
from agent.config import HostPaths

root = Path(sys.argv[1])
host = HostPaths(root)
for folder in (root / "etc/ncs", root / "var/opt/ncs/cdb"):  # other file systems
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], check=True)
    for name, data in saved.items():
        (folder / name).write_bytes(data)
dest = host.backups_dir / "rp"
rp.take(host, dest, "t", print)
print("AREAS", [a.rel for a in rp.read_manifest(dest).areas])
(root / "var/opt/ncs/cdb/A.cdb").write_bytes(b"upgraded")
(root / "etc/ncs/ncs.conf").write_text("<edited/>")
progress = {}
rp.stage(host, dest, "t", progress, lambda p: None, print)
kept = rp.swap(host, dest, rp.aside_folder(host, host.backups_dir / "job", "r"), progress,
               lambda p: None, lambda: None, print)
print("CDB", (root / "var/opt/ncs/cdb/A.cdb").read_bytes()[:8])
print("CONF", (root / "etc/ncs/ncs.conf").read_text()[:13])
print("KEPT", kept)
print("MOUNT", os.path.ismount(root / "var/opt/ncs/cdb"))
"""


def test_restore_across_file_systems_and_a_mounted_cdb_folder(host, tmp_path):
    """/etc on its own partition (a rename to backups/ would fail with EXDEV) and the CDB
    folder a mount point (it cannot be renamed at all): in a private mount namespace."""
    repo = str(Path(__file__).resolve().parents[2])
    command = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MOUNTED]
    out = subprocess.run(
        [*command, str(host.root), repo], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "'elsewhere/var/opt/ncs/cdb'" in out.stdout  # the mount is an area of its own
    assert "CDB b'snapshot'" in out.stdout
    assert "CONF <ncs-config/>" in out.stdout
    assert "MOUNT True" in out.stdout
    kept = out.stdout.split("KEPT", 1)[1]
    assert "/etc/ncs/.nso-agent-replaced-r" in kept  # beside /etc/ncs, on its file system
    assert "/var/opt/ncs/cdb/.nso-agent-replaced-r" in kept
