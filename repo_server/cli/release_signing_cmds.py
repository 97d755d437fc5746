"""`nso-repo release keygen | sign | verify`: release signatures made off the server.

The private key never reaches the server: `sign` fetches the canonical manifest, shows what
it pins, signs it on this machine and uploads only the signature and the public key
(docs/signed-releases.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn, Optional
from urllib.parse import quote

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from repo_server.catalog import release_manifest as signing
from repo_server.cli.common import client_options, fail, handle_errors, make_client, print_json
from repo_server.client import RepoClient, sha256_file

# Your own copies (from Cisco, from the package build): what makes a signature mean more
# than "the server showed me these files".
check_files_option = click.option(
    "--check-files",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with your own copies of the files: each must match the manifest.",
)


# The release manager's private key, for `release sign` and `patch sign`.
key_option = click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The release manager's private key (PEM).",
)


def refuse(message: str) -> NoReturn:
    fail(message)
    raise SystemExit(1)  # fail() exits; this says so to type checkers


def fetch_manifest(
    client: RepoClient, path: str, what: str, form: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's answer at ``path``/manifest and the manifest it holds (of ``what``),
    refused unless it is canonical and of format ``form``."""
    answer = client.call("GET", f"{path}/manifest")
    text = answer["manifest"]
    manifest = json.loads(text)
    if signing.canonical_bytes(manifest).decode("ascii") != text or (
        manifest.get("format") != form
    ):
        refuse(
            f"the server's manifest of {what} is not in the canonical {form} form: it was "
            "not signed; check the server's version"
        )
    return answer, manifest


def upload_signature(client: RepoClient, path: str, key: Ed25519PrivateKey, text: str) -> None:
    """Sign ``text`` (the manifest's bytes) here; only the signature and the public key go
    to ``path``/signature."""
    client.call(
        "PUT",
        f"{path}/signature",
        json={
            "signature": signing.sign(key, text.encode("ascii")),
            "public_key": signing.public_pem(key.public_key()),
        },
    )


def _fetch(client: RepoClient, nso_version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return fetch_manifest(
        client, _release_path(nso_version), f"release {nso_version}", signing.MANIFEST_FORMAT
    )


def _release_path(nso_version: str) -> str:
    return f"/api/v1/releases/{quote(nso_version, safe='')}"


def _show(manifest: dict[str, Any]) -> None:
    click.echo(f"release {manifest['nso_version']} ({manifest['format']})")
    for entry in [manifest["installer"], *manifest["packages"]]:
        click.echo(f"  {entry['filename']}  sha256 {entry['sha256']}  {entry['size']} bytes")
    if manifest["requirements"]:
        click.echo(f"  requirements {json.dumps(manifest['requirements'], sort_keys=True)}")


def _check_files(manifest: dict[str, Any], folder: Path) -> None:
    """Every file the manifest pins is in ``folder`` with the same size and sha256."""
    problems = []
    for entry in [manifest["installer"], *manifest["packages"]]:
        path = folder / entry["filename"]
        if not path.is_file():
            problems.append(f"{entry['filename']} is not in {folder}")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{path} is not the file the manifest pins (sha256, size)")
    if problems:
        refuse("; ".join(problems) + ": do not sign or trust this release until they agree")
    click.echo(f"every file matches the copy in {folder}")


def private_key(path: Path) -> Ed25519PrivateKey:
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: ask for its passphrase
        passphrase = click.prompt(f"passphrase of {path}", hide_input=True)
        try:
            key = serialization.load_pem_private_key(data, password=passphrase.encode())
        except ValueError:
            refuse(f"cannot decrypt {path}: wrong passphrase; try again")
    except ValueError:
        refuse(
            f"{path} is not a PEM private key: use the .pem file 'nso-repo release keygen' wrote"
        )
    if not isinstance(key, Ed25519PrivateKey):
        refuse(f"{path} is not an Ed25519 private key: make one with 'nso-repo release keygen'")
    return key


@click.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the key pair (keep the private key off the server).",
)
@click.option("--name", default="release-signing", show_default=True, help="File name stem.")
@handle_errors
def release_keygen(out_dir: Path, name: str) -> None:
    """Make a release manager's Ed25519 key pair: NAME.pem (private, 0600) and NAME.pub."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / f"{name}.pem", out_dir / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            refuse(f"{path} exists: keep the key you have, or choose another --out or --name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL and the mode at creation: the private key is never readable by others.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_text(signing.public_pem(key.public_key()))
    click.echo(f"private key {private} (keep it off the server)")
    click.echo(f"public key  {public} (for agents' [trust] release_public_key)")
    click.echo(f"key id      {signing.key_id(key.public_key())}")


@click.command("sign")
@click.argument("nso_version")
@key_option
@check_files_option
@click.option("--yes", is_flag=True, help="Sign without asking (after showing the manifest).")
@client_options
@handle_errors
def release_sign(
    nso_version: str,
    key_file: Path,
    check_files: Optional[Path],
    yes: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Sign release NSO_VERSION's manifest here and upload only the signature."""
    key = private_key(key_file)
    client = make_client(url, token)
    answer, manifest = _fetch(client, nso_version)
    _show(manifest)
    if check_files is not None:
        _check_files(manifest, check_files)
    if not yes and not click.confirm("sign exactly this release?"):
        refuse("not signed")
    upload_signature(client, _release_path(answer["nso_version"]), key, answer["manifest"])
    click.echo(
        f"release {answer['nso_version']} signed with key {signing.key_id(key.public_key())}"
    )


@click.command("verify")
@click.argument("nso_version")
@click.option(
    "--public-key",
    "public_key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The release manager's public key (PEM), from your own copy.",
)
@check_files_option
@click.option("--json", "as_json", is_flag=True)
@client_options
@handle_errors
def release_verify(
    nso_version: str,
    public_key_file: Path,
    check_files: Optional[Path],
    as_json: bool,
    url: Optional[str],
    token: Optional[str],
) -> None:
    """Check that release NSO_VERSION is signed by the key in --public-key (exit 1 if not)."""
    try:
        key = signing.load_public_key(public_key_file.read_bytes(), str(public_key_file))
    except ValueError as exc:
        refuse(str(exc))
    kid = signing.key_id(key)
    answer, manifest = _fetch(make_client(url, token), nso_version)
    found = [s for s in answer["signatures"] if s["key_id"] == kid]
    valid = bool(found) and signing.signature_valid(
        key, answer["manifest"].encode("ascii"), found[0]["signature"]
    )
    if as_json:
        print_json({"nso_version": answer["nso_version"], "key_id": kid, "valid": valid})
    else:
        _show(manifest)
    if not found:
        refuse(
            f"release {answer['nso_version']} has no signature by key {kid[:16]}: "
            f"sign it with 'nso-repo release sign {answer['nso_version']} --key PRIVATE.pem'"
        )
    if not valid:
        refuse(
            f"the signature by key {kid[:16]} does not verify over release "
            f"{answer['nso_version']}'s manifest: the release changed after it was signed; "
            "find out why before any agent installs it"
        )
    if check_files is not None:
        _check_files(manifest, check_files)
    if not as_json:
        click.echo(f"signed by key {kid}: valid")
