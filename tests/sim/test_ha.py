"""Rule-based HA between simulated hosts over real TCP."""

from __future__ import annotations

import shutil

from tests.support.sim_hosts import run, sim


def test_pair_forms_and_secondary_gets_copy_then_changes(make_cluster):
    n1, n2 = make_cluster("6.1")
    out = n2.wait_for("show high-availability status mode", "secondary")
    assert out.strip() == "high-availability status mode secondary"
    show = n1.cli("show high-availability")[0].splitlines()
    assert show[:5] == [
        "high-availability enabled",
        "high-availability status mode primary",
        "high-availability status current-id n1",
        "high-availability status assigned-role primary",
        "high-availability status read-only-mode false",
    ]
    # The table of real NSO 6.x: columns padded to the widest cell plus two spaces.
    width = len(n2.address) + 2
    assert show[5:] == ["ID  ADDRESS", "-" * (4 + width), f"n2  {n2.address}"]
    assert n2.cli("show high-availability")[0].splitlines() == [
        "high-availability enabled",
        "high-availability status mode secondary",
        "high-availability status current-id n2",
        "high-availability status assigned-role secondary",
        "high-availability status be-secondary-result initialized",
        "high-availability status primary-id n1",
        "high-availability status read-only-mode false",
    ]
    assert n2.cli("show running-config")[0] == n1.cli("show running-config")[0]
    assert n1.cli("config\nl3vpn ha-1 customer c1\ncommit")[1] == 0
    assert "l3vpn ha-1" in n2.wait_for("show running-config l3vpn ha-1", "customer c1")
    # A secondary refuses configuration mode itself, as real NSO does.
    out, status = n2.cli("config")
    assert (out, status) == ("Aborted: node is in read-only mode\n", 1)
    # The copy is in the secondary's own CDB: it survives leaving the cluster.
    n2.cli("high-availability disable")
    assert "customer c1" in n2.cli("show running-config l3vpn ha-1")[0]


def test_failover_promotes_the_failover_primary_keeping_read_only(make_cluster):
    n1, n2 = make_cluster("6.1")
    n2.wait_for("show high-availability status mode", "secondary")
    for node in (n1, n2):
        assert node.cli("high-availability read-only mode true")[1] == 0
    run(n1.init, "stop")
    out = n2.wait_for("show high-availability status mode", "primary")
    assert out.strip() == "high-availability status mode primary"
    assert n2.cli("show high-availability status read-only-mode")[0].strip().endswith("true")


def test_failover_retries_the_primary_then_takes_over_read_only_until_a_secondary_joins(
    make_cluster,
):
    """The rule-based consensus algorithm (high-availability.md, Failover): the
    failover-primary first retries the lost primary, then becomes primary in read-only mode,
    and leaves read-only mode once a secondary joins it."""
    n1, n2 = make_cluster("6.1")
    n2.wait_for("show high-availability status mode", "secondary")
    run(n1.init, "stop")
    lost = n2.cli("show high-availability status")[0]
    assert "high-availability status mode none" in lost  # reconnect attempts first
    assert "primary-id n1" in lost and "assigned-role secondary" in lost
    n2.wait_for("show high-availability status mode", "primary")
    assert n2.cli("show high-availability status read-only-mode")[0].strip().endswith("true")
    out, status = n2.cli("config")
    assert status == 1 and "Aborted: node is in read-only mode" in out
    # The old primary comes back, finds n2 acting as primary and joins it as secondary.
    assert n1.start().returncode == 0
    n1.clients.clear()
    assert n1.wait_for("show high-availability status mode", "secondary").endswith("secondary\n")
    assert "primary-id n2" in n1.cli("show high-availability status primary-id")[0]
    assert n2.wait_for("show high-availability status read-only-mode", "false").endswith("false\n")


def test_nominal_primary_losing_all_secondaries_takes_role_none(make_cluster):
    n1, n2 = make_cluster("6.1")
    n2.wait_for("show high-availability status mode", "secondary")
    run(n2.init, "stop")
    assert n1.wait_for("show high-availability status mode", "none").endswith("mode none\n")
    # It does not come back by itself: the operator restores the roles.
    assert n1.cli("high-availability be-primary")[0] == "result ok\n"
    assert n2.start().returncode == 0
    n2.clients.clear()
    assert n2.wait_for("show high-availability status mode", "secondary").endswith("secondary\n")


def test_without_start_up_settings_nodes_take_no_role(make_cluster):
    n1, n2 = make_cluster("6.1", extra=("--no-start-up",))
    for node in (n1, n2):
        assert node.cli("show high-availability status mode")[0] == (
            "high-availability status mode none\n"
        )
    assert n1.cli("high-availability be-primary")[0] == "result ok\n"
    out, status = n2.cli("high-availability be-secondary-to node n1")
    assert (out, status) == ("result Attempting to be secondary to node n1\n", 0)
    assert n2.wait_for("show high-availability status mode", "secondary").endswith("secondary\n")


def test_third_node_joining_the_failover_primary_clears_read_only(make_cluster):
    n1, n2, n3 = make_cluster("6.1", ("primary", "secondary:failover", "secondary"))
    for node in (n2, n3):
        node.wait_for("show high-availability status mode", "secondary")
    for node in (n1, n2):
        node.cli("high-availability read-only mode true")
    run(n1.init, "stop")
    n2.wait_for("show high-availability status mode", "primary")
    out = n2.wait_for("show high-availability status connected-secondary", "n3")
    assert "n3" in out
    assert n2.cli("show high-availability status read-only-mode")[0].strip().endswith("false")


def test_disabling_the_third_node_first_keeps_read_only(make_cluster):
    n1, n2, n3 = make_cluster("6.1", ("primary", "secondary:failover", "secondary"))
    for node in (n2, n3):
        node.wait_for("show high-availability status mode", "secondary")
    for node in (n1, n2):
        node.cli("high-availability read-only mode true")
    assert n3.cli("high-availability disable")[0].strip() == "result NSO Built-in HA disabled"
    n1.cli("high-availability disable")
    assert n2.cli("high-availability be-primary")[0].strip() == "result ok"
    n2.wait_for("show high-availability status mode", "primary")
    assert n2.cli("show high-availability status read-only-mode")[0].strip().endswith("true")
    assert "n3" not in n2.cli("show high-availability")[0]


def test_mismatched_crypto_keys_refuse_to_form_a_cluster(make_cluster):
    n1, n2 = make_cluster("6.1", start=False)
    keys = n2.path("/etc/ncs/ncs.crypto_keys")
    keys.write_text(f"AESCFB128_KEY={'1' * 32}\nAES256CFB128_KEY={'2' * 64}\n")
    for node in (n1, n2):
        assert node.start().returncode == 0
    n2.cli("high-availability disable")
    # The action is asynchronous: its outcome shows in status be-secondary-result.
    out, status = n2.cli("high-availability be-secondary-to node n1")
    assert (out, status) == ("result Attempting to be secondary to node n1\n", 0)
    result = n2.wait_for("show high-availability status be-secondary-result", "error")
    assert "Token mismatch, secondary is not allowed" in result
    assert "mode none" in n2.cli("show high-availability status mode")[0]


def test_mismatched_versions_refuse_to_form_a_cluster(make_cluster):
    n1, n2 = make_cluster(versions=["6.2", "6.1"], packages=[])
    assert n2.cli("high-availability be-secondary-to node n1")[1] == 0
    out = n2.wait_for("show high-availability status be-secondary-result", "error")
    assert "incompatible NSO version 6.1" in out
    assert n1.cli("show high-availability status mode")[0].strip().endswith("primary")


def test_unreachable_primary(make_cluster):
    _n1, n2 = make_cluster("6.1", start=False)
    assert n2.start().returncode == 0
    n2.cli("high-availability be-secondary-to node n1")
    out = n2.wait_for("show high-availability status be-secondary-result", "error")
    assert out == (
        'high-availability status be-secondary-result "error (25) - could not connect to primary"\n'
    )


def test_ha_link_drop_fault_triggers_failover(make_cluster):
    n1, n2 = make_cluster("6.1")
    n2.wait_for("show high-availability status mode", "secondary")
    sim("fault", "set", "--root", str(n1.root), "ha-link-down")
    assert "primary" in n2.wait_for("show high-availability status mode", "primary")


def test_packages_ha_sync_and_reload(make_cluster, artifacts):
    n1, n2 = make_cluster("6.2")
    n2.wait_for("show high-availability status mode", "secondary")
    shutil.copy(artifacts.service("6.2", "1.1"), n1.path("/opt/ncs/packages"))
    assert n1.cli("software packages install package l3vpn-1.1 replace-existing")[1] == 0
    # A queued item would break the reload; wait-commit-queue-empty lets it drain first.
    # The primary's read-only mode is set back to what it was once the upgrade succeeds.
    out, status = n1.cli(
        "config\nl3vpn q customer c\ncommit commit-queue async\nend\n"
        "high-availability read-only mode true\n"
        "packages ha sync and-reload { wait-commit-queue-empty }"
    )
    assert status == 0 and "commit-queue-id" in out, out
    assert n1.cli("show high-availability status read-only-mode")[0].strip().endswith("true")
    n1.cli("high-availability read-only mode false")
    assert "sync-result {\n    node n2\n    result true\n}" in out
    for node in (n1, n2):
        assert (
            node.cli("show packages package l3vpn package-version")[0].strip()
            == "package-version 1.1"
        )
    assert n1.cli("show high-availability status read-only-mode")[0].strip().endswith("false")
    assert n1.cli("config\nl3vpn after customer x\ncommit")[1] == 0


def test_packages_ha_sync_refuses_differing_load_paths(make_cluster):
    n1, n2 = make_cluster("6.2", start=False)
    conf = n2.path("/etc/ncs/ncs.conf")
    conf.write_text(
        conf.read_text().replace("</load-path>", "  <dir>/opt/extra</dir>\n</load-path>")
    )
    for node in (n1, n2):
        assert node.start().returncode == 0
    n2.wait_for("show high-availability status mode", "secondary")
    out, status = n1.cli("packages ha sync and-reload { wait-commit-queue-empty }")
    assert status == 1 and "load-path on node n2 differs" in out
    out, status = n2.cli("packages ha sync and-reload")
    assert status == 1 and "must run on the HA primary" in out
    assert not list(n2.path("/var/opt/ncs/packages").glob("*.tar.gz.*"))  # nothing shipped


def test_packages_ha_sync_failure_leaves_primary_read_write(make_cluster, artifacts):
    n1, n2 = make_cluster("6.2")
    n2.wait_for("show high-availability status mode", "secondary")
    n1.cli("high-availability read-only mode true")
    shutil.copy(artifacts.service("6.3", "1.1"), n1.path("/var/opt/ncs/packages"))
    out, status = n1.cli("packages ha sync and-reload")
    assert status == 1 and "requires NCS version 6.3" in out
    assert n1.cli("show high-availability status read-only-mode")[0].strip().endswith("false")
