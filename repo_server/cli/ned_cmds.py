"""Client commands for major NED upgrades: migrate devices to a new ned-id, dry-run first,
and show what a migration reported per device."""

from __future__ import annotations

from typing import Any, Optional

import click

from repo_server.cli.common import client_options, fail, handle_errors, make_client, print_json
from repo_server.cli.fleet_cmds import watch_job
from repo_server.upgrades.results import printable


@click.group()
def ned() -> None:
    """Major NED upgrades: migrate devices to a new ned-id (dry-run, then confirm)."""


@ned.command("migrate")
@click.argument("node")
@click.option("--to", "new_ned_id", required=True, help="The ned-id to migrate to.")
@click.option("--device", "devices", multiple=True, help="A device in NSO (repeat).")
@click.option(
    "--device-group", "device_groups", multiple=True, help="A device group in NSO (repeat)."
)
@click.option("--dry-run", is_flag=True, help="Only report what NSO would change.")
@click.option(
    "--confirm",
    type=int,
    help="For the real migration: the job id of the succeeded dry-run of the same devices.",
)
@click.option("--watch", is_flag=True, help="Follow the job, then print what it reported.")
@client_options
@handle_errors
def ned_migrate(
    node: str,
    new_ned_id: str,
    devices: tuple[str, ...],
    device_groups: tuple[str, ...],
    dry_run: bool,
    confirm: Optional[int],
    watch: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Migrate devices of NODE to --to; prints the job id. Run with --dry-run first, read
    its result (`nso-repo ned show ID`), then again with --confirm ID."""
    if not devices and not device_groups:
        raise click.UsageError("name the devices to migrate: --device D or --device-group G")
    if dry_run and confirm is not None:
        raise click.UsageError("--confirm names the dry-run a real migration confirms: drop one")
    client = make_client(url, token)
    job = client.call(
        "POST",
        f"/api/v1/nodes/{node}/ned-migrations",
        json={
            "new_ned_id": new_ned_id,
            "devices": list(devices),
            "device_groups": list(device_groups),
            "dry_run": dry_run,
            "confirm": confirm,
        },
    )
    click.echo(job["id"])
    if watch:
        try:
            watch_job(client, job["id"])
        finally:
            _show(client.call("GET", f"/api/v1/jobs/{job['id']}"))


@ned.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def ned_show(job_id: int, as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """What a NED migration job reported per device: modified paths, data lost."""
    job = make_client(url, token).call("GET", f"/api/v1/jobs/{job_id}")
    if job.get("kind") != "ned_migration":
        fail(f"job {job_id} is a {job.get('kind')} job, not a NED migration")
    if as_json:
        print_json(_report(job))
        return
    _show(job)


def _report(job: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The ``ned_migrate`` step's result (absent for roles without job:details)."""
    step: dict[str, Any] = next(iter(job.get("steps") or []), {})
    found = (step.get("result") or {}).get("ned_migration")
    return found if isinstance(found, dict) else None


def _show(job: dict[str, Any]) -> None:
    options = job.get("options") or {}
    dry = bool(options.get("dry_run"))
    click.echo(
        f"job {job['id']}: {'dry-run of the ' if dry else ''}migration on {job['node']} to "
        f"{options.get('new_ned_id')}: {job['state']}"
        + (f" ({job['outcome']})" if job.get("outcome") else "")
    )
    if job.get("error"):
        click.echo(f"  {printable(job['error'])}")
    report = _report(job)
    if report is None:
        if job["state"] == "succeeded":
            click.echo("  (no per-device result: your role does not see job details)")
        return
    for entry in report.get("devices") or []:
        groups = ", ".join(entry.get("groups") or [])
        state = {"dry_run": "would migrate", "migrated": "migrated", "already": "already on it"}
        click.echo(
            printable(
                f"  {entry['device']}{f' (group {groups})' if groups else ''}: "
                f"{entry.get('old_ned_id')} -> {entry.get('new_ned_id')}  "
                f"[{state.get(entry.get('state'), entry.get('state'))}]"
            )
        )
        for key, label in (("modified_paths", "modified"), ("lost_data", "LOST")):
            for block in entry.get(key) or []:
                said = block.get("info") or (f"value {block['value']}" if "value" in block else "")
                click.echo(printable(f"    {label:<9}{block.get('path', '')}  {said}".rstrip()))
            shown, total = len(entry.get(key) or []), entry.get(f"{key}_total") or 0
            if total > shown:
                click.echo(f"    ... {total - shown} more {label.lower()} (see the job's log)")
    lost = report.get("lost_data_total") or 0
    click.echo(
        f"  {report.get('devices_total')} device(s); "
        + (f"{lost} value(s) {'would be ' if dry else ''}lost" if lost else "no data lost")
    )
    if dry and job["state"] == "succeeded":
        targets = [f"--device {d}" for d in options.get("devices") or []]
        targets += [f"--device-group {g}" for g in options.get("device_groups") or []]
        click.echo(
            f"  to migrate: nso-repo ned migrate {job['node']} --to {options.get('new_ned_id')} "
            f"{' '.join(targets)} --confirm {job['id']}"
        )
