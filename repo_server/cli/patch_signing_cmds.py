"""`nso-repo patch sign`: a release manager's signature over a patch bundle, made off the
server, for agents that install only what the release manager signed (docs/patches.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import quote

import click

from repo_server.catalog import release_manifest as signing
from repo_server.cli.common import client_options, handle_errors, make_client
from repo_server.cli.release_signing_cmds import (
    fetch_manifest,
    key_option,
    private_key,
    refuse,
    upload_signature,
)
from repo_server.client import sha256_file


@click.command("sign")
@click.argument("bundle")
@key_option
@click.option(
    "--check-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your own copy of the bundle (as Cisco TAC sent it): it must match the manifest.",
)
@click.option("--yes", is_flag=True, help="Sign without asking (after showing the manifest).")
@client_options
@handle_errors
def patch_sign(
    bundle: str,
    key_file: Path,
    check_file: Optional[Path],
    yes: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Sign patch BUNDLE's manifest here and upload only the signature."""
    key = private_key(key_file)
    client = make_client(url, token)
    path = f"/api/v1/patches/{quote(bundle, safe='')}"
    answer, manifest = fetch_manifest(client, path, bundle, signing.PATCH_FORMAT)
    entry = manifest["bundle"]
    if entry.get("filename") != bundle:
        refuse(
            f"the server answered for {bundle} with the manifest of {entry.get('filename')}: "
            "not signed; find out why before signing anything it serves"
        )
    click.echo(f"patch {manifest['patch_id']} for NSO {manifest['nso_version']}")
    click.echo(f"  {entry['filename']}  sha256 {entry['sha256']}  {entry['size']} bytes")
    click.echo(f"  modules {', '.join(manifest['modules'])}")
    if check_file is not None:
        if check_file.stat().st_size != entry["size"] or sha256_file(check_file) != entry["sha256"]:
            refuse(
                f"{check_file} is not the bundle the manifest pins (sha256, size): do not sign "
                "it until they agree"
            )
        click.echo(f"the bundle matches {check_file}")
    if not yes and not click.confirm("sign exactly this patch bundle?"):
        refuse("not signed")
    upload_signature(client, path, key, answer["manifest"])
    click.echo(f"{entry['filename']} signed with key {signing.key_id(key.public_key())}")
