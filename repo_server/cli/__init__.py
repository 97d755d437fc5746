"""`nso-repo`: run the server, manage its database and tokens, and talk to it as a client."""

from __future__ import annotations

import click

from repo_server import __version__
from repo_server.cli.agent_cmds import agent
from repo_server.cli.client_cmds import ls, release_name, rm, show, upload
from repo_server.cli.demo import demo
from repo_server.cli.fleet_cmds import job, node, release
from repo_server.cli.group_cmds import group
from repo_server.cli.ned_cmds import ned
from repo_server.cli.patch_cmds import patch
from repo_server.cli.patch_signing_cmds import patch_sign
from repo_server.cli.rollout_cmds import rollout, window
from repo_server.cli.server_cmds import db, gc, serve, token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nso-repo")
def cli() -> None:
    """NSO artifact repository and upgrade orchestrator."""


for command in (
    serve,
    db,
    token,
    gc,
    upload,
    ls,
    show,
    rm,
    release_name,
    release,
    node,
    group,
    patch,
    rollout,
    window,
    job,
    ned,
    agent,
    demo,
):
    cli.add_command(command)
patch.add_command(patch_sign)


def main() -> None:
    cli()
