"""Details of ncs-backup that no public source gives and the simulator fixes (all marked
INVENTED in docs/nso-sim.md): the archive layout, choosing a backup, unsafe archives."""

from __future__ import annotations

import io
import json
import tarfile
import time


def _backup(host, shell) -> str:
    made = shell(host.path("/opt/ncs/current/bin/ncs-backup"))
    assert made.returncode == 0, made.stderr
    return made.stdout.split("Backup ", 1)[1].split(" created", 1)[0]


def _restore(host, shell, *args: str, input: str = ""):
    return shell(host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", *args, input=input)


def test_archive_layout_of_a_backup_taken_while_nso_runs(make_host, shell):
    host = make_host("6.1", [])
    with tarfile.open(_backup(host, shell)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("nso-sim-backup.json").read())
    assert names[0] == "nso-sim-backup.json"
    assert manifest["version"] == "6.1"
    assert {"etc/ncs/ncs.conf", "etc/ncs/ncs.crypto_keys", "var/opt/ncs/cdb/A.cdb"} <= set(names)
    assert not [n for n in names if n.startswith("var/opt/ncs/backups")]
    assert "var/opt/ncs/cdb/ncs.lock" not in names  # the running daemon's lock is not data


def test_choosing_the_backup_to_restore(make_host, shell):
    host = make_host("6.1", [], start=False)
    cdb = host.path("/var/opt/ncs/cdb/A.cdb")
    first = _backup(host, shell)
    cdb.write_text(cdb.read_text().replace('"txid": 1', '"txid": 2'))
    time.sleep(1)  # backup names have one-second stamps
    second = _backup(host, shell)
    cdb.write_text(cdb.read_text().replace('"txid": 2', '"txid": 3'))

    # Interactive: a numbered choice (oldest first), then a confirmation that defaults to no.
    aborted = _restore(host, shell, input="1\nn\n")
    assert aborted.returncode == 1
    assert aborted.stdout.startswith(
        f"1) {first.rsplit('/', 1)[1]}\n2) {second.rsplit('/', 1)[1]}\nSelect backup to restore: "
    )
    assert aborted.stdout.rstrip().endswith("INFO  Restore aborted")
    assert '"txid": 3' in cdb.read_text()
    # Non-interactive without a name: the newest.
    restored = _restore(host, shell, "--non-interactive")
    assert restored.returncode == 0, restored.stderr
    assert f"INFO  Restoring from {second}" in restored.stdout
    assert '"txid": 2' in cdb.read_text()


def _crafted(path, members: list[tuple[str, str]]) -> None:
    """A backup with a manifest, a folder, and symlinks (name -> target) or files (target "")."""
    with tarfile.open(path, "w:gz") as tar:
        for name, target in [("nso-sim-backup.json", ""), *members]:
            info = tarfile.TarInfo(name)
            data = json.dumps({"version": "6.1"}).encode() if name.endswith(".json") else b"x"
            if target:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_restore_refuses_writing_through_a_symlink_of_the_archive(make_host, shell, tmp_path):
    host = make_host("6.1", [], start=False)
    backups = host.path("/var/opt/ncs/backups")
    outside = tmp_path / "outside"
    outside.mkdir()
    _crafted(
        backups / "ncs-6.1@2024-01-01T00:00:00.backup.gz",
        [("var/opt/ncs/packages", str(outside)), ("var/opt/ncs/packages/evil", "")],
    )
    _crafted(backups / "ncs-6.1@2024-01-01T00:00:01.backup.gz", [("etc/ncs/keys", "/etc")])
    for name, why in (
        ("ncs-6.1@2024-01-01T00:00:00.backup.gz", "lies below a symlink"),
        ("ncs-6.1@2024-01-01T00:00:01.backup.gz", "is not a file or folder"),
    ):
        refused = _restore(host, shell, name, "--non-interactive")
        assert refused.returncode == 1 and why in refused.stderr, refused.stderr
    assert not any(outside.iterdir())
    assert not host.path("/var/opt/ncs.old").exists()
