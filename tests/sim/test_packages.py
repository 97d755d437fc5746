"""Package management: software packages, packages reload and its checks, NED migration."""

from __future__ import annotations

import shutil

from tests.support.sim_hosts import run


def test_package_upgrade_as_in_the_guide(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2", "1.0"), artifacts.service("6.2")])
    shutil.copy(artifacts.ned("6.2", "1.0.2"), host.path("/opt/ncs/packages"))
    listing, _ = host.cli("software packages list")
    assert "package {\n  name ncs-6.2-router-nc-1.0.2.tar.gz\n  installable\n}" in listing
    assert "package {\n  name ncs-6.2-router-nc-1.0.tar.gz\n  loaded\n}" in listing
    out, status = host.cli("software packages install package router-nc-1.0.2 replace-existing")
    assert (out.strip(), status) == ("installed ncs-6.2-router-nc-1.0.2", 0)
    assert (
        "name ncs-6.2-router-nc-1.0.2.tar.gz\n  installed" in host.cli("software packages list")[0]
    )
    dry, status = host.cli("packages reload dry-run")
    assert status == 0 and ">>>" not in dry and "package router-nc\n    result true" in dry
    assert "package-version 1.0\n" in host.cli("show packages package router-nc package-version")[0]
    out, status = host.cli("packages reload")
    assert status == 0
    assert out.splitlines()[:4] == [
        ">>> System upgrade is starting.",
        ">>> Sessions in configure mode must exit to operational mode.",
        ">>> No configuration changes can be performed until upgrade has completed.",
        ">>> System upgrade has completed successfully.",
    ]
    assert "reload-result {\n    package router-nc\n    result true\n}" in out
    assert (
        host.cli("show packages package router-nc package-version")[0].strip()
        == "package-version 1.0.2"
    )
    assert "name ncs-6.2-router-nc-1.0.2.tar.gz\n  loaded" in host.cli("software packages list")[0]


def test_fetch_and_deinstall(make_host, artifacts, tmp_path):
    host = make_host("6.2", [artifacts.ned("6.2")])
    src = artifacts.service("6.2")
    _, status = host.cli(f"software packages fetch package-from-file {src}")
    assert status == 0
    assert host.path(f"/opt/ncs/packages/{src.name}").exists()
    assert (
        host.cli("software packages install package l3vpn-1.0")[0].strip()
        == "installed ncs-6.2-l3vpn-1.0"
    )
    assert host.cli("packages reload")[1] == 0
    assert host.cli("show packages package l3vpn oper-status")[0].strip() == "oper-status up"
    _out, status = host.cli("software packages deinstall package l3vpn-1.0")
    assert status == 0 and not host.path(f"/var/opt/ncs/packages/{src.name}").exists()


def test_package_for_another_release_fails_to_load(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2")])
    shutil.copy(artifacts.service("6.3"), host.path("/var/opt/ncs/packages"))
    out, status = host.cli("packages reload")
    assert status == 1
    assert "Error: Failed to load NCS package: l3vpn; requires NCS version 6.3" in out
    assert host.cli("show packages package l3vpn")[0].strip() == "% No entries found."


def test_removing_a_package_with_data_is_refused_then_forced_data_is_lost(make_host, artifacts):
    """The data loss the guide warns about: a package left out, reload forced."""
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    assert "l3vpn l3vpn-1" in host.cli("show running-config")[0]
    assert host.cli("software packages deinstall package l3vpn-1.0")[1] == 0
    out, status = host.cli("packages reload")
    assert status == 1
    assert out.splitlines() == [
        "Error: The following namespaces will be deleted by upgrade:",
        "http://example.com/nso-sim/l3vpn",
        "If this is intended, proceed with 'force' parameter.",
    ]
    assert "l3vpn l3vpn-1" in host.cli("show running-config")[0]  # nothing lost yet
    out, status = host.cli("packages reload force")
    assert status == 0 and "System upgrade has completed successfully." in out
    config = host.cli("show running-config")[0]
    assert "l3vpn" not in config
    assert "devices device router-nc-1" in config  # the other namespaces are untouched
    # The loss survives a restart: it was committed to CDB.
    run(host.init, "restart")
    host.clients.clear()
    assert "l3vpn" not in host.cli("show running-config")[0]


def test_start_with_package_reload_refuses_removed_namespace_unless_forced(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    run(host.init, "stop")
    for link in host.path("/var/opt/ncs/packages").glob("*l3vpn*"):
        link.unlink()
    failed = run(host.init, "start-with-package-reload")
    assert failed.returncode == 13
    assert "namespaces will be deleted" in host.path("/var/log/ncs/ncs.log").read_text()
    assert run(host.init, "start-with-package-reload-force").returncode == 0
    assert "l3vpn" not in host.cli("show running-config")[0]


def test_start_without_reload_keeps_packages_in_use(make_host, artifacts):
    """Without reload NSO loads its private copy, not the load path (ncs(1))."""
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    run(host.init, "stop")
    for link in host.path("/var/opt/ncs/packages").iterdir():
        link.unlink()
    assert run(host.init, "start").returncode == 0
    assert host.cli("show packages package l3vpn oper-status")[0].strip() == "oper-status up"


def test_package_compiled_for_old_release_shows_file_load_error_without_reload(
    make_host, artifacts
):
    host = make_host("6.1", [artifacts.ned("6.1"), artifacts.service("6.1")])
    run(host.init, "stop")
    current = host.path("/opt/ncs/current")
    run("sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root)
    current.unlink()
    current.symlink_to("ncs-6.2")
    assert run(host.init, "start").returncode == 0
    out = host.cli("show packages package l3vpn oper-status")[0].splitlines()
    assert out == [
        "oper-status file-load-error",
        'oper-status error-info "Failed to load NCS package: l3vpn; requires NCS version 6.1"',
    ]


def test_ned_migration(make_host, artifacts):
    old = artifacts.ned("6.2", "1.0", "router-nc-1.0")
    host = make_host("6.2", [old])
    new = artifacts.package("router-nc2", "2.0", "6.2", "--ned-id", "router-nc-2.0")
    shutil.copy(new, host.path("/var/opt/ncs/packages"))
    assert host.cli("packages reload")[1] == 0
    dry, status = host.cli("devices device router-nc-1 migrate new-ned-id router-nc-2.0 dry-run")
    assert status == 0 and "modified-path {" in dry
    assert "ned-id router-nc-1.0" in host.cli("show running-config devices device router-nc-1")[0]
    bad = host.cli("devices device router-nc-1 migrate new-ned-id nope-1.0")
    assert bad[1] == 1
    for dev in ("router-nc-1", "router-nc-2"):
        assert host.cli(f"devices device {dev} migrate new-ned-id router-nc-2.0")[1] == 0
    config = host.cli("show running-config devices device router-nc-1")[0]
    assert "ned-id router-nc-2.0" in config and "hostname router-nc-1" in config
    # The old NED can now go: its namespace holds no data any more.
    for link in host.path("/var/opt/ncs/packages").glob(old.name):
        link.unlink()
    out, status = host.cli("packages reload")
    assert status == 0, out
    assert "hostname router-nc-1" in host.cli("show running-config devices device router-nc-1")[0]


def test_reload_with_items_in_the_commit_queue_fails(make_host):
    """Queued items rely on the old schema (the guide's reason for wait-commit-queue-empty)."""
    host = make_host("6.2")
    result = host.ncs_cli(
        "config", "l3vpn q1 customer a", "commit commit-queue async", "end", "packages reload"
    )
    assert result.returncode == 1
    assert "commit queue holds 1 item(s)" in result.stdout
    host.wait_for("show devices commit-queue", "No entries found")
    assert host.cli("packages reload")[1] == 0
