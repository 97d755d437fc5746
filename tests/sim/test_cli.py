"""The NSO CLI over SSH and ncs_cli: auth, config and commit, read-only, commit queue."""

from __future__ import annotations

import paramiko
import pytest

from tests.support.sim_hosts import run


def test_password_and_key_auth(make_host, tmp_path):
    key = paramiko.RSAKey.generate(2048)
    pub = tmp_path / "id.pub"
    pub.write_text(f"{key.get_name()} {key.get_base64()} ops@example\n")
    host = make_host(
        "6.2",
        [],
        extra=("--user", "oper:s3cret", "--authorized-key", f"oper:{pub}"),
        shared_host_key=False,  # host create generates the host key itself
    )
    assert host.path("/etc/ncs/ssh/ssh_host_rsa_key").stat().st_mode & 0o777 == 0o600
    assert (
        host.cli("show ncs-state version", host.ssh("oper", "s3cret"))[0]
        == "ncs-state version 6.2\n"
    )
    assert host.cli("show ncs-state version", host.ssh("oper", None, key))[1] == 0
    with pytest.raises(paramiko.AuthenticationException):
        host.ssh("oper", "wrong")
    with pytest.raises(paramiko.AuthenticationException):
        host.ssh("admin", "admin")  # only the users the host was created with


def test_interactive_shell_prompt_and_config(make_host):
    host = make_host("6.2")
    chan = host.ssh().invoke_shell()

    def until(marker: str) -> str:
        buf = b""
        while not buf.decode(errors="replace").endswith(marker):
            buf += chan.recv(4096)
        return buf.decode()

    assert until("admin@ncs# ").startswith("admin connected from")
    chan.send("config\n")
    assert "Entering configuration mode terminal" in until("admin@ncs(config)# ")
    chan.send("l3vpn blue customer bluecorp\n")
    until("admin@ncs(config)# ")
    chan.send("commit\n")
    assert "Commit complete." in until("admin@ncs(config)# ")
    chan.send("end\n")
    until("admin@ncs# ")
    chan.send("show running-config l3vpn blue\n")
    assert "l3vpn blue\r\n customer bluecorp\r\n!" in until("admin@ncs# ")


def test_ncs_cli_console(make_host):
    host = make_host("6.2")
    result = host.ncs_cli(
        "show ncs-state version",
        "config",
        "l3vpn red customer r",
        "commit",
        "end",
        "show running-config l3vpn red",
    )
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "ncs-state version 6.2",
        "Entering configuration mode terminal",
        "Commit complete.",
        "l3vpn red",
        " customer r",
        "!",
    ]
    assert host.ncs_cli("bogus command").returncode == 1


def test_read_only_mode_refuses_writes(make_host):
    host = make_host("6.2")
    assert host.cli("high-availability read-only mode true")[1] == 0
    assert "read-only-mode true" in host.cli("show high-availability status read-only-mode")[0]
    out, status = host.cli("config\nl3vpn x customer y\ncommit")
    assert status == 1 and "Aborted: node is in read-only mode" in out
    host.cli("high-availability read-only mode false")
    assert host.cli("config\nl3vpn x customer y\ncommit")[1] == 0


def test_commit_queue_drains(make_host):
    host = make_host("6.2")
    out, status = host.cli("config\nl3vpn q1 customer a\ncommit commit-queue async")
    assert status == 0 and "commit-queue-id " in out
    queue_id = out.split("commit-queue-id ")[1].split()[0]
    assert queue_id in host.cli("show devices commit-queue")[0]
    assert host.wait_for("show devices commit-queue", "No entries found") == "% No entries found.\n"


def test_cli_of_a_stopped_host_is_unreachable(make_host):
    host = make_host("6.2", [], start=False)
    result = run(host.path("/opt/ncs/current/bin/ncs_cli"), "-C", input="show ncs-state version\n")
    assert result.returncode == 1


def test_reload_waits_for_open_transactions_then_fails(make_host):
    host = make_host("6.2")
    chan = host.ssh().invoke_shell()
    buf = b""
    chan.send("config\nl3vpn pending customer z\n")
    while buf.count(b"admin@ncs(config)# ") < 2:  # both lines processed
        buf += chan.recv(4096)
    out, status = host.cli("packages reload max-wait-time 50", host.ssh())
    assert status == 1 and "open transactions" in out
    chan.send("abort\n")
    assert host.cli("packages reload")[1] == 0


def test_semicolons_separate_commands_as_in_ciscos_scripts(make_host):
    """NSO-developer/ha-hcc rule-upgrade-l2 sends ``"cmd; cmd; ..."`` in one ssh exec."""
    host = make_host("6.2")
    out, status = host.cli(
        "high-availability read-only; show high-availability status read-only-mode; "
        'high-availability read-only mode false; config; l3vpn s customer "a;b"; commit; end'
    )
    assert status == 0
    assert out.splitlines()[:3] == [
        "high-availability status read-only-mode true",
        "Entering configuration mode terminal",
        "Commit complete.",
    ]
    assert host.cli("show running-config l3vpn s")[0] == "l3vpn s\n customer a;b\n!\n"
