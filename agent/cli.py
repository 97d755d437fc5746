"""``nso-agent``: enroll, run (the service), once, status.

Also ``python -m agent``. The configuration file is ``--config FILE``, else
``$NSO_AGENT_CONFIG``, else ``/etc/nso-agent/agent.conf``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Optional

import click

from agent import __version__, inventory
from agent.client import ServerClient
from agent.config import Config, config_path, load
from agent.errors import AgentError
from agent.journal import Journal, write_json_atomic
from agent.nso import Nso
from agent.transport import insecure_warning

log = logging.getLogger("nso-agent")


def _warn_if_insecure(cfg: Config) -> None:
    """At every start: plain http beyond loopback is allowed only by the configuration, and
    never silently."""
    warning = insecure_warning(cfg.server_url, cfg.allow_insecure_http)
    if warning:
        log.warning("%s", warning)


def _load(ctx: click.Context) -> Config:
    try:
        return load(ctx.obj["config_path"])
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(__version__, prog_name="nso-agent")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Configuration file (default $NSO_AGENT_CONFIG or /etc/nso-agent/agent.conf).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every step's details.")
@click.pass_context
def main(ctx: click.Context, config_file: Optional[str], verbose: bool) -> None:
    """The NSO node agent: runs the upgrade steps the repository server hands out."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # paramiko logs every SSH connection at INFO; the agent opens one per CLI command.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose else logging.WARNING)
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path(config_file)


@main.command()
@click.option("--server", required=True, help="The repository server's URL.")
@click.option(
    "--token",
    "enrollment_token",
    required=True,
    help="One-time enrollment token; '-' reads it from stdin (kept out of the process list).",
)
@click.option("--root", default=None, help="Host root for a new configuration (default /).")
@click.pass_context
def enroll(ctx: click.Context, server: str, enrollment_token: str, root: Optional[str]) -> None:
    """Exchange a one-time enrollment token for this node's token."""
    path: Path = ctx.obj["config_path"]
    if enrollment_token == "-":  # nosec B105 - "read it from stdin", not a password
        enrollment_token = sys.stdin.readline().strip()
    try:
        cfg = load(path) if path.exists() else Config(root=root or "/")
        cfg.server_url = server.rstrip("/")
        _warn_if_insecure(cfg)
        client = ServerClient(
            cfg.server_url, ca_file=cfg.ca_path, allow_insecure_http=cfg.allow_insecure_http
        )
        answer = client.enroll(enrollment_token, socket.getfqdn())
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    token = answer.get("token")
    # It becomes a file and an HTTP header: printable ASCII without spaces, nothing else.
    if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]{16,512}", token):
        raise click.ClickException(
            "the server's answer holds no usable node token (printable ASCII, 16 to 512 "
            "characters): nothing was written. Check that --server is the repository server's "
            "URL and that no proxy in between rewrites its answers, then enroll again with a "
            "new token ('nso-repo node enroll-token NODE')"
        )
    cfg.save(path)
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    write_json_atomic(cfg.node_file, {"node": answer.get("node"), "server": cfg.server_url})
    node = answer.get("node") or {}
    click.echo(f"enrolled as node {node.get('name')} (id {node.get('id')}) with {cfg.server_url}")
    click.echo(f"configuration: {path}; token: {cfg.token_file}")


def _runner(ctx: click.Context) -> Any:
    from agent.runner import Runner

    cfg = _load(ctx)
    _warn_if_insecure(cfg)
    try:
        return Runner(cfg)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("run")
@click.pass_context
def run_service(ctx: click.Context) -> None:
    """Serve: heartbeat, long-poll for steps and run them until stopped (SIGTERM)."""
    runner = _runner(ctx)
    stopping = {"now": False}

    def on_term(_sig: int, _frame: Any) -> None:
        # Finish the step in progress (its journal makes a hard stop safe too), then exit.
        stopping["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    with contextlib.suppress(KeyboardInterrupt):
        runner.run_forever(lambda: stopping["now"])


@main.command()
@click.option("--wait", type=click.IntRange(0, 60), default=None, help="Long-poll seconds.")
@click.pass_context
def once(ctx: click.Context, wait: Optional[int]) -> None:
    """Run at most one step, then exit (exit status 1 if it failed)."""
    runner = _runner(ctx)
    try:
        final = runner.once(wait)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    if final is None:
        click.echo("no work")
        return
    click.echo(f"{final['state']}: {final.get('message', '')}")
    if final["state"] == "failed":
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Configuration, enrollment, the journal, and NSO's state."""
    cfg = _load(ctx)
    try:
        node = json.loads(cfg.node_file.read_text()).get("node")
    except (OSError, ValueError):
        node = None
    journal = Journal(cfg.journal_file).entry
    nso = Nso(cfg)
    report: dict[str, Any] = {
        "config": str(cfg.source),
        "server": cfg.server_url,
        "root": cfg.root,
        "service_manager": "systemd" if cfg.uses_systemd() else "initd",
        "enrolled": cfg.token_file.exists(),
        "node": node,
        "journal": None
        if journal is None
        else {
            "step_id": journal.step_id,
            "job_id": journal.job_id,
            "name": journal.name,
            "attempt": journal.attempt,
            "phase": journal.phase,
            "report_pending": journal.final_report is not None,
        },
        # Files a failed patch apply could not put back (agent/steps/patches.py).
        "patch_undo_saves": sorted(
            str(p) for p in (cfg.state_path / "patch-undo").glob("job-*-step-*")
        ),
        "nso": {
            "status": nso.state(),
            "current": nso.current_version(),
            "installed_releases": nso.installed_releases(),
        },
    }
    if as_json:
        report["inventory"] = inventory.collect(cfg, with_cli=False)
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(f"config:   {report['config']}")
    click.echo(f"server:   {report['server'] or '(not set)'}")
    click.echo(f"root:     {report['root']} ({report['service_manager']})")
    enrolled = f"yes, node {node.get('name')} (id {node.get('id')})" if node else "no"
    click.echo(f"enrolled: {enrolled if report['enrolled'] else 'no'}")
    j = report["journal"]
    click.echo(
        "journal:  "
        + (
            "empty"
            if j is None
            else f"step {j['step_id']} {j['name']} of job {j['job_id']}, attempt {j['attempt']}, "
            f"phase {j['phase']}" + (", final report pending" if j["report_pending"] else "")
        )
    )
    n = report["nso"]
    click.echo(
        f"nso:      {n['status']}, current {n['current']}, installed "
        f"{', '.join(n['installed_releases']) or '(none)'}"
    )
    for save in report["patch_undo_saves"]:
        click.echo(f"undo:     {save} (a failed patch apply's files from before; see its job)")


if __name__ == "__main__":
    main()
