"""HA behaviour from the gitbook's high-availability.md: the token, be-none, local-node-id,
reconnect-secondaries and the HA alarms."""

from __future__ import annotations

import time

from tests.support.sim_hosts import TIME_SCALE, run


def _mode(host) -> str:
    return host.cli("show high-availability status mode")[0].split()[-1]


def test_token_is_stored_encrypted_and_must_match(make_cluster):
    n1, n2 = make_cluster("6.1", extra=("--no-start-up",))
    stored = n1.cli("show running-config high-availability token")[0]
    assert stored.startswith("high-availability token $9$"), stored
    assert "nso-sim-ha-token" not in stored
    assert n1.cli("high-availability be-primary")[0] == "result ok\n"

    assert n2.cli("config\nhigh-availability token other-secret\ncommit")[1] == 0
    n2.cli("high-availability be-secondary-to node n1")
    out = n2.wait_for("show high-availability status be-secondary-result", "error")
    assert "Token mismatch, secondary is not allowed" in out

    assert n2.cli("config\nno high-availability token\ncommit")[1] == 0
    n2.cli("high-availability be-secondary-to node n1")
    out = n2.wait_for("show high-availability status be-secondary-result", "no HA token")
    assert "set the same token on every node" in out

    # The same secret, encrypted anew with the same keys, is the same token.
    assert n2.cli("config\nhigh-availability token nso-sim-ha-token\ncommit")[1] == 0
    n2.cli("high-availability be-secondary-to node n1")
    n2.wait_for("show high-availability status mode", "secondary")
    # The secondary now holds the primary's copy of the token.
    assert n2.cli("show running-config high-availability token")[0] == stored


def test_local_node_id_be_none_and_the_ha_alarms(make_cluster):
    n1, n2 = make_cluster("6.1")
    n2.wait_for("show high-availability status mode", "secondary")
    assert n1.cli("high-availability local-node-id") == ("id n1\n", 0)
    assert n1.cli("show alarms alarm-list")[0] == "% No entries found.\n"

    # be-none: role none, HA still enabled; the primary loses its only secondary.
    assert n2.cli("high-availability be-none") == ("result ok\n", 0)
    status = n2.cli("show high-availability")[0]
    assert "high-availability enabled" in status and "status mode none" in status
    alarms = n1.wait_for("show alarms alarm-list", "ha-secondary-down").splitlines()
    assert alarms[:5] == [
        "alarms alarm-list alarm ncs ha-secondary-down /high-availability/ha-node[id='n2'] \"\"",
        " is-cleared              false",
        alarms[2],
        " last-perceived-severity critical",
        ' last-alarm-text         "Lost connection to secondary"',
    ]
    assert alarms[2].startswith(" last-status-change      20")
    # Consensus: the nominal primary without secondaries takes role none.
    n1.wait_for("show high-availability status mode", "none")
    assert n1.cli("high-availability be-primary")[0] == "result ok\n"
    n2.cli("high-availability be-secondary-to node n1")
    n2.wait_for("show high-availability status mode", "secondary")
    cleared = n1.wait_for("show alarms alarm-list", "is-cleared              true")
    assert cleared.count(" status-change ") == 2

    # The secondary raises ha-primary-down when its primary goes away.
    run(n1.ncs, "--stop")
    lost = n2.wait_for("show alarms alarm-list", "ha-primary-down")
    assert "alarm ncs ha-primary-down /high-availability/ha-node[id='n1']" in lost
    assert 'alarm-text         "Lost connection to primary due to: Primary closed connection"' in (
        lost
    )


def test_reconnect_secondaries_false_keeps_a_lost_secondary_out(make_cluster):
    n1, n2, n3 = make_cluster("6.1", ("primary", "secondary:failover", "secondary"))
    for node in (n2, n3):
        node.wait_for("show high-availability status mode", "secondary")
    setting = "config\nhigh-availability settings reconnect-secondaries false\ncommit"
    assert n1.cli(setting)[1] == 0
    n3.wait_for("show running-config high-availability settings", "reconnect-secondaries")
    run(n1.ncs, "--stop")
    n2.wait_for("show high-availability status mode", "primary")
    # Several reconnect intervals (10 nominal s each) later, n3 has not looked for n2.
    time.sleep(5 * 10 * TIME_SCALE)
    assert _mode(n3) == "none"
    assert "n3" not in n2.cli("show high-availability status")[0]
    assert n2.cli("show high-availability status read-only-mode")[0].split()[-1] == "true"
