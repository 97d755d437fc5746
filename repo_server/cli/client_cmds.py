"""Commands that talk to a running server: upload, ls, show, rm, release-name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from repo_server.cli.common import client_options, handle_errors, make_client, print_json
from repo_server.client import ApiError, sha256_file

KINDS = ("installers", "packages", "neds", "patches", "all")


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (for scripts).")
@client_options
@handle_errors
def upload(files: tuple[str, ...], as_json: bool, url: Optional[str], token: Optional[str]) -> None:
    """Upload installers, packages, NEDs and patch bundles; the name says which is which."""
    client = make_client(url, token)
    console = Console(stderr=True)
    results: list[dict[str, Any]] = []
    failed = 0
    with _progress(console, enabled=not as_json and console.is_terminal) as progress:
        for name in files:
            path = Path(name)
            size = path.stat().st_size
            task = progress.add_task(f"hash {path.name}", total=size)

            def advance(n: int, task: TaskID = task) -> None:
                progress.advance(task, n)

            digest = sha256_file(path, advance)
            progress.reset(task, description=f"send {path.name}", total=size)
            try:
                status, artifact = client.upload(path, sha256=digest, advance=advance)
            except ApiError as exc:
                failed += 1
                results.append(
                    {"file": str(path), "error": {"code": exc.code, "message": exc.message}}
                )
                if not as_json:
                    console.print(
                        f"[red]failed[/] {escape(path.name)}: {escape(exc.message)} "
                        f"{escape(f'[{exc.code}]')}"
                    )
                continue
            finally:
                progress.remove_task(task)
            outcome = "stored" if status == 201 else "unchanged"
            results.append({"file": str(path), "result": outcome, "artifact": artifact})
            if not as_json:
                click.echo(
                    f"{outcome:<9} {artifact['filename']}  {artifact['kind']}  sha256:{digest}"
                )
    if as_json:
        print_json(results)
    if failed:
        raise SystemExit(1)


@click.command()
@click.argument("kind", type=click.Choice(KINDS), default="all")
@click.option("--nso", help="NSO release: 6.2 for the branch, 6.2.1 for that release.")
@click.option("--name", help="Only this package / patch name.")
@click.option("--deleted", is_flag=True, help="Include deleted artifacts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@client_options
@handle_errors
def ls(
    kind: str,
    nso: Optional[str],
    name: Optional[str],
    deleted: bool,
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """List installers, packages (NEDs included), NEDs or patches."""
    client = make_client(url, token)
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = client.list_artifacts(
            kind=None if kind == "all" else kind,
            nso=nso,
            name=name,
            include_deleted=str(deleted).lower(),
            page=page,
            per_page=500,
        )
        items.extend(answer["items"])
        if len(items) >= answer["total"] or not answer["items"]:
            break
        page += 1
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("nothing found", err=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("KIND", "NAME", "VERSION", "NSO", "SIZE", "SHA256", "FILE"):
        table.add_column(column)
    for item in items:
        table.add_row(
            item["kind"] + (" (deleted)" if item["deleted"] else ""),
            item["name"],
            item["version"],
            item["nso_version"],
            _human(item["size"]),
            item["sha256"][:12],
            item["filename"],
        )
    console = Console()
    if not console.is_terminal:
        # Piped output is read by grep and scripts: never cut a file name to fit 80 columns.
        console = Console(width=1000)
    console.print(table)


@click.command()
@click.argument("filename")
@client_options
@handle_errors
def show(filename: str, url: Optional[str], token: Optional[str]) -> None:
    """Show one artifact as JSON."""
    print_json(make_client(url, token).get_artifact(filename))


@click.command()
@click.argument("filename")
@client_options
@handle_errors
def rm(filename: str, url: Optional[str], token: Optional[str]) -> None:
    """Delete an artifact (admin). Its name stays reserved ('nso-repo release-name' frees it);
    'nso-repo gc' frees the bytes."""
    artifact = make_client(url, token).delete_artifact(filename)
    click.echo(f"deleted {artifact['filename']}")


@click.command("release-name")
@click.argument("filename")
@client_options
@handle_errors
def release_name(filename: str, url: Optional[str], token: Optional[str]) -> None:
    """Free the reserved name of a deleted artifact (admin, audited), so that it can be
    uploaded again; the deleted artifact's record is kept under another name."""
    path = f"/api/v1/artifacts/{quote(filename, safe='')}/release-name"
    artifact = make_client(url, token).call("POST", path)
    click.echo(f"released the name {filename} (the deleted record is {artifact['filename']})")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)
