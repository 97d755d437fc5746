"""The package-only upgrade steps against a simulated host, driven directly."""

from __future__ import annotations

import os

import pytest

from agent.errors import StepFailed

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
