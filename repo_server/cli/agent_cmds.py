"""`nso-repo agent bootstrap`: install and enroll nso-agent on an NSO host over SSH."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import click

from repo_server.cli.agent_bootstrap import Bootstrap, BootstrapFailed, HostLayout, SshTarget
from repo_server.cli.common import client_options, handle_errors, make_client, print_json


@click.group()
def agent() -> None:
    """The agents on NSO hosts."""


def _secret(variable: Optional[str], what: str) -> Optional[str]:
    if not variable:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise BootstrapFailed(f"{what}: the environment variable {variable} is not set")
    return value


@agent.command("bootstrap")
@click.argument("host")
@click.option("--node", required=True, help="The node's name on the server (registered if new).")
@click.option("--server-url", required=True, help="The server's URL as the host reaches it.")
@click.option(
    "--wheelhouse",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of wheels: nso-fleet and its dependencies (nothing is fetched on the host).",
)
@click.option("--ssh-port", default=22, show_default=True)
@click.option("--ssh-user", default="root", show_default=True)
@click.option("--ssh-key", type=click.Path(dir_okay=False, exists=True), help="Private key file.")
@click.option("--ssh-password-env", help="Environment variable holding the SSH password.")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="Extra known_hosts file.")
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Trust a host key seen for the first time (saved to --known-hosts). Check its "
    "fingerprint with the host's owner first.",
)
@click.option("--python", default="python3", show_default=True, help="Python on the host.")
@click.option("--prefix", default="/opt/nso-agent", show_default=True)
@click.option("--config-dir", default="/etc/nso-agent", show_default=True)
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True)
@click.option(
    "--state-dir",
    default="/var/lib/nso-agent",
    show_default=True,
    help="The agent's own state (under --host-root).",
)
@click.option("--host-root", default="/", show_default=True, help="Root of the NSO paths.")
@click.option("--cli-host", default="127.0.0.1", show_default=True, help="NSO's CLI (SSH).")
@click.option("--cli-port", default=2024, show_default=True)
@click.option("--cli-user", default="admin", show_default=True)
@click.option("--cli-password-env", help="Environment variable holding the NSO CLI password.")
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), help="Server's CA.")
@click.option("--no-start", is_flag=True, help="Install and enroll, but do not start it.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def bootstrap(
    host: str,
    node: str,
    server_url: str,
    wheelhouse: str,
    ssh_port: int,
    ssh_user: str,
    ssh_key: Optional[str],
    ssh_password_env: Optional[str],
    known_hosts: Optional[str],
    accept_new_host_key: bool,
    python: str,
    prefix: str,
    config_dir: str,
    unit_dir: str,
    state_dir: str,
    host_root: str,
    cli_host: str,
    cli_port: int,
    cli_user: str,
    cli_password_env: Optional[str],
    ca_file: Optional[str],
    no_start: bool,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Install nso-agent on HOST over SSH, enroll it as NODE and start its systemd unit.
    Safe to run again (an upgrade of the agent, a rebuilt host)."""
    target = SshTarget(
        host,
        ssh_port,
        ssh_user,
        ssh_key,
        _secret(ssh_password_env, "--ssh-password-env"),
        known_hosts,
        accept_new_host_key,
    )
    layout = HostLayout(
        python=python,
        prefix=prefix,
        config_dir=config_dir,
        unit_dir=unit_dir,
        state_dir=state_dir,
        host_root=host_root,
        cli_host=cli_host,
        cli_port=cli_port,
        cli_user=cli_user,
        cli_password=_secret(cli_password_env, "--cli-password-env"),
        ca_file=ca_file,
    )
    echo = (lambda _line: None) if as_json else click.echo
    done = Bootstrap(make_client(url, token), target, layout, echo).run(
        node, server_url, Path(wheelhouse), start=not no_start
    )
    if as_json:
        print_json(done)
