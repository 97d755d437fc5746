"""Client commands for releases, nodes, plans, upgrades and jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from repo_server.cli.common import client_options, fail, handle_errors, make_client, print_json
from repo_server.cli.patch_cmds import dropped_line
from repo_server.cli.release_signing_cmds import release_keygen, release_sign, release_verify
from repo_server.upgrades.results import printable

TERMINAL = ("succeeded", "failed", "cancelled")


@click.group()
def release() -> None:
    """Release manifests: an NSO version, its installer and its exact package set."""


@release.command("create")
@click.argument("nso_version")
@click.option("--installer", required=True, help="Installer file name in the catalog.")
@click.option("--package", "packages", multiple=True, help="Package file name (repeat).")
@click.option("--java", help="Minimum Java version on the host.")
@click.option("--glibc", help="Minimum glibc version on the host.")
@click.option("--min-source", help="Oldest NSO version that may upgrade straight to this one.")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False), help="CHANGES file.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def release_create(
    nso_version: str,
    installer: str,
    packages: tuple[str, ...],
    java: Optional[str],
    glibc: Optional[str],
    min_source: Optional[str],
    notes: Optional[str],
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Define release NSO_VERSION from files already uploaded."""
    body = {
        "nso_version": nso_version,
        "installer": Path(installer).name,
        "packages": [Path(p).name for p in packages],
        "requirements": {"java": java, "glibc": glibc, "min_source_version": min_source},
        "notes": Path(notes).read_text() if notes else "",
    }
    created = make_client(url, token).call("POST", "/api/v1/releases", json=body)
    if as_json:
        print_json(created)
        return
    click.echo(f"release {created['nso_version']}: {created['installer']}")
    for filename in created["packages"]:
        click.echo(f"  {filename}")


@release.command("ls")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def release_ls(as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """List releases."""
    releases = make_client(url, token).call("GET", "/api/v1/releases")
    if as_json:
        print_json(releases)
        return
    for item in releases:
        valid = sum(1 for s in item["signatures"] if s["valid"])
        click.echo(
            f"{item['nso_version']:<12} {len(item['packages'])} packages  {item['installer']}"
            + (
                f"  signed by {valid} key(s)"
                if valid
                else "  SIGNATURES DO NOT VERIFY"
                if item["signatures"]
                else "  unsigned"
            )
        )


for _command in (release_keygen, release_sign, release_verify):
    release.add_command(_command)


@click.group()
def node() -> None:
    """Nodes: register, inspect, plan and upgrade."""


@node.command("add")
@click.argument("name")
@client_options
@handle_errors
def node_add(name: str, url: Optional[str], token: Optional[str]) -> None:
    """Register NAME and print only its one-time enrollment token (for `nso-agent enroll`)."""
    answer = make_client(url, token).call("POST", "/api/v1/nodes", json={"name": name})
    click.echo(answer["enrollment_token"])


@node.command("enroll-token")
@click.argument("name")
@client_options
@handle_errors
def node_enroll_token(name: str, url: Optional[str], token: Optional[str]) -> None:
    """Print only a new one-time enrollment token for NAME (a rebuilt host, a lost token);
    every older enrollment token of NAME stops working."""
    answer = make_client(url, token).call("POST", f"/api/v1/nodes/{name}/enrollment-token")
    click.echo(answer["enrollment_token"])


@node.command("ls")
@click.option("--version", help="Only nodes running this NSO release ('none': no NSO running).")
@click.option("--match", "q", help="Only nodes whose name or hostname contains this.")
@click.option("--label", help="Only nodes that carry this label.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def node_ls(
    version: Optional[str],
    q: Optional[str],
    label: Optional[str],
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """List nodes with what they run (every page of them)."""
    client = make_client(url, token)
    params: dict[str, Any] = {"per_page": 500}
    params.update({k: v for k, v in (("version", version), ("q", q), ("label", label)) if v})
    by_name: dict[str, dict[str, Any]] = {}  # a node registered meanwhile shifts the pages
    number = 1
    while True:
        page = client.call("GET", "/api/v1/nodes", params={**params, "page": number})
        if not isinstance(page, dict):
            raise click.ClickException(
                "the server answered the node listing in its older form (a list): upgrade "
                "the server, or use the nso-repo that came with it"
            )
        by_name.update((item["name"], item) for item in page["items"])
        if not page["items"] or number * page["per_page"] >= page["total"]:
            break
        number += 1
    nodes = sorted(by_name.values(), key=lambda item: item["name"])
    if as_json:
        print_json(nodes)
        return
    for item in nodes:
        inv = item["inventory"]
        click.echo(
            f"{item['name']:<20} {inv.get('running_version') or '-':<10} "
            f"{inv.get('status') or 'unknown':<8} last seen {item['last_seen_at'] or 'never'}"
        )
        patches = _patches_line(inv.get("patches"))
        if patches:
            click.echo(f"{'':<20} {patches}")
        assigned = item.get("assigned_version")
        if assigned and assigned != inv.get("running_version"):
            why = (item.get("rollout") or {}).get("why") or "no rollout drives it"
            click.echo(f"{'':<20} assigned {assigned}: {why}")


def _patches_line(patches: Any) -> str:
    """The node's patch modules by what NSO says of them: loaded (listed by `show
    ncs-state patches`), files NSO does not list, files whose loading is unknown."""
    rows = [p for p in patches if isinstance(p, dict)] if isinstance(patches, list) else []

    def named(loaded: Optional[bool]) -> str:
        return ", ".join(
            str(p.get("module")) + (f" ({p['patch_id']})" if p.get("patch_id") else "")
            for p in rows
            if p.get("loaded") is loaded
        )

    said = [
        f"{label}: {names}"
        for label, names in (
            ("patches loaded", named(True)),
            ("patch files not loaded", named(False)),
            ("patch files, loading unknown", named(None)),
        )
        if names
    ]
    return "; ".join(said)


@node.command("label")
@click.argument("name")
@click.option("--add", "added", multiple=True, help="A label to add (repeat).")
@click.option("--remove", "removed", multiple=True, help="A label to take off (repeat).")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def node_label(
    name: str,
    added: tuple[str, ...],
    removed: tuple[str, ...],
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Add or remove labels of node NAME (rollouts select by label); prints its labels."""
    node = make_client(url, token).call(
        "PATCH", f"/api/v1/nodes/{name}/labels", json={"add": list(added), "remove": list(removed)}
    )
    if as_json:
        print_json(node)
        return
    click.echo(" ".join(node.get("labels") or []) or "(no labels)")


@node.command("plan")
@click.argument("name")
@click.option("--to", "target", required=True, help="Target NSO release.")
@click.option("--allow-extra-packages", is_flag=True)
@click.option("--strip-ncs-conf", is_flag=True, help="Remove ncs.conf elements the target dropped.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def node_plan(
    name: str,
    target: str,
    allow_extra_packages: bool,
    strip_ncs_conf: bool,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Show what upgrading NAME to --to would do: the verdict with reasons and the steps."""
    plan = make_client(url, token).call(
        "GET",
        f"/api/v1/nodes/{name}/plan",
        params={
            "to": target,
            "allow_extra_packages": str(allow_extra_packages).lower(),
            "strip_removed_ncs_conf": str(strip_ncs_conf).lower(),
        },
    )
    if as_json:
        print_json(plan)
        return
    verdict = "may proceed" if plan["ok"] else "REFUSED"
    click.echo(
        f"{plan['node']}: {plan['source_version']} -> {plan['target_version']} "
        f"({plan['kind'] or 'unknown'} upgrade): {verdict}"
    )
    _print_plan(plan)


def _print_plan(plan: dict[str, Any]) -> None:
    """A plan's reasons and steps, after its headline; exits 1 when it would be refused."""
    for reason in plan["reasons"]:
        click.echo(f"  - {reason['message']}\n    what to do: {reason['remedy']}")
    dropped = dropped_line(plan.get("drops_patches") or [])
    if dropped:
        click.echo(f"  ! {dropped}")
    click.echo("steps:")
    for step in plan["steps"]:
        click.echo(f"  {step['seq']:>2}. {step['name']:<16} {step['title']}")
    if not plan["ok"]:
        raise SystemExit(1)


@node.command("upgrade")
@click.argument("name")
@click.option("--to", "target", required=True, help="Target NSO release.")
@click.option("--allow-extra-packages", is_flag=True)
@click.option("--strip-ncs-conf", is_flag=True)
@click.option("--watch", is_flag=True, help="Follow the job until it ends.")
@client_options
@handle_errors
def node_upgrade(
    name: str,
    target: str,
    allow_extra_packages: bool,
    strip_ncs_conf: bool,
    watch: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Start upgrading NAME; prints the job id (follow it with `nso-repo job watch ID`)."""
    client = make_client(url, token)
    job = client.call(
        "POST",
        f"/api/v1/nodes/{name}/upgrade",
        json={
            "to": target,
            "allow_extra_packages": allow_extra_packages,
            "strip_removed_ncs_conf": strip_ncs_conf,
        },
    )
    click.echo(job["id"])
    if watch:
        watch_job(client, job["id"])


# The packages a package upgrade (of a node or of an HA group) installs and removes.
package_files = click.option("--package", "packages", multiple=True, help="Package file (repeat).")
package_removals = click.option(
    "--remove",
    "removals",
    multiple=True,
    help="Name of a loaded package to deinstall (repeat): the old NED after a migration.",
)


def package_change(packages: tuple[str, ...], removals: tuple[str, ...]) -> dict[str, Any]:
    """The request's ``packages`` (file names) and ``remove``; at least one is named."""
    if not packages and not removals:
        raise click.UsageError("name packages to install (--package) or remove (--remove)")
    return {"packages": [Path(p).name for p in packages], "remove": list(removals)}


@node.command("package-plan")
@click.argument("name")
@package_files
@package_removals
@click.option("--allow-data-loss", is_flag=True, help="Reload with force if NSO would delete data.")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def node_package_plan(
    name: str,
    packages: tuple[str, ...],
    removals: tuple[str, ...],
    allow_data_loss: bool,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Show what replacing, adding or removing packages on NAME would do, without starting
    it: the verdict with reasons and the steps; exits 1 when it would be refused."""
    plan = make_client(url, token).call(
        "GET",
        f"/api/v1/nodes/{name}/package-plan",
        params={
            **package_change(packages, removals),
            "allow_data_loss": str(allow_data_loss).lower(),
        },
    )
    if as_json:
        print_json(plan)
        return
    change = [*plan["packages"], *(f"remove {n}" for n in plan.get("remove") or [])]
    verdict = "may proceed" if plan["ok"] else "REFUSED"
    click.echo(f"{plan['node']}: {', '.join(change)}: {verdict}")
    _print_plan(plan)


@node.command("upgrade-packages")
@click.argument("name")
@package_files
@package_removals
@click.option("--allow-data-loss", is_flag=True, help="Reload with force if NSO would delete data.")
@click.option("--watch", is_flag=True, help="Follow the job until it ends.")
@client_options
@handle_errors
def node_upgrade_packages(
    name: str,
    packages: tuple[str, ...],
    removals: tuple[str, ...],
    allow_data_loss: bool,
    watch: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Replace, add or remove packages on NAME (built for the release it runs); prints the
    job id."""
    change = package_change(packages, removals)
    client = make_client(url, token)
    created = client.call(
        "POST",
        f"/api/v1/nodes/{name}/package-upgrade",
        json={**change, "allow_data_loss": allow_data_loss},
    )
    click.echo(created["id"])
    if watch:
        watch_job(client, created["id"])


# The group's command is `group package-upgrade`: the same words work for a node, unlisted.
node.add_command(
    click.Command(
        "package-upgrade",
        params=node_upgrade_packages.params,
        callback=node_upgrade_packages.callback,
        help=node_upgrade_packages.help,
        hidden=True,
    )
)


@click.group()
def job() -> None:
    """Jobs: list, show, watch, roll back, cancel."""


@job.command("ls")
@click.option("--node", "node_name")
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def job_ls(
    node_name: Optional[str], as_json: bool, url: Optional[str], token: Optional[str]
) -> None:
    """Recent jobs, newest first."""
    jobs = make_client(url, token).call("GET", "/api/v1/jobs", params={"node": node_name})
    if as_json:
        print_json(jobs)
        return
    for item in jobs:
        click.echo(
            f"{item['id']:>5} {item['node']:<16} {item['kind']:<8} {item['source_version']} -> "
            f"{item['target_version']}  {item['state']}{' (' + item['outcome'] + ')' if item['outcome'] else ''}"
        )


@job.command("show")
@click.argument("job_id", type=int)
@client_options
@handle_errors
def job_show(job_id: int, url: Optional[str], token: Optional[str]) -> None:
    """One job as JSON, with its steps and log tails."""
    print_json(make_client(url, token).call("GET", f"/api/v1/jobs/{job_id}"))


@job.command("watch")
@click.argument("job_id", type=int)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@client_options
@handle_errors
def jobwatch_job(job_id: int, interval: float, url: Optional[str], token: Optional[str]) -> None:
    """Follow a job: live per-step progress, log tail, final verdict. Exit 1 if it failed."""
    watch_job(make_client(url, token), job_id, interval)


@job.command("rollback")
@click.argument("job_id", type=int)
@click.option(
    "--discard-writes",
    is_flag=True,
    help="Confirm that writes NSO took since the upgrade stopped it leave NSO.",
)
@click.option("--watch", is_flag=True)
@client_options
@handle_errors
def job_rollback(
    job_id: int, discard_writes: bool, watch: bool, url: Optional[str], token: Optional[str]
) -> None:
    """Put the node back on the release and data an upgrade started from; prints the
    rollback job's id."""
    client = make_client(url, token)
    created = client.call(
        "POST", f"/api/v1/jobs/{job_id}/rollback", json={"discard_writes": discard_writes}
    )
    click.echo(created["id"])
    if watch:
        watch_job(client, created["id"])


@job.command("cancel")
@click.argument("job_id", type=int)
@click.option("--reason", required=True, help="Why (kept in the job and the audit).")
@client_options
@handle_errors
def job_cancel(job_id: int, reason: str, url: Optional[str], token: Optional[str]) -> None:
    """End an active job whose agent will not come back (its host died). Nothing on any
    host is changed or undone: the job says what it had changed, for you to check."""
    ended = make_client(url, token).call(
        "POST", f"/api/v1/jobs/{job_id}/cancel", json={"reason": reason}
    )
    click.echo(f"job {job_id} {ended['state']} ({ended['outcome']}): {printable(ended['error'])}")


def _render(data: dict[str, Any]) -> Table:
    title = (
        f"job {data['id']} on {data['node']}: {data['kind']} {data['source_version']} -> "
        f"{data['target_version']} — {data['state']}"
        + (f" ({data['outcome']})" if data.get("outcome") else "")
    )
    # Messages and log tails are an agent's words: shown as text, never read as rich markup
    # (a "[/x]" in a log line would stop the watch, a "[bold red]" would restyle it).
    windows = data.get("windows")
    if windows:
        title += "\n" + windows_line(windows)
    table = Table(title=Text(title), box=None, pad_edge=False)
    several = len(data.get("nodes") or []) > 1
    for column in ("#", *(("NODE",) if several else ()), "STEP", "STATE", "%", "MESSAGE"):
        table.add_column(column)
    for step in data["steps"]:
        table.add_row(
            str(step["seq"]),
            *((Text(step.get("node") or ""),) if several else ()),
            Text(step["name"]),
            Text(step["state"]),
            str(step["progress"]),
            Text(step["message"] or ""),
        )
    running = [
        # Log tails are absent for roles without job:details (viewers).
        s
        for s in data["steps"]
        if s["state"] in ("running", "dispatched") and s.get("log_tail")
    ]
    if running:
        tail = "\n".join(running[-1]["log_tail"].splitlines()[-5:])
        table.caption = Text(tail)
    return table


def watch_job(client: Any, job_id: int, interval: float = 1.0) -> None:
    console = Console()
    data = client.call("GET", f"/api/v1/jobs/{job_id}")
    if console.is_terminal:
        with Live(_render(data), console=console, refresh_per_second=4) as live:
            while data["state"] not in TERMINAL:
                time.sleep(interval)
                data = client.call("GET", f"/api/v1/jobs/{job_id}")
                live.update(_render(data))
    else:
        shown: dict[int, str] = {}
        several = len(data.get("nodes") or []) > 1
        while True:
            for step in data["steps"]:
                if shown.get(step["seq"]) != step["state"]:
                    shown[step["seq"]] = step["state"]
                    where = f" {step.get('node') or '':<16}" if several else ""
                    click.echo(f"{step['seq']:>2}{where} {step['name']:<16} {step['state']}")
            if data["state"] in TERMINAL:
                break
            time.sleep(interval)
            data = client.call("GET", f"/api/v1/jobs/{job_id}")
    verdict = data["state"] + (f" ({data['outcome']})" if data.get("outcome") else "")
    # The error quotes what agents and NSO said: nothing in it may drive the terminal.
    said = f": {printable(data['error'])}" if data.get("error") else ""
    click.echo(f"job {job_id} {verdict}{said}")
    if data.get("windows"):
        click.echo(windows_line(data["windows"]))
    if data["state"] != "succeeded":
        fail(f"job {job_id} did not succeed")


def windows_line(windows: dict[str, Any]) -> str:
    """An HA job's write windows, as `job watch` and `group upgrade` print them."""

    def shown(key: str) -> str:
        value = windows.get(key)
        if value is None:
            return "not yet"
        return f"{value:.1f} s" + (
            " so far" if windows.get(f"{key.removesuffix('_s')}_open") else ""
        )

    return (
        f"write policy {windows.get('write_policy')}: no member took writes for "
        f"{shown('write_unavailable_s')}; writes with no secondary behind them: "
        f"{shown('unprotected_s')}"
    )
