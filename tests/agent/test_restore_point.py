"""The restore point on real files: taken whole or not at all, proven by checksum, restored
resumably after a crash at any point, and never trusted when damaged. Plus the load path
as a symlink to another volume (issue 7, finding 3)."""

from __future__ import annotations

import os
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


def test_a_restore_point_copies_everything_but_backups_and_proves_it(host, tmp_path):
    dest = host.backups_dir / "nso-agent-job-1" / "restore-point"
    before = snapshot(host.root)
    summary = rp.take(host, dest, print)
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
    rp.take(host, dest, print)
    assert (dest / rp.MANIFEST).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["changed", "missing", "manifest"])
def test_a_damaged_restore_point_is_never_restored(host, damage):
    dest = host.backups_dir / "rp"
    rp.take(host, dest, print)
    upgrade_changes(host)
    upgraded = snapshot(host.root)
    if damage == "changed":
        (dest / "var/opt/ncs/cdb/A.cdb").write_bytes(b"snapshot\n" + b"tx\n" * 999 + b"TX\n")
    elif damage == "missing":
        (dest / "etc/ncs/ncs.conf").unlink()
    else:
        (dest / rp.MANIFEST).write_text("{")
    with pytest.raises(StepFailed, match=r"damaged|cannot be trusted"):
        rp.restore(host, dest, host.backups_dir / "aside", {}, lambda p: None, print)
    assert snapshot(host.root) == upgraded  # nothing touched


class Crash(Exception):
    pass


def test_restore_resumes_after_a_crash_at_every_point(host):
    dest = host.backups_dir / "rp"
    original = snapshot(host.root)
    rp.take(host, dest, print)
    upgrade_changes(host)
    upgraded = snapshot(host.root)

    # Count the journal saves of a whole restore, then crash after each one in turn.
    saves: list[dict[str, str]] = []
    rp.restore(host, dest, host.backups_dir / "count", {}, lambda p: saves.append(dict(p)), print)
    total = len(saves)
    assert total == 1 + 2 * 6  # all staged at once, then aside and placed per entry
    for crash_at in range(total):
        # Back to the upgraded state.
        rp.restore(host, dest, host.backups_dir / f"reset-{crash_at}", {}, lambda p: None, print)
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

        aside = host.backups_dir / f"aside-{crash_at}"
        with pytest.raises(Crash):
            rp.restore(host, dest, aside, dict(journal), save, print)
        # The restarted agent resumes from what the journal holds.
        rp.restore(host, dest, aside, dict(journal), lambda p: None, print)
        assert snapshot(host.root) == original, crash_at
        # What the upgrade had written is kept aside, not lost.
        assert (aside / "var/opt/ncs/cdb/A.cdb").read_bytes() == b"upgraded snapshot\n"
        assert (aside / "var/opt/ncs/cdb/O.cdb").is_file()
        assert (aside / "etc/ncs/ncs.conf").read_text().startswith("<ncs-config><edited/>")


def test_a_restore_point_needs_room(host, tmp_path):
    big = host.run_dir / "cdb" / "big.cdb"
    st = os.statvfs(host.run_dir)
    free = st.f_bavail * st.f_frsize
    with open(big, "wb") as fh:
        fh.truncate(free + (1 << 30))  # sparse: reported size beyond the free space
    with pytest.raises(StepFailed, match="MiB free; the restore point needs"):
        rp.take(host, host.backups_dir / "rp", print)
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
