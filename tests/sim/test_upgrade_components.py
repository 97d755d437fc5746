"""Upgrade components: data that changes when NSO loads another build of a package."""

from __future__ import annotations

import json
import shutil
import tarfile

from click.testing import CliRunner

from nso_sim.commands import main as nso_sim


def _config_lines(host, path: str) -> list[list[str]]:
    """``show running-config PATH`` as words per line (values are aligned with spaces)."""
    return [ln.split() for ln in host.cli(f"show running-config {path}")[0].splitlines()]


def test_make_package_adds_an_upgrade_component_deterministically(tmp_path):
    args = ["make-package", "l3vpn", "1.1", "--nso", "6.2", "--upgrade-set", "qos=gold"]
    built = []
    for out in ("a", "b"):
        result = CliRunner().invoke(
            nso_sim, [*args, "--upgrade-set", "mtu=9000", "--out", str(tmp_path / out)]
        )
        assert result.exit_code == 0, result.output
        built.append(result.output.strip())
    with open(built[0], "rb") as a, open(built[1], "rb") as b:
        assert a.read() == b.read()  # same arguments, same bytes
    with tarfile.open(built[0]) as tar:
        meta = tar.extractfile("l3vpn/package-meta-data.xml").read().decode()
        code = tar.extractfile("l3vpn/python/l3vpn_upgrade/upgrade.py").read().decode()
    assert (
        "  <component>\n    <name>l3vpn-upgrade</name>\n    <upgrade>\n"
        "      <python-class-name>l3vpn_upgrade.upgrade.Upgrade</python-class-name>\n"
        "    </upgrade>\n  </component>\n</ncs-package>"
    ) in meta
    assert "SETS = [\n    ('qos', 'gold'),\n    ('mtu', '9000'),\n]" in code
    bad = CliRunner().invoke(
        nso_sim, [*args[:5], "--upgrade-set", "no-equals", "--out", str(tmp_path)]
    )
    assert bad.exit_code != 0 and "LEAF=VALUE" in bad.output


def test_packages_reload_of_a_new_version_rewrites_its_data_in_cdb(make_host, artifacts, shell):
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2", "1.0")])
    before = _config_lines(host, "l3vpn")
    assert not any("qos" in words for words in before)
    new = artifacts.package("l3vpn", "1.1", "6.2", "--upgrade-set", "qos=gold")
    shutil.copy(new, host.path("/opt/ncs/packages"))
    out, status = host.cli("software packages install package l3vpn-1.1 replace-existing")
    assert status == 0, out
    out, status = host.cli("packages reload")
    assert status == 0, out

    after = _config_lines(host, "l3vpn")
    assert after != before
    assert [w for w in after if w[0] == "qos"] == [["qos", "gold"]] * 3  # every instance
    log = host.path("/var/log/ncs/ncs.log").read_text()
    assert "Package upgrade: l3vpn 1.1 component l3vpn-upgrade: set qos gold (3 entries)" in log
    # Persisted in CDB, so a restart without reload still has it.
    assert '"qos": "gold"' in host.path("/var/opt/ncs/cdb/A.cdb").read_text()
    shell(host.init, "restart")
    host.clients.clear()
    assert _config_lines(host, "l3vpn") == after

    # Reloading the same build runs no upgrade: a later change survives.
    out, status = host.cli("config\nl3vpn l3vpn-1 qos silver\ncommit")
    assert status == 0, out
    assert host.cli("packages reload")[1] == 0
    assert ["qos", "silver"] in _config_lines(host, "l3vpn l3vpn-1")


def test_a_failed_reload_applies_no_upgrade(make_host, artifacts):
    """The rewrite is part of the load's transaction: no load, no rewrite."""
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2", "1.0")])
    before = host.cli("show running-config")[0]
    shutil.copy(
        artifacts.package("l3vpn", "1.1", "6.2", "--upgrade-set", "qos=gold"),
        host.path("/opt/ncs/packages"),
    )
    assert host.cli("software packages install package l3vpn-1.1 replace-existing")[1] == 0
    shutil.copy(artifacts.package("extra", "1.0", "6.3"), host.path("/var/opt/ncs/packages"))
    out, status = host.cli("packages reload")
    assert status == 1 and "requires NCS version 6.3" in out
    assert host.cli("show running-config")[0] == before


def test_major_upgrade_with_recompiled_ned_rewrites_its_devices_only(make_host, artifacts, shell):
    """What a major NSO upgrade does: the same NED version, recompiled for 6.2, loaded at
    start with package reload; its upgrade code changes the devices that use it."""
    other = artifacts.package("switch-nc", "1.0", "6.1", "--ned-id", "switch-nc-1.0")
    host = make_host("6.1", [artifacts.ned("6.1"), other, artifacts.service("6.1")])
    before = host.cli("show running-config")[0]
    shell(host.init, "stop")
    shell("sh", artifacts.installer("6.2"), "--system-install", "--non-interactive", cwd=host.root)
    current = host.path("/opt/ncs/current")
    current.unlink()
    current.symlink_to("ncs-6.2")
    for link in host.path("/var/opt/ncs/packages").iterdir():
        link.unlink()
    for pkg in (
        artifacts.package(
            "router-nc", "1.0", "6.2", "--ned-id", "router-nc-1.0", "--upgrade-set", "mtu=9100"
        ),
        artifacts.package("switch-nc", "1.0", "6.2", "--ned-id", "switch-nc-1.0"),
        artifacts.service("6.2"),
    ):
        host.path(f"/var/opt/ncs/packages/{pkg.name}").symlink_to(pkg)
    started = shell(host.init, "start-with-package-reload")
    assert started.returncode == 0, started.stderr
    host.clients.clear()

    after = host.cli("show running-config")[0]
    assert after != before
    for device, mtu in (("router-nc-1", "9100"), ("router-nc-2", "9100"), ("switch-nc-1", "1500")):
        assert ["mtu", mtu] in _config_lines(host, f"devices device {device}")
    snapshot = json.loads(host.path("/var/opt/ncs/cdb/A.cdb").read_text().splitlines()[0])
    devices = snapshot["snapshot"]["devices"]["device"]
    assert devices["router-nc-1"]["config"]["mtu"] == "9100"
