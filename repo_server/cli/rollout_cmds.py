"""Client commands for fleet rollouts and maintenance windows (docs/rollouts.md)."""

from __future__ import annotations

import time
from typing import Any, Optional

import click

from repo_server.cli.common import client_options, fail, handle_errors, make_client, print_json
from repo_server.cli.patch_cmds import dropped_line

SELECT_KINDS = {"node": "nodes", "group": "groups", "label": "labels", "version": "versions"}
FINISHED = ("succeeded", "incomplete", "cancelled")


def _selection(terms: tuple[str, ...]) -> dict[str, Any]:
    selection: dict[str, Any] = {"nodes": [], "groups": [], "labels": [], "versions": []}
    for term in terms:
        if term == "all":
            selection["all"] = True
            continue
        kind, _, value = term.partition(":")
        if kind not in SELECT_KINDS or not value:
            raise click.BadParameter(
                f"{term!r}: use node:NAME, group:NAME, label:LABEL, version:VSN or all",
                param_hint="--select",
            )
        selection[SELECT_KINDS[kind]].append(value)
    if not terms:
        raise click.BadParameter(
            "say which targets: --select all, node:NAME, ...", param_hint="--select"
        )
    return selection


def _percent(text: str, name: str) -> int:
    try:
        value = int(text.strip().rstrip("%"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a percentage (95%)", param_hint=name) from None
    return value


def rollout_options(f: Any) -> Any:
    for decorator in reversed(
        [
            click.option(
                "--release", required=True, help="The NSO release to assign and roll out."
            ),
            click.option(
                "--select",
                "select",
                multiple=True,
                help="Targets (repeat): node:NAME, group:NAME, label:LABEL, version:VSN (what "
                "nodes run now) or all. Named nodes come first; the first is the canary.",
            ),
            click.option(
                "--canary", default=0, show_default=True, help="Targets upgraded first, alone."
            ),
            click.option(
                "--waves",
                default="100%",
                show_default=True,
                help="Cumulative shares of the rest: 10%,50%,100%.",
            ),
            click.option(
                "--success-threshold",
                default="100%",
                show_default=True,
                help="Share of a wave that must succeed before the next opens.",
            ),
            click.option(
                "--error-threshold",
                default="0%",
                show_default=True,
                help="Share of a wave that may fail; more pauses the rollout.",
            ),
            click.option(
                "--concurrency", default=1, show_default=True, help="Targets upgraded at once."
            ),
            click.option(
                "--job-minutes",
                default=60,
                show_default=True,
                help="How long one target's job may take: none starts in a window that closes sooner.",
            ),
            click.option(
                "--write-policy",
                type=click.Choice(["safe", "available"]),
                default="safe",
                show_default=True,
                help="For HA groups (see 'group upgrade').",
            ),
            click.option(
                "--gate",
                "gates",
                multiple=True,
                help="A node or group that must run the release already (repeat).",
            ),
            click.option("--allow-extra-packages", is_flag=True),
            click.option("--strip-removed-ncs-conf", is_flag=True),
            click.option("--json", "as_json", is_flag=True),
        ]
    ):
        f = decorator(f)
    return client_options(f)


def _body(kw: dict[str, Any]) -> dict[str, Any]:
    return {
        "release": kw["release"],
        "select": _selection(kw["select"]),
        "canary": kw["canary"],
        "waves": [_percent(w, "--waves") for w in kw["waves"].split(",") if w.strip()],
        "success_threshold": _percent(kw["success_threshold"], "--success-threshold"),
        "error_threshold": _percent(kw["error_threshold"], "--error-threshold"),
        "concurrency": kw["concurrency"],
        "job_minutes": kw["job_minutes"],
        "write_policy": kw["write_policy"],
        "gates": list(kw["gates"]),
        "allow_extra_packages": kw["allow_extra_packages"],
        "strip_removed_ncs_conf": kw["strip_removed_ncs_conf"],
    }


@click.group()
def rollout() -> None:
    """Fleet rollouts: assign a release to nodes and groups, in waves."""


@rollout.command("plan")
@rollout_options
@handle_errors
def rollout_plan(**kw: Any) -> None:
    """What a rollout would do: its targets, waves and each target's preflight."""
    planned = make_client(kw["url"], kw["token"]).call(
        "POST", "/api/v1/rollouts/plan", json=_body(kw)
    )
    if kw["as_json"]:
        print_json(planned)
        return
    counts = ", ".join(f"{n} {s}" for s, n in sorted(planned["counts"].items()))
    click.echo(f"NSO {planned['release']}: {len(planned['targets'])} targets ({counts})")
    for target in planned["targets"]:
        click.echo(_target_line(target))
        dropped = target.get("drops_patches") or []
        for node in dict.fromkeys(str(p.get("node")) for p in dropped):
            line = dropped_line([p for p in dropped if p.get("node") == node])
            if line:
                click.echo(f"    {node}: {line}")


@rollout.command("create")
@rollout_options
@click.option("--watch", is_flag=True, help="Follow the rollout until it finishes or pauses.")
@handle_errors
def rollout_create(watch: bool, **kw: Any) -> None:
    """Assign the release to the selection and start rolling it out. Prints its id."""
    client = make_client(kw["url"], kw["token"])
    created = client.call("POST", "/api/v1/rollouts", json=_body(kw))
    if kw["as_json"] and not watch:
        print_json(created)
        return
    click.echo(created["id"])
    if watch:
        _watch(client, created["id"])


@rollout.command("ls")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def rollout_ls(limit: int, as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """Rollouts, newest first, with their progress."""
    found = make_client(url, token).call("GET", "/api/v1/rollouts", params={"limit": limit})
    if as_json:
        print_json(found)
        return
    for item in found:
        click.echo(_headline(item))


@rollout.command("show")
@click.argument("rollout_id", type=int)
@click.option("--watch", is_flag=True, help="Follow it until it finishes or pauses.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def rollout_show(
    rollout_id: int, watch: bool, as_json: bool, url: Optional[str], token: Optional[str]
) -> None:
    """One rollout: per wave and per target, and why a target is not done."""
    client = make_client(url, token)
    if watch:
        _watch(client, rollout_id)
        return
    item = client.call("GET", f"/api/v1/rollouts/{rollout_id}")
    if as_json:
        print_json(item)
        return
    _print(item)


def _action(name: str, needs_reason: bool, help_text: str) -> None:
    @rollout.command(name, help=help_text)
    @click.argument("rollout_id", type=int)
    @click.option("--reason", required=needs_reason, default="", help="Why (kept in the audit).")
    @click.option("--json", "as_json", is_flag=True)
    @client_options
    @handle_errors
    def act(
        rollout_id: int, reason: str, as_json: bool, url: Optional[str], token: Optional[str]
    ) -> None:
        item = make_client(url, token).call(
            "POST", f"/api/v1/rollouts/{rollout_id}/{name}", json={"reason": reason}
        )
        if as_json:
            print_json(item)
            return
        click.echo(_headline(item))


_action("pause", False, "Start no new target; running jobs finish.")
_action("resume", False, "Start targets again (failures so far are acknowledged).")
_action("cancel", True, "Start no new target, for good; running jobs finish or recover.")
_action("retry", False, "Plan the failed and refused targets again.")


def _watch(client: Any, rollout_id: int, interval: float = 2.0) -> None:
    """Print each target's state as it changes until the rollout finishes or pauses; exit
    1 unless it succeeded."""
    shown: dict[str, tuple[str, Optional[str]]] = {}
    while True:
        item = client.call("GET", f"/api/v1/rollouts/{rollout_id}")
        for target in item["targets"]:
            now = (target["state"], target["reason"])
            if shown.get(target["name"]) != now:
                shown[target["name"]] = now
                click.echo(_target_line(target))
        if item["state"] in FINISHED or item["state"] == "paused":
            break
        time.sleep(interval)
    click.echo(_headline(item))
    if item["state"] != "succeeded":
        fail(f"rollout {rollout_id} is {item['state']}: {item['reason'] or ''}".rstrip(": "))


STATES = ("pending", "running", "succeeded", "failed", "refused", "cancelled")


def _counts(counts: dict[str, int]) -> str:
    """``2 running, 1 failed``: in the order targets move through, not the JSON's."""
    return ", ".join(f"{counts[s]} {s}" for s in STATES if counts.get(s)) or "no targets"


def _headline(item: dict[str, Any]) -> str:
    line = (
        f"{item['id']:>5} NSO {item['release']:<10} {item['state']:<10} wave {item['open_wave']}"
        f"  {_counts(item['counts'])}"
    )
    return line + (f"\n      {item['reason']}" if item.get("reason") else "")


def _print(item: dict[str, Any]) -> None:
    click.echo(_headline(item))
    for wave in item["wave_progress"]:
        label = "canary" if wave["canary"] else f"wave {wave['wave']}"
        states = {k: wave[k] for k in STATES}
        click.echo(
            f"  {label:<8} {wave['size']:>5} targets {'open' if wave['open'] else 'closed':<6} {_counts(states)}"
        )
    for target in item["targets"]:
        click.echo(_target_line(target))


def _target_line(target: dict[str, Any]) -> str:
    job = f"job {target['job_id']}" if target.get("job_id") else ""
    return (
        f"  {target['name']:<20} {target['kind']:<5} wave {target['wave']:<3} "
        f"{target['state']:<10} {job:<9} {target.get('reason') or ''}"
    ).rstrip()


# -- maintenance windows --------------------------------------------------------------------


@click.group()
def window() -> None:
    """Maintenance windows: when rollouts may start work on a node or HA group."""


@window.command("add")
@click.option("--node", help="The node the window is for.")
@click.option("--group", help="The HA group the window is for.")
@click.option("--days", required=True, help="mon-fri, sat,sun or daily.")
@click.option("--start", required=True, help="HH:MM local time, 24-hour.")
@click.option("--minutes", type=int, help="How long it stays open.")
@click.option("--hours", type=float, help="How long it stays open, in hours.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def window_add(
    node: Optional[str],
    group: Optional[str],
    days: str,
    start: str,
    minutes: Optional[int],
    hours: Optional[float],
    timezone: str,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Add a weekly window to a node or a group; prints its id."""
    if (minutes is None) == (hours is None):
        raise click.BadParameter("give its length: --minutes or --hours", param_hint="--minutes")
    body = {
        "days": days,
        "start": start,
        "minutes": minutes if minutes is not None else round((hours or 0) * 60),
        "timezone": timezone,
        **({"node": node} if node else {}),
        **({"group": group} if group else {}),
    }
    created = make_client(url, token).call("POST", "/api/v1/windows", json=body)
    if as_json:
        print_json(created)
        return
    click.echo(created["id"])


@window.command("ls")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def window_ls(as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """Every maintenance window."""
    found = make_client(url, token).call("GET", "/api/v1/windows")
    if as_json:
        print_json(found)
        return
    for w in found:
        subject = f"node {w['node']}" if w["node"] else f"group {w['group']}"
        click.echo(
            f"{w['id']:>4} {subject:<24} {w['days']:<28} {w['start']} for {w['minutes']} min "
            f"({w['timezone']})"
        )


@window.command("rm")
@click.argument("window_id", type=int)
@client_options
@handle_errors
def window_rm(window_id: int, url: Optional[str], token: Optional[str]) -> None:
    """Remove a maintenance window."""
    make_client(url, token).call("DELETE", f"/api/v1/windows/{window_id}")
