"""ncs-backup and ncs-backup --restore."""

from __future__ import annotations

import re

from tests.support.sim_hosts import run


def test_backup_and_restore_round_trip(make_host):
    host = make_host("6.1")
    before, _ = host.cli("show running-config")
    backup = run(host.path("/opt/ncs/current/bin/ncs-backup"))
    assert backup.returncode == 0
    line = backup.stdout.strip()
    match = re.fullmatch(
        r"INFO  Backup (\S+/var/opt/ncs/backups/"
        r"ncs-6\.1@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.backup\.gz) "
        r"created successfully",
        line,
    )
    assert match, line
    _out, status = host.cli("config\nno l3vpn\ncommit")
    assert status == 0
    assert "l3vpn" not in host.cli("show running-config")[0]

    refused = run(host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", "--non-interactive")
    assert refused.returncode == 1  # NSO must be stopped first
    run(host.init, "stop")
    name = match.group(1).rsplit("/", 1)[1]
    restore = run(
        host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", name, "--non-interactive"
    )
    assert restore.returncode == 0, restore.stderr
    assert restore.stdout.splitlines()[-1] == "INFO  Restore completed successfully"
    assert host.path("/var/opt/ncs.old/cdb/A.cdb").exists()
    assert run(host.init, "start").returncode == 0
    host.clients.clear()
    assert host.cli("show running-config")[0] == before


def test_backup_does_not_cover_opt_ncs_packages(make_host, tmp_path):
    host = make_host("6.1", start=False)
    assert run(host.path("/opt/ncs/current/bin/ncs-backup")).returncode == 0
    for stored in host.path("/opt/ncs/packages").iterdir():
        stored.unlink()
    restore = run(host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", "--non-interactive")
    assert restore.returncode == 0
    links = list(host.path("/var/opt/ncs/packages").iterdir())
    assert links and all(link.is_symlink() and not link.exists() for link in links)
    assert not any(host.path("/opt/ncs/packages").iterdir())


def test_local_install_backup_is_not_restored_into_a_system_install(make_host):
    """ncs-backup(1): local-install backups (named with ``_local``) restore only locally."""
    host = make_host("6.1", [], start=False)
    assert run(host.path("/opt/ncs/current/bin/ncs-backup")).returncode == 0
    made = next(host.path("/var/opt/ncs/backups").iterdir())
    local = made.with_name(made.name.replace("@", "_local@"))
    made.rename(local)
    restore = run(
        host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", local.name, "--non-interactive"
    )
    assert restore.returncode == 1 and "local install backup" in restore.stderr
    assert not host.path("/var/opt/ncs.old").exists()


def test_uncompressed_backup_restores_too(make_host):
    host = make_host("6.1", [], start=False)
    backup = run(host.path("/opt/ncs/current/bin/ncs-backup"), "--no-compress")
    assert backup.returncode == 0 and backup.stdout.rstrip().endswith(
        ".backup created successfully"
    )
    restore = run(host.path("/opt/ncs/current/bin/ncs-backup"), "--restore", "--non-interactive")
    assert restore.returncode == 0 and "Restore completed successfully" in restore.stdout
