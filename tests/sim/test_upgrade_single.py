"""The upstream guide's Single Instance Upgrade, typed by hand against a simulated host."""

from __future__ import annotations

import shutil

from tests.support.sim_hosts import run


def test_single_instance_upgrade_6_1_to_6_2_keeps_data(make_host, artifacts):
    host = make_host("6.1", [artifacts.ned("6.1"), artifacts.service("6.1")])
    client = host.ssh()
    # Some data written through the CLI on top of the initial CDB.
    out, status = host.cli(
        "config\n"
        "devices device edge-1 address 192.0.2.1 port 830 "
        "device-type netconf ned-id router-nc-1.0\n"
        "devices device edge-1 config hostname edge-1\n"
        "l3vpn acme customer acme-corp device edge-1\n"
        "commit",
        client,
    )
    assert status == 0 and "Commit complete." in out
    before, _ = host.cli("show running-config", client)
    assert "l3vpn acme" in before and "devices device edge-1" in before
    client.close()
    host.clients.clear()

    # The recompiled packages and the installer have been copied to the host beforehand.
    shutil.copy(artifacts.ned("6.2"), host.path("/opt/ncs/packages"))
    shutil.copy(artifacts.service("6.2"), host.path("/opt/ncs/packages"))
    shutil.copy(artifacts.installer("6.2"), host.root)

    R = host.root
    steps = [
        # 1. backup
        (f"{R}/opt/ncs/current/bin/ncs-backup", "created successfully"),
        # 2. system install of the new release (run from the host root, as ~ on a real host)
        (f"cd {R} && sh nso-6.2.linux.x86_64.installer.bin --system-install", "finished"),
        # 3. stop
        (f"{R}/etc/init.d/ncs stop", "Stopping ncs: ."),
        # 4. compact the CDB write log
        (f"{R}/opt/ncs/current/bin/ncs --cdb-compact {R}/var/opt/ncs/cdb", "Compacted"),
        # 5. switch current
        (f"cd {R}/opt/ncs && rm -f current && ln -s ncs-6.2 current && ls -l current", "ncs-6.2"),
        # 7. relink the packages compiled for 6.2
        (
            f"cd {R}/var/opt/ncs/packages/ && rm -f * && "
            f"for pkg in {R}/opt/ncs/packages/ncs-6.2-*; do ln -s $pkg; done && ls",
            "ncs-6.2-l3vpn-1.0.tar.gz",
        ),
        # 8. start with package reload
        (f"{R}/etc/init.d/ncs start-with-package-reload", "Starting ncs: ."),
    ]
    for command, expected in steps:
        result = run("bash", "-c", command)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        assert expected in result.stdout, f"{command}\n{result.stdout}"

    assert run(f"{R}/opt/ncs/current/bin/ncs", "--version").stdout.strip() == "6.2"
    backups = list(host.path("/var/opt/ncs/backups").glob("ncs-6.1@*.backup.gz"))
    assert len(backups) == 1
    out, _ = host.cli("show ncs-state version")
    assert out.strip() == "ncs-state version 6.2"
    for pkg in ("l3vpn", "router-nc"):
        out, _ = host.cli(f"show packages package {pkg} oper-status")
        assert out.strip() == "oper-status up"
    after, _ = host.cli("show running-config")
    assert after == before
    # The old release stays installed beside the new one.
    assert host.path("/opt/ncs/ncs-6.1/bin/ncs").exists()


def test_upgrade_with_packages_not_rebuilt_fails_and_recovery_restores(make_host, artifacts):
    """Forgetting to relink the packages: start fails with 13; the guide's recovery works."""
    host = make_host("6.1")
    before, _ = host.cli("show running-config")
    R = host.root
    shutil.copy(artifacts.installer("6.2"), host.root)
    for command in (
        f"{R}/opt/ncs/current/bin/ncs-backup",
        f"cd {R} && sh nso-6.2.linux.x86_64.installer.bin --system-install --non-interactive",
        f"{R}/etc/init.d/ncs stop",
        f"cd {R}/opt/ncs && rm -f current && ln -s ncs-6.2 current",
    ):
        assert run("bash", "-c", command).returncode == 0, command
    failed = run(f"{R}/etc/init.d/ncs", "start-with-package-reload")
    assert failed.returncode == 13
    log = host.path("/var/log/ncs/ncs.log").read_text()
    assert "NCS package upgrade failed with reason 'Failed to load NCS package:" in log
    assert "requires NCS version 6.1" in log
    assert "Daemon died status=13" in log

    # Recover from a failed upgrade: stop, point current back, check version, restore, start.
    run(f"{R}/etc/init.d/ncs", "stop")
    assert (
        run("bash", "-c", f"cd {R}/opt/ncs && rm -f current && ln -s ncs-6.1 current").returncode
        == 0
    )
    assert run(f"{R}/opt/ncs/current/bin/ncs", "--version").stdout.strip() == "6.1"
    restore = run(f"{R}/opt/ncs/current/bin/ncs-backup", "--restore", "--non-interactive")
    assert restore.returncode == 0, restore.stderr
    assert restore.stdout.rstrip().endswith("INFO  Restore completed successfully")
    started = run(f"{R}/etc/init.d/ncs", "start")
    assert started.returncode == 0 and started.stdout.strip() == "Starting ncs: ."
    host.clients.clear()
    after, _ = host.cli("show running-config")
    assert after == before
