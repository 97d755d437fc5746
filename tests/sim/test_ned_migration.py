"""A major NED upgrade on the simulator: the new NED loaded beside the old one, device groups,
``migrate`` with ``dry-run`` on a device and on a group, data a new NED's model lacks
reported as lost and deleted, service data untouched."""

from __future__ import annotations

import re
import shutil

NEW_NED = ("router-nc2", "2.0", "--ned-id", "router-nc-2.0")


def add_new_ned(host, artifacts, *model: str) -> None:
    """The major NED upgrade's first half: the new ned-id's package beside the old one."""
    leaves = [arg for leaf in model for arg in ("--ned-leaf", leaf)]
    new = artifacts.package(NEW_NED[0], NEW_NED[1], "6.2", *NEW_NED[2:], *leaves)
    shutil.copy(new, host.path("/var/opt/ncs/packages"))
    out, status = host.cli("packages reload")
    assert status == 0, out


def config(host, path: str = "") -> str:
    out, status = host.cli(f"show running-config {path}".strip())
    assert status == 0, out
    return out


def test_device_group_migration_dry_run_then_for_real(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    out, status = host.cli(
        "config; devices device-group edge device-name [ router-nc-1 router-nc-2 ]; commit"
    )
    assert status == 0, out
    assert "devices device-group edge\n device-name [ router-nc-1 router-nc-2 ]\n!" in config(
        host, "devices device-group"
    )
    add_new_ned(host, artifacts)
    before = config(host)
    dry, status = host.cli("devices device-group edge migrate new-ned-id router-nc-2.0 dry-run")
    assert status == 0, dry
    assert dry.splitlines() == [
        "device router-nc-1",
        "modified-path {",
        "    path /ncs:devices/device{router-nc-1}/device-type/netconf/ned-id",
        '    info "ned-id changed from router-nc-1.0 to router-nc-2.0"',
        "}",
        "device router-nc-2",
        "modified-path {",
        "    path /ncs:devices/device{router-nc-2}/device-type/netconf/ned-id",
        '    info "ned-id changed from router-nc-1.0 to router-nc-2.0"',
        "}",
    ]
    assert config(host) == before  # a dry-run changes nothing

    out, status = host.cli("devices device-group edge migrate new-ned-id router-nc-2.0")
    assert status == 0 and out == dry, out
    after = config(host)
    assert after == before.replace("ned-id router-nc-1.0", "ned-id router-nc-2.0")
    assert config(host, "l3vpn") == before[before.index("l3vpn l3vpn-1") :]  # services intact
    # Migrating again has nothing to do: the devices are listed, with no change.
    out, status = host.cli("devices device-group edge migrate new-ned-id router-nc-2.0")
    assert (out.split(), status) == (["device", "router-nc-1", "device", "router-nc-2"], 0)
    # A group member can be taken out again (a leaf-list value on its own).
    assert host.cli("config; no devices device-group edge device-name router-nc-2; commit")[1] == 0
    assert "device-name [ router-nc-1 ]" in config(host, "devices device-group edge")


def test_leaves_the_new_model_lacks_are_reported_lost_then_deleted(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    add_new_ned(host, artifacts, "hostname")
    dry, status = host.cli("devices device router-nc-1 migrate new-ned-id router-nc-2.0 dry-run")
    assert status == 0, dry
    assert dry.splitlines()[4:] == [
        "modified-path {",
        "    path /ncs:devices/device{router-nc-1}/config/router-nc:mtu",
        '    info "mtu does not exist in ned-id router-nc-2.0"',
        "    backward-compatible false",
        "}",
        "lost-data {",
        "    path /ncs:devices/device{router-nc-1}/config/router-nc:mtu",
        "    value 1500",
        "}",
    ]
    assert re.search(r"mtu +1500", config(host, "devices device router-nc-1"))
    assert host.cli("devices device router-nc-1 migrate new-ned-id router-nc-2.0")[1] == 0
    device = config(host, "devices device router-nc-1")
    assert "hostname router-nc-1" in device and "mtu" not in device, device
    assert re.search(r"mtu +1500", config(host, "devices device router-nc-2"))  # not migrated


def test_migrate_refusals(make_host, artifacts):
    host = make_host("6.2", [artifacts.ned("6.2"), artifacts.service("6.2")])
    before = config(host)
    for command, said in [
        (
            "devices device-group nope migrate new-ned-id router-nc-1.0",
            "device-group nope does not exist",
        ),
        ("devices device nope migrate new-ned-id router-nc-1.0", "device nope does not exist"),
        (
            "devices device router-nc-1 migrate new-ned-id other-9.9 dry-run",
            "ned-id other-9.9 is not loaded",
        ),
        (
            "devices device router-nc-1 migrate new-ned-id router-nc-1.0 force",
            "unknown argument: force",
        ),
        ("devices device router-nc-1 migrate", "migrate needs new-ned-id"),
    ]:
        out, status = host.cli(command)
        assert status == 1 and said in out, (command, out)
    # The ned-id it already has: nothing to do, nothing printed.
    assert host.cli("devices device router-nc-1 migrate new-ned-id router-nc-1.0") == ("", 0)
    assert config(host) == before
