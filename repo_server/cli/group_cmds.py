"""Client commands for HA groups: register, list, plan and upgrade them."""

from __future__ import annotations

from typing import Any, Optional

import click

from repo_server.cli.common import client_options, handle_errors, make_client, print_json
from repo_server.cli.fleet_cmds import package_change, package_files, package_removals, watch_job
from repo_server.cli.patch_cmds import dropped_line

POLICY = click.Choice(["safe", "available"])
POLICY_HELP = (
    "safe (default): the upgraded primary stays read-only until the secondary has rejoined; "
    "available: it takes writes as soon as it starts, with no secondary behind them."
)


def _member(text: str) -> dict[str, Any]:
    """NODE=HA_ID:ROLE[:failover] -> the API's member object."""
    node, sep, rest = text.partition("=")
    parts = rest.split(":")
    if (
        not sep
        or not node
        or len(parts) not in (2, 3)
        or (len(parts) == 3 and parts[2] != "failover")
    ):
        raise click.BadParameter(
            f"{text!r}: write NODE=HA_ID:primary, NODE=HA_ID:secondary or "
            "NODE=HA_ID:secondary:failover",
            param_hint="--member",
        )
    return {"node": node, "ha_id": parts[0], "role": parts[1], "failover": len(parts) == 3}


@click.group()
def group() -> None:
    """HA groups: register them, plan and run HA-coordinated upgrades."""


@group.command("add")
@click.argument("name")
@click.option(
    "--member",
    "members",
    multiple=True,
    required=True,
    help="NODE=HA_ID:primary | NODE=HA_ID:secondary[:failover] (repeat; the HA id is the "
    "ha-node id of NSO's high-availability configuration).",
)
@client_options
@handle_errors
def group_add(
    name: str, members: tuple[str, ...], url: Optional[str], token: Optional[str]
) -> None:
    """Register HA group NAME; refused when a member's heartbeat contradicts it."""
    created = make_client(url, token).call(
        "POST", "/api/v1/groups", json={"name": name, "members": [_member(m) for m in members]}
    )
    _print_group(created)


@group.command("ls")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def group_ls(as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """List HA groups with their members' HA state."""
    found = make_client(url, token).call("GET", "/api/v1/groups")
    if as_json:
        print_json(found)
        return
    for item in found:
        _print_group(item)


@group.command("rm")
@click.argument("name")
@client_options
@handle_errors
def group_rm(name: str, url: Optional[str], token: Optional[str]) -> None:
    """Forget HA group NAME (its nodes stay registered; NSO is not touched)."""
    make_client(url, token).call("DELETE", f"/api/v1/groups/{name}")
    click.echo(f"group {name} removed")


def _print_group(item: dict[str, Any]) -> None:
    click.echo(f"group {item['name']}")
    for m in item["members"]:
        ha = m.get("ha") or {}
        role = m["role"] + (" (failover)" if m["failover"] else "")
        now = (
            f"mode {ha.get('mode')}, read-only {str(ha.get('read_only')).lower()}"
            if ha
            else "HA state unknown"
        )
        click.echo(
            f"  {m['node']:<20} {m['ha_id']:<8} {role:<22} {m.get('running_version') or '-':<10} {now}"
        )
    for problem in item.get("problems") or []:
        click.echo(f"  ! {problem}")


def _plan_args(target: str, policy: str, extra: bool, strip: bool) -> dict[str, Any]:
    return {
        "to": target,
        "write_policy": policy,
        "allow_extra_packages": extra,
        "strip_removed_ncs_conf": strip,
    }


@group.command("plan")
@click.argument("name")
@click.option("--to", "target", required=True, help="Target NSO release.")
@click.option("--write-policy", "policy", type=POLICY, default="safe", help=POLICY_HELP)
@click.option("--allow-extra-packages", is_flag=True)
@click.option("--strip-ncs-conf", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def group_plan(
    name: str,
    target: str,
    policy: str,
    allow_extra_packages: bool,
    strip_ncs_conf: bool,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Show every stage on every member of upgrading group NAME to --to."""
    args = _plan_args(target, policy, allow_extra_packages, strip_ncs_conf)
    plan = make_client(url, token).call(
        "GET",
        f"/api/v1/groups/{name}/plan",
        params={k: str(v).lower() if isinstance(v, bool) else v for k, v in args.items()},
    )
    if as_json:
        print_json(plan)
        return
    click.echo(
        f"group {plan['group']} -> {plan['to']}, write policy {plan['write_policy']}: "
        + ("may proceed" if plan["ok"] else "REFUSED")
    )
    _print_refusals(plan)
    for member in plan["members"]:
        dropped = dropped_line(member.get("drops_patches") or [])
        if dropped:
            click.echo(f"  ! {member['node']} {dropped}")
    _print_steps(plan)


def _print_refusals(plan: dict[str, Any]) -> None:
    for problem in plan["problems"]:
        click.echo(f"  - {problem}")
    for member in plan["members"]:
        for reason in member["reasons"]:
            click.echo(
                f"  - {member['node']}: {reason['message']}\n    what to do: {reason['remedy']}"
            )


def _print_steps(plan: dict[str, Any]) -> None:
    """Every step of a group plan by stage, with its member; exits 1 if it is refused."""
    stage = None
    marks = {v: k for k, v in plan.get("marks", {}).items()}
    if any(step.get("batch") for step in plan["steps"]):
        click.echo("(&: runs at the same time as the & steps next to it, each on its member)")
    for step in plan["steps"]:
        if step["stage"] != stage:
            stage = step["stage"]
            click.echo(f"stage {stage}")
        mark = f"   <- {marks[step['seq']].replace('_', ' ')}" if step["seq"] in marks else ""
        together = "&" if step.get("batch") else " "
        click.echo(
            f"  {step['seq']:>2}.{together}{step['node']:<16} {step['name']:<20} "
            f"{step['title']}{mark}"
        )
    if not plan["ok"]:
        raise SystemExit(1)


@group.command("upgrade")
@click.argument("name")
@click.option("--to", "target", required=True, help="Target NSO release.")
@click.option("--write-policy", "policy", type=POLICY, default="safe", help=POLICY_HELP)
@click.option("--allow-extra-packages", is_flag=True)
@click.option("--strip-ncs-conf", is_flag=True)
@click.option("--watch", is_flag=True, help="Follow the job until it ends.")
@client_options
@handle_errors
def group_upgrade(
    name: str,
    target: str,
    policy: str,
    allow_extra_packages: bool,
    strip_ncs_conf: bool,
    watch: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Start the HA-coordinated upgrade of group NAME; prints the job id."""
    client = make_client(url, token)
    created = client.call(
        "POST",
        f"/api/v1/groups/{name}/upgrade",
        json=_plan_args(target, policy, allow_extra_packages, strip_ncs_conf),
    )
    click.echo(created["id"])
    if watch:
        watch_job(client, created["id"])


@group.command("package-plan")
@click.argument("name")
@package_files
@package_removals
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def group_package_plan(
    name: str,
    packages: tuple[str, ...],
    removals: tuple[str, ...],
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Show every step on every member of upgrading packages on group NAME (packages ha
    sync on its primary); exits 1 when it would be refused."""
    plan = make_client(url, token).call(
        "GET", f"/api/v1/groups/{name}/package-plan", params=package_change(packages, removals)
    )
    if as_json:
        print_json(plan)
        return
    change = [*plan["packages"], *(f"remove {n}" for n in plan.get("remove") or [])]
    click.echo(
        f"group {plan['group']}: {', '.join(change)} with packages ha sync "
        f"{plan['sync']}: " + ("may proceed" if plan["ok"] else "REFUSED")
    )
    _print_refusals(plan)
    _print_steps(plan)


@group.command("package-upgrade")
@click.argument("name")
@package_files
@package_removals
@click.option("--watch", is_flag=True, help="Follow the job until it ends.")
@client_options
@handle_errors
def group_package_upgrade(
    name: str,
    packages: tuple[str, ...],
    removals: tuple[str, ...],
    watch: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Replace, add or remove packages on every member of group NAME (built for the release
    it runs); prints the job id. A failed job says the way back ('nso-repo job rollback
    ID')."""
    change = package_change(packages, removals)
    client = make_client(url, token)
    created = client.call("POST", f"/api/v1/groups/{name}/package-upgrade", json=change)
    click.echo(created["id"])
    if watch:
        watch_job(client, created["id"])
