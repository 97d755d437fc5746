"""A major NED upgrade end to end: a real server, a real agent, a simulated NSO 6.2 host with
devices on the old NED and l3vpn service instances on them. The new NED (a new ned-id) is
added beside the old one by a package upgrade; a dry-run of the migration shows the changes
and changes nothing; the real migration needs that dry-run confirmed, and leaves the device
on the new ned-id with the service data intact; a later package upgrade removes the old NED
once no device uses it."""

from __future__ import annotations

from tests.api.helpers import assert_error
from tests.support.waiting import wait_until

from .conftest import running_config
from .test_ha_groups import nso_repo

NEW = "router-nc-2.0"


def ned_migrate_cli(node, *options: str):
    """``nso-repo ned migrate NODE --to NEW --device router-nc-1 OPTIONS --watch``."""
    return nso_repo(
        node.server,
        "ned",
        "migrate",
        node.name,
        "--to",
        NEW,
        "--device",
        "router-nc-1",
        *options,
        "--watch",
    )


def migrate(node, **body):
    body = {"new_ned_id": NEW, "devices": ["router-nc-1"], "dry_run": True, **body}
    return node.server.api("POST", f"/nodes/{node.name}/ned-migrations", json=body)


def add_package(node, package) -> dict:
    """Upload ``package`` and add it to the node with a package upgrade: the job."""
    with package.open("rb") as fh:
        uploaded = node.server.http.put(
            f"{node.server.url}/api/v1/artifacts/{package.name}", data=fh
        )
    assert uploaded.status_code in (200, 201), uploaded.text
    added = node.server.api(
        "POST", f"/nodes/{node.name}/package-upgrade", json={"packages": [package.name]}
    )
    assert added.status_code == 202, added.text
    return dict(node.wait_job(added.json()["id"]))


def device(node, name: str) -> str:
    out, status = node.host.cli(f"show running-config devices device {name}")
    assert status == 0, out
    return out


def test_new_ned_beside_the_old_then_dry_run_then_confirmed_migration(
    shared_server, make_node, artifacts
):
    node = make_node(shared_server, "6.2")
    refused = assert_error(migrate(node), 409, "ned_id_not_loaded")
    assert "router-nc-1.0" in refused["message"], refused

    # (a) The new NED beside the old one: an ordinary package upgrade that adds a package.
    job = add_package(node, artifacts.package("router-nc2", "2.0", "6.2", "--ned-id", NEW))
    assert job["state"] == "succeeded", job
    shown, _ = node.host.cli("show packages")
    assert "ned-id router-nc-1.0" in shown and f"ned-id {NEW}" in shown, shown
    wait_until(
        lambda: any(
            p["name"] == "router-nc2" for p in node.info()["inventory"].get("packages", [])
        ),
        30,
        0.2,
        message="the heartbeat never listed the new NED",
    )
    before = running_config(node.host)

    # (b) The dry-run, with the per-device changes printed.
    dry = ned_migrate_cli(node, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    dry_id = int(dry.stdout.split()[0])
    assert "router-nc-1: router-nc-1.0 -> router-nc-2.0  [would migrate]" in dry.stdout, dry.stdout
    assert "/ncs:devices/device{router-nc-1}/device-type/netconf/ned-id" in dry.stdout
    assert f"--device router-nc-1 --confirm {dry_id}" in dry.stdout
    assert running_config(node.host) == before  # a dry-run changes nothing
    assert "ned-id router-nc-1.0" in device(node, "router-nc-1")
    report = shared_server.job(dry_id)["steps"][0]["result"]["ned_migration"]
    assert report["devices"][0]["old_ned_id"] == "router-nc-1.0" and report["dry_run"] is True

    # (c) The real migration: only on that dry-run, for exactly those devices.
    assert_error(migrate(node, dry_run=False), 409, "dry_run_required")
    other = migrate(node, devices=["router-nc-2"])
    assert node.wait_job(other.json()["id"])["state"] == "succeeded"
    wrong = migrate(node, dry_run=False, confirm=other.json()["id"])
    assert (
        "is not a dry-run of this migration"
        in assert_error(wrong, 409, "dry_run_required")["message"]
    )
    real = ned_migrate_cli(node, "--confirm", str(dry_id))
    assert real.returncode == 0, real.stdout + real.stderr
    assert "router-nc-1: router-nc-1.0 -> router-nc-2.0  [migrated]" in real.stdout, real.stdout

    after = running_config(node.host)
    assert f"ned-id {NEW}" in device(node, "router-nc-1")
    assert "ned-id router-nc-1.0" in device(node, "router-nc-2")  # not named: not migrated
    # The device's config and every service instance are as they were, but the ned-id.
    assert after == before.replace(
        "devices device router-nc-1\n address   10.0.0.2\n port      830\n authgroup default\n"
        " device-type netconf ned-id router-nc-1.0",
        f"devices device router-nc-1\n address   10.0.0.2\n port      830\n authgroup default\n"
        f" device-type netconf ned-id {NEW}",
    ), after
    assert after.count("l3vpn l3vpn-") == before.count("l3vpn l3vpn-") > 0

    # (d) The old NED goes with a later package upgrade, once no device uses its ned-id:
    # before that, NSO refuses the reload (the devices' config would go) and the job puts
    # the package links back.
    early = remove_old_ned(node)
    assert (early["state"], early["outcome"]) == ("failed", "rolled_back"), early
    assert "namespaces will be deleted" in early["error"], early["error"]
    # The way forward it names is the devices' migration, not the data-deleting override.
    assert "This change removes router-nc: when one is a NED" in early["error"]
    assert "nso-repo ned migrate" in early["error"]
    assert "add the new NED first (a package upgrade without --remove)" in early["error"]
    dry2 = node.wait_job(migrate(node, devices=["router-nc-2"]).json()["id"])
    real2 = migrate(node, devices=["router-nc-2"], dry_run=False, confirm=dry2["id"])
    assert node.wait_job(real2.json()["id"])["state"] == "succeeded"
    job = remove_old_ned(node)
    assert job["state"] == "succeeded", job
    shown, _ = node.host.cli("show packages")
    assert "packages package router-nc\n" not in shown and "packages package router-nc2" in shown
    final = running_config(node.host)
    assert final == after.replace("ned-id router-nc-1.0", f"ned-id {NEW}"), final


def remove_old_ned(node) -> dict:
    node.wait_reported()  # the migration has just ended
    answer = node.server.api(
        "POST", f"/nodes/{node.name}/package-upgrade", json={"remove": ["router-nc"]}
    )
    assert answer.status_code == 202, answer.text
    return node.wait_job(answer.json()["id"])


def test_config_written_after_the_dry_run_that_the_migration_would_lose_stops_it(
    shared_server, make_node, artifacts
):
    """The dry-run showed no data lost. Then a leaf the new NED does not model is written to
    the device through NSO, and the dry-run is confirmed: the agent's dry-run right before
    the migration finds that leaf would be lost, unread, and migrates nothing."""
    node = make_node(shared_server, "6.2")
    new_ned = artifacts.package(
        # Another file than the other tests' router-nc2 2.0 (the server is shared).
        *("router-nc2", "2.0.1", "6.2", "--ned-id", NEW),
        *("--ned-leaf", "hostname", "--ned-leaf", "mtu"),
    )
    assert add_package(node, new_ned)["state"] == "succeeded"
    node.wait_reported()
    dry = node.wait_job(migrate(node).json()["id"])
    assert dry["state"] == "succeeded", dry
    assert dry["steps"][0]["result"]["ned_migration"]["lost_data_total"] == 0
    out, status = node.host.cli(
        "config\ndevices device router-nc-1 config snmp-community s3cret\ncommit"
    )
    assert status == 0, out
    before = device(node, "router-nc-1")
    real = migrate(node, dry_run=False, confirm=dry["id"])
    assert real.status_code == 202, real.text
    job = node.wait_job(real.json()["id"])
    assert (job["state"], job["outcome"]) == ("failed", "unchanged"), job
    assert "would lose data it did not show" in job["error"] and "s3cret" in job["error"]
    assert device(node, "router-nc-1") == before  # nothing migrated, the leaf kept
