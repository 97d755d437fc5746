"""NSO >= 6.4: ncs.service, NCS_RELOAD_PACKAGES in ncs.systemd.conf, the 90 s timeout."""

from __future__ import annotations

import shutil

from tests.support.sim_hosts import run, sim


def test_systemd_unit_replaces_the_init_script(make_host, artifacts):
    host = make_host("6.4", [artifacts.ned("6.4")], start=False)
    systemctl = host.path("/usr/bin/systemctl")
    assert host.path("/etc/systemd/system/ncs.service").exists()
    assert not host.path("/etc/init.d/ncs").exists()
    assert run(systemctl, "start", "ncs").returncode == 0
    assert run(systemctl, "is-active", "ncs").stdout.strip() == "active"
    assert host.cli("show ncs-state version")[0] == "ncs-state version 6.4\n"

    # A package added to the load path is only loaded when the conf file asks for it ...
    shutil.copy(artifacts.service("6.4"), host.path("/var/opt/ncs/packages"))
    conf = host.path("/etc/ncs/ncs.systemd.conf")
    conf.write_text(
        conf.read_text().replace("NCS_RELOAD_PACKAGES=false", "NCS_RELOAD_PACKAGES=true")
    )
    host.clients.clear()
    assert run(systemctl, "restart", "ncs").returncode == 0
    assert host.cli("show packages package l3vpn oper-status")[0].strip() == "oper-status up"
    # ... and, left set, at every start: a package removed meanwhile is reloaded away.
    for link in host.path("/var/opt/ncs/packages").glob("*router-nc*"):
        link.unlink()
    host.clients.clear()
    assert run(systemctl, "restart", "ncs").returncode == 1  # router-nc's data would go
    assert "namespaces will be deleted" in host.path("/var/log/ncs/ncs.log").read_text()
    run(systemctl, "stop", "ncs")
    assert run(systemctl, "is-active", "ncs").returncode == 3


def test_systemd_gives_up_after_90_seconds_while_nso_keeps_starting(make_host):
    host = make_host("6.4", [], start=False)
    sim("fault", "set", "--root", str(host.root), "start-slow", "300")
    started = run(host.path("/usr/bin/systemctl"), "start", "ncs")
    assert started.returncode == 1
    assert "Job for ncs.service failed because a timeout was exceeded." in started.stderr
    assert run(host.ncs, "--wait-started", "20").returncode == 0
    assert "status: started" in run(host.ncs, "--status").stdout
