"""The upstream guide's 2-node HA upgrade transcript, typed by hand: CLI over SSH and shell."""

from __future__ import annotations

import shutil

from tests.support.sim_hosts import run


def upgrade_node(host, artifacts, vsn: str) -> None:
    """``upgrade_nso`` and ``upgrade_packages`` of the guide's script, on one host (also
    replayed by test_ha_traps.py)."""
    R = host.root
    shutil.copy(artifacts.installer(vsn), R)
    for pkg in (artifacts.ned(vsn), artifacts.service(vsn)):
        shutil.copy(pkg, host.path("/opt/ncs/packages"))
    for command in (
        f"cd {R} && sh nso-{vsn}.linux.x86_64.installer.bin --system-install --non-interactive",
        f"rm -f {R}/opt/ncs/current && ln -s {R}/opt/ncs/ncs-{vsn} {R}/opt/ncs/current",
        f"rm -rf {R}/var/opt/ncs/packages/*",
        f"for p in {R}/opt/ncs/packages/ncs-{vsn}-*.gz; do "
        f"ln -s $p {R}/var/opt/ncs/packages/; done",
    ):
        result = run("bash", "-c", command)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_two_node_ha_major_upgrade_transcript(make_cluster, artifacts):
    primary, secondary = make_cluster("6.1")
    secondary.wait_for("show high-availability status mode", "secondary")
    assert primary.cli("config\nl3vpn pre-upgrade customer kept\ncommit")[1] == 0
    secondary.wait_for("show running-config l3vpn pre-upgrade", "kept")

    # <switch to designated primary CLI>
    out, _ = primary.cli("show high-availability status mode")
    assert out == "high-availability status mode primary\n"
    assert primary.cli("high-availability read-only mode true")[1] == 0
    # <switch to designated secondary CLI>
    out, _ = secondary.cli("show high-availability status mode")
    assert out == "high-availability status mode secondary\n"
    assert secondary.cli("high-availability read-only mode true")[1] == 0
    # <shell> ncs-backup on both
    for host in (primary, secondary):
        backup = run(host.path("/opt/ncs/current/bin/ncs-backup"))
        assert "created successfully" in backup.stdout
    # primary CLI: disable; secondary CLI: be-primary
    assert primary.cli("high-availability disable")[0] == "result NSO Built-in HA disabled\n"
    assert secondary.cli("high-availability be-primary")[0] == "result ok\n"
    assert secondary.cli("show high-availability status read-only-mode")[0].strip().endswith("true")
    # primary shell: upgrade node, restart with package reload
    upgrade_node(primary, artifacts, "6.2")
    restart = run(primary.init, "restart-with-package-reload")
    assert restart.returncode == 0 and restart.stdout == "Stopping ncs: .\nStarting ncs: .\n"
    primary.clients.clear()
    # Its start-up settings find the designated secondary acting as primary; joining it
    # fails (other release), so it takes no role: there are never two primaries.
    out = primary.wait_for("show high-availability status be-secondary-result", "error")
    assert "incompatible NSO version 6.2" in out
    assert primary.cli("show high-availability status mode")[0].endswith("mode none\n")
    # After the restart the upgraded primary is read-write (the guide's warning).
    assert primary.cli("show high-availability status read-only-mode")[0].strip().endswith("false")
    # secondary CLI: disable; primary CLI: enable
    assert secondary.cli("high-availability disable")[0] == "result NSO Built-in HA disabled\n"
    assert primary.cli("high-availability enable")[0] == "result enabled\n"
    assert primary.wait_for("show high-availability status mode", "primary").endswith("primary\n")
    # secondary shell: upgrade node, restart with package reload
    upgrade_node(secondary, artifacts, "6.2")
    assert run(secondary.init, "restart-with-package-reload").returncode == 0
    secondary.clients.clear()
    # secondary CLI: enable
    assert secondary.cli("high-availability enable")[0] == "result enabled\n"

    # Verify: designated roles, HA converged, the secondary holds the primary's data.
    assert secondary.wait_for("show high-availability status mode", "secondary") == (
        "high-availability status mode secondary\n"
    )
    assert (
        primary.cli("show high-availability status mode")[0]
        == "high-availability status mode primary\n"
    )
    assert "n2" in primary.cli("show high-availability status connected-secondary")[0]
    for host in (primary, secondary):
        assert host.cli("show ncs-state version")[0] == "ncs-state version 6.2\n"
    config = primary.cli("show running-config")[0]
    assert "l3vpn pre-upgrade" in config
    assert secondary.cli("show running-config")[0] == config
    # New writes on the primary reach the upgraded secondary.
    assert primary.cli("config\nl3vpn post-upgrade customer new\ncommit")[1] == 0
    assert "customer new" in secondary.wait_for("show running-config l3vpn post-upgrade", "new")
