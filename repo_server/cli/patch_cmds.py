"""Client commands for emergency patches: roll a bundle out (or back off), list rollouts,
show one (docs/patches.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import click

from repo_server.cli.common import client_options, fail, handle_errors, make_client, print_json

ACTIVE = ("queued", "running")


@click.group()
def patch() -> None:
    """Emergency .beam patches: roll out, remove, follow."""


@patch.command("rollout")
@click.argument("bundle")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    help="A node to patch (repeat); an HA group member goes with all the others, or use --group.",
)
@click.option(
    "--group", "groups", multiple=True, help="An HA group: every member, secondaries first."
)
@click.option(
    "--all-affected",
    is_flag=True,
    help="Every node whose last heartbeat says it runs the bundle's NSO version exactly.",
)
@click.option("--remove", is_flag=True, help="Take the patch off again instead.")
@click.option("--watch", is_flag=True, help="Follow the rollout until every node is done.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def patch_rollout(
    bundle: str,
    nodes: tuple[str, ...],
    groups: tuple[str, ...],
    all_affected: bool,
    remove: bool,
    watch: bool,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Apply patch BUNDLE (nso-<VSN>-patch-<ID>.tar.gz, in the catalog) to the named nodes
    and groups, or to --all-affected; the agents take it at once. Prints the rollout id."""
    client = make_client(url, token)
    started = client.call(
        "POST",
        "/api/v1/patch-rollouts",
        json={
            # As `nso-repo upload` names it in the catalog: by its file name.
            "patch": Path(bundle).name,
            "action": "remove" if remove else "apply",
            "nodes": list(nodes),
            "groups": list(groups),
            "all_affected": all_affected,
        },
    )
    if as_json and not watch:
        print_json(started)
        return
    # With --json, standard output carries the JSON alone: the progress goes to stderr.
    click.echo(started["id"], err=as_json)
    for item in started.get("left_out") or []:
        click.echo(f"left out: {item['node']}: {item['reason']}", err=True)
    if watch:
        watch_rollout(client, started["id"], as_json=as_json)


@patch.command("ls")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def patch_ls(limit: int, as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """Patch rollouts, newest first, with how many nodes are in each state."""
    found = make_client(url, token).call("GET", "/api/v1/patch-rollouts", params={"limit": limit})
    if as_json:
        print_json(found)
        return
    for item in found:
        click.echo(f"{_headline(item)}  {_counts(item['counts'])}")


@patch.command("show")
@click.argument("rollout_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def patch_show(rollout_id: int, as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """One rollout: every node, its state and what its agent reported."""
    item = make_client(url, token).call("GET", f"/api/v1/patch-rollouts/{rollout_id}")
    if as_json:
        print_json(item)
        return
    click.echo(_headline(item))
    for node in item["nodes"]:
        click.echo(_node_line(node))


def watch_rollout(
    client: Any, rollout_id: int, interval: float = 1.0, as_json: bool = False
) -> None:
    """Print each node's state as it changes until none is queued or running (``as_json``:
    on stderr, then the rollout as JSON on stdout); exit 1 unless every node succeeded."""
    shown: dict[str, str] = {}
    while True:
        item = client.call("GET", f"/api/v1/patch-rollouts/{rollout_id}")
        for node in item["nodes"]:
            if shown.get(node["node"]) != node["state"]:
                shown[node["node"]] = node["state"]
                click.echo(_node_line(node), err=as_json)
        if item["state"] not in ACTIVE:
            break
        time.sleep(interval)
    click.echo(f"rollout {rollout_id} {item['state']}: {_counts(item['counts'])}", err=as_json)
    if as_json:
        print_json(item)
    if item["state"] != "succeeded":
        fail(
            f"rollout {rollout_id} did not succeed on every node ('nso-repo patch show {rollout_id}')"
        )


def _headline(item: dict[str, Any]) -> str:
    return (
        f"{item['id']:>5} {item['action']:<6} {item['patch']} (NSO {item['nso_version']}) "
        f"by {item['created_by']}: {item['state']}"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no nodes"


def _node_line(node: dict[str, Any]) -> str:
    result = node.get("result") or {}
    what = ""
    if node["state"] == "succeeded" and "result" in node:  # shown to roles with job:details
        modules = ", ".join(result.get("modules") or []) or "none"
        what = f"modules {modules}" + ("" if result.get("changed") else " (unchanged)")
        if result.get("kept"):
            what += f"; kept (another build): {', '.join(result['kept'])}"
    elif node["state"] in ("failed", "skipped"):
        what = node.get("message") or ""
    group = f" [{node['group']}]" if node.get("group") else ""
    return (
        f"  {node['node']}{group:<12} job {node['job_id']:<6} {node['state']:<10} {what}".rstrip()
    )


def dropped_line(patches: list[dict[str, Any]]) -> Optional[str]:
    """What a plan's ``drops_patches`` says, for `node plan`, `group plan` and `rollout
    plan`: None when the move leaves no patch behind."""
    if not patches:
        return None
    named = ", ".join(
        f"{p['module']} ({p.get('patch_id') or 'patch id unknown'}"
        + (f", being applied by job {p['job']}" if p.get("job") else "")
        + ")"
        for p in patches
    )
    return (
        f"drops patches: {named}; they belong to the release it leaves "
        "(roll out the target release's build of each afterwards, if there is one)"
    )
