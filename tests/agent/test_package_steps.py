"""The package-only upgrade steps against a simulated host, driven directly."""

from __future__ import annotations

import os
import shutil

import pytest

from agent.errors import StepFailed
from tests.support.sim_hosts import sim

from .conftest import agent_config
from .test_upgrade_steps import refs


def package_refs(file_server, artifacts, version: str) -> list[dict]:
    out = refs(file_server, [artifacts.service("6.1", version)])
    out[0].update(name="l3vpn", version=version)
    return out


def test_package_upgrade_then_recover_packages(make_host, artifacts, file_server, driver):
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    new = package_refs(file_server, artifacts, "1.1")
    drive.step("prestage_packages", {"packages": new})
    drive.step("backup")
    out = drive.step("install_packages", {"packages": new})
    assert out == {"installed": ["installed ncs-6.1-l3vpn-1.1"]}
    drive.step("reload_packages", {"allow_data_loss": False})
    assert drive.step("verify_packages", {"packages": new}) == {"packages": ["l3vpn-1.1"]}
    links = sorted(os.listdir(host.path("/var/opt/ncs/packages")))
    assert links == ["ncs-6.1-l3vpn-1.1.tar.gz", "ncs-6.1-router-nc-1.0.tar.gz"]

    drive.step("recover_packages", {"extra_dir": drive.context["extra_dir"]})
    links = sorted(os.listdir(host.path("/var/opt/ncs/packages")))
    assert links == ["ncs-6.1-l3vpn-1.0.tar.gz", "ncs-6.1-router-nc-1.0.tar.gz"]
    host.clients.clear()
    assert host.cli("show packages package l3vpn package-version")[0].strip() == (
        "package-version 1.0"
    )


def test_recover_packages_puts_back_a_link_named_unlike_its_file(
    make_host, artifacts, file_server, driver
):
    """The guide: the `ncs-X.Y-` naming "is neither required nor enforced". A load path
    whose link is named otherwise is put back as it was, under its own name."""
    host = make_host("6.1")
    load = host.path("/var/opt/ncs/packages")
    target = os.readlink(os.path.join(load, "ncs-6.1-l3vpn-1.0.tar.gz"))
    os.unlink(os.path.join(load, "ncs-6.1-l3vpn-1.0.tar.gz"))
    os.symlink(target, os.path.join(load, "l3vpn.tar.gz"))
    before = {name: os.readlink(os.path.join(load, name)) for name in os.listdir(load)}
    drive = driver(agent_config(host), file_server)
    new = package_refs(file_server, artifacts, "1.1")
    drive.step("prestage_packages", {"packages": new})
    drive.step("backup")
    drive.step("install_packages", {"packages": new})
    drive.step("reload_packages", {"allow_data_loss": False})
    assert "l3vpn.tar.gz" not in os.listdir(load)

    drive.step("recover_packages", {"extra_dir": drive.context["extra_dir"]})
    assert {name: os.readlink(os.path.join(load, name)) for name in os.listdir(load)} == before
    host.clients.clear()
    assert host.cli("show packages package l3vpn package-version")[0].strip() == (
        "package-version 1.0"
    )


def test_a_reload_whose_answer_is_lost_is_judged_by_what_nso_loads(
    make_host, artifacts, file_server, driver
):
    """NSO reloaded (the new build's upgrade code rewrote its service data) and the CLI
    answer was lost: a failure here would have the recovery put 1.0 back over data 1.1
    wrote, and call that rolled back. The step reads what NSO loads instead."""
    host = make_host("6.1", extra=("--services", "2"))
    drive = driver(agent_config(host), file_server)
    built = artifacts.package("l3vpn", "1.1", "6.1", "--upgrade-set", "qos=gold")
    new = refs(file_server, [built])
    new[0].update(name="l3vpn", version="1.1")
    drive.step("prestage_packages", {"packages": new})
    drive.step("backup")
    drive.step("install_packages", {"packages": new})
    sim(
        "fault", "set", "--root", str(host.root), "cli-exec-reply-lost", "packages reload", "--once"
    )
    done = drive.step("reload_packages", {"allow_data_loss": False, "packages": new})
    assert done == {"reloaded": True}
    assert drive.last is not None
    assert any("it took effect" in line for line in drive.last.lines), list(drive.last.lines)
    host.clients.clear()
    assert host.cli("show packages package l3vpn package-version")[0].strip() == (
        "package-version 1.1"
    )
    # A server that does not name the packages: the lost answer fails the step, as before.
    sim(
        "fault", "set", "--root", str(host.root), "cli-exec-reply-lost", "packages reload", "--once"
    )
    with pytest.raises(StepFailed, match="whether NSO reloaded is unknown"):
        drive.step("reload_packages", {"allow_data_loss": False})


def test_reload_that_would_delete_data_is_refused_verbatim(make_host, artifacts, driver):
    host = make_host("6.1")
    drive = driver(agent_config(host))
    # The service package disappears from the load path while its data is in CDB.
    os.unlink(host.path("/var/opt/ncs/packages/ncs-6.1-l3vpn-1.0.tar.gz"))
    with pytest.raises(StepFailed) as failed:
        drive.step("reload_packages", {"allow_data_loss": False})
    assert "Error: The following namespaces will be deleted by upgrade:" in str(failed.value)
    assert "http://example.com/nso-sim/l3vpn" in str(failed.value)
    assert "proceed with 'force' parameter" in str(failed.value)


def test_install_names_the_staged_file_among_builds_of_other_releases(
    make_host, artifacts, file_server, driver
):
    """The guide keeps builds of several releases side by side in /opt/ncs/packages: the
    agent names NSO the exact file it staged, never NAME-VERSION, which matches both."""
    host = make_host("6.1")
    drive = driver(agent_config(host), file_server)
    new = package_refs(file_server, artifacts, "1.1")
    drive.step("prestage_packages", {"packages": new})
    # The next release's build of the same package and version, staged for a later upgrade.
    shutil.copy(artifacts.service("6.2", "1.1"), host.path("/opt/ncs/packages"))
    ambiguous = host.cli("software packages install package l3vpn-1.1 replace-existing")
    assert ambiguous[1] != 0 and "names several files" in ambiguous[0]
    out = drive.step("install_packages", {"packages": new})
    assert out == {"installed": ["installed ncs-6.1-l3vpn-1.1"]}
    link = host.path("/var/opt/ncs/packages/ncs-6.1-l3vpn-1.1.tar.gz")
    assert os.path.realpath(link).endswith("/opt/ncs/packages/ncs-6.1-l3vpn-1.1.tar.gz")
    assert not os.path.lexists(host.path("/var/opt/ncs/packages/ncs-6.2-l3vpn-1.1.tar.gz"))
