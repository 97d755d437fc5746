"""/var/opt/ncs/packages as a symlink to a folder elsewhere (``--packages-dir-link``): loading,
the CLI's package commands, the guide's relinking, ncs-backup and its restore."""

from __future__ import annotations

import re
import shutil
import tarfile

from click.testing import CliRunner

from nso_sim.commands import main as nso_sim

LINK = ("--packages-dir-link", "/srv/ncs-packages")


def test_packages_load_and_are_managed_through_the_link(make_host, artifacts):
    ned, service = artifacts.ned("6.2"), artifacts.service("6.2")
    host = make_host("6.2", [ned, service], extra=LINK)
    load_dir, target = host.path("/var/opt/ncs/packages"), host.path("/srv/ncs-packages")
    assert load_dir.is_symlink() and load_dir.resolve() == target.resolve()
    assert sorted(p.name for p in target.iterdir()) == sorted([ned.name, service.name])
    for name in ("router-nc", "l3vpn"):
        assert host.cli(f"show packages package {name} oper-status")[0].strip() == "oper-status up"

    extra = artifacts.package("extra", "1.0", "6.2")
    assert host.cli(f"software packages fetch package-from-file {extra}")[1] == 0
    out, status = host.cli("software packages install package extra-1.0")
    assert (out.strip(), status) == ("installed ncs-6.2-extra-1.0", 0)
    assert (target / extra.name).is_symlink()
    assert f"name {extra.name}\n  installed" in host.cli("software packages list")[0]
    assert host.cli("packages reload")[1] == 0
    assert f"name {extra.name}\n  loaded" in host.cli("software packages list")[0]
    out, status = host.cli("software packages deinstall package extra-1.0")
    assert (out.strip(), status) == ("deinstalled ncs-6.2-extra-1.0", 0)
    assert not (target / extra.name).exists()
    assert host.cli("packages reload")[1] == 0
    assert host.cli("show packages package extra")[0].strip() == "% No entries found."
    assert load_dir.is_symlink()


def test_upgrade_backup_and_restore_keep_the_link(make_host, artifacts, shell):
    host = make_host("6.1", [artifacts.ned("6.1"), artifacts.service("6.1")], extra=LINK)
    R, target = host.root, host.path("/srv/ncs-packages")
    before = host.cli("show running-config")[0]
    made = shell(host.path("/opt/ncs/current/bin/ncs-backup"))
    assert made.returncode == 0, made.stderr
    backup = re.fullmatch(r"INFO  Backup (\S+) created successfully", made.stdout.strip()).group(1)
    with tarfile.open(backup) as tar:
        link = tar.getmember("var/opt/ncs/packages")
        assert link.issym() and link.linkname == str(target)
        # What the link points at is not in the backup (it is not under /var/opt/ncs).
        assert not [n for n in tar.getnames() if n.startswith("var/opt/ncs/packages/")]

    # The guide's major upgrade; the relinking goes through the symlink.
    for pkg in (artifacts.ned("6.2"), artifacts.service("6.2")):
        shutil.copy(pkg, host.path("/opt/ncs/packages"))
    shutil.copy(artifacts.installer("6.2"), R)
    for command in (
        f"cd {R} && sh nso-6.2.linux.x86_64.installer.bin --system-install --non-interactive",
        f"{R}/etc/init.d/ncs stop",
        f"{R}/opt/ncs/current/bin/ncs --cdb-compact {R}/var/opt/ncs/cdb",
        f"cd {R}/opt/ncs && rm -f current && ln -s ncs-6.2 current",
        f"cd {R}/var/opt/ncs/packages/ && rm -f * && "
        f"for pkg in {R}/opt/ncs/packages/ncs-6.2-*; do ln -s $pkg; done",
        f"{R}/etc/init.d/ncs start-with-package-reload",
    ):
        result = shell("bash", "-c", command)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    assert host.path("/var/opt/ncs/packages").is_symlink()
    assert sorted(p.name for p in target.iterdir()) == [
        "ncs-6.2-l3vpn-1.0.tar.gz",
        "ncs-6.2-router-nc-1.0.tar.gz",
    ]
    host.clients.clear()
    assert host.cli("show ncs-state version")[0].strip() == "ncs-state version 6.2"
    assert host.cli("show running-config")[0] == before

    # Back out: stop, point current back, restore; the link comes back as a link.
    for command in (
        f"{R}/etc/init.d/ncs stop",
        f"cd {R}/opt/ncs && rm -f current && ln -s ncs-6.1 current",
        f"{R}/opt/ncs/current/bin/ncs-backup --restore --non-interactive",
        f"{R}/etc/init.d/ncs start",
    ):
        result = shell("bash", "-c", command)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    load_dir = host.path("/var/opt/ncs/packages")
    assert load_dir.is_symlink() and load_dir.resolve() == target.resolve()
    assert host.path("/var/opt/ncs.old/packages").is_symlink()
    host.clients.clear()
    assert host.cli("show ncs-state version")[0].strip() == "ncs-state version 6.1"
    assert host.cli("show running-config")[0] == before
    # The linked folder was not restored: it still holds the 6.2 links (relink before a
    # start with package reload).
    assert all(p.name.startswith("ncs-6.2-") for p in target.iterdir())


def test_a_link_into_the_load_path_itself_is_refused_before_anything_is_made(tmp_path):
    root = tmp_path / "host"
    args = ["host", "create", "--root", str(root), "--version", "6.1"]
    refused = CliRunner().invoke(nso_sim, [*args, "--packages-dir-link", "/var/opt/ncs/packages/x"])
    assert refused.exit_code != 0 and "must lie outside the load path" in refused.output
    assert not root.exists()
