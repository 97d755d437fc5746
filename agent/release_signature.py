"""Install only signed releases: the agent's side of docs/signed-releases.md.

With ``[trust] release_public_key`` configured, a step that brings new files onto the host
(``prestage``, ``prestage_packages``) must carry a release manifest signed by that key, and
its files and target version must be exactly those of the manifest; otherwise it fails
before anything is downloaded. The key is the operator's own copy: nothing the server sends
can change which key is trusted, so a compromised server or database cannot make the agent
install anything the release manager did not sign.

The manifest arrives as the exact bytes that were signed (``release_manifest``, ASCII JSON),
with the signatures the server holds (``release_signatures``: ``[{"key_id", "signature"}]``).
The agent verifies the signature over those bytes and only then reads them, so it needs no
canonical form of its own. Without the option the agent behaves as it always did.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import ConfigError, StepFailed

if TYPE_CHECKING:
    from agent.config import Config

MANIFEST_FORMAT = "nso-fleet-release/1"
PATCH_FORMAT = "nso-fleet-patch/1"  # a patch bundle's (repo_server/catalog/release_manifest.py)
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURES = 16
OPTION = "[trust] release_public_key"


def load_key(path: Path, shown: str, named: Optional[str] = None) -> Ed25519PublicKey:
    """The release manager's public key from ``path`` (``shown``: its name on the host, for
    messages; ``named``: the path as the option gives it, when ``shown`` says more)."""
    try:
        data = path.read_bytes()
        # One key per file: with two, the PEM reader would silently trust only the first.
        if data.count(b"-----BEGIN ") > 1:
            raise ConfigError(
                f"{OPTION} = {shown} holds more than one PEM block; it must hold exactly the "
                "one public key the release manager gave you (the .pub file of 'nso-repo "
                "release keygen'). While keys rotate, releases are signed with both keys: give "
                "each agent the one key it should trust"
            )
        key = serialization.load_pem_public_key(data)
    except OSError as exc:
        # The option names a path on the NSO host: under a [host] root other than /, it is
        # read there, which is not where a user who typed the path looks first.
        where = "" if str(path) == (named or shown) else f" at {path}, under [host] root"
        raise ConfigError(
            f"{OPTION} = {shown}: cannot read it{where} ({exc.strerror}); copy the release "
            "manager's public key (.pub) there, or remove the option"
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{OPTION} = {shown} is not a PEM public key; use the .pub file that "
            "'nso-repo release keygen' wrote"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{OPTION} = {shown} is not an Ed25519 key; use the release manager's")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _offered(signatures: Any) -> list[dict[str, Any]]:
    """The well-formed entries of ``release_signatures`` (a few keys sign a release: one per
    release manager, two while a key is rotated); anything else the server sent is ignored."""
    entries = signatures[:MAX_SIGNATURES] if isinstance(signatures, list) else []
    return [e for e in entries if isinstance(e, dict)]


def _signed_by(key: Ed25519PublicKey, data: bytes, signatures: Any) -> bool:
    """Whether any of the offered signatures verifies over ``data`` with ``key``."""
    for entry in _offered(signatures):
        text = entry.get("signature")
        try:
            key.verify(base64.b64decode(str(text), validate=True), data)
            return True
        except (binascii.Error, ValueError, InvalidSignature):
            continue
    return False


def signed_manifest(
    key: Ed25519PublicKey, shown: str, params: dict[str, Any], what: str
) -> dict[str, Any]:
    """The release manifest the step carries, once its signature by ``key`` is verified."""
    target = params.get("target_version")
    how = (
        f"sign release {target} with the key whose public half is {shown} ('nso-repo release "
        f"sign {target} --key PRIVATE.pem'), then start the upgrade again"
        if target
        else "put these builds in a release signed with the key whose public half is "
        f"{shown} ('nso-repo release create', 'nso-repo release sign'), then start the "
        "package upgrade again"
    )
    manifest = _verified(
        key, shown, params.get("release_manifest"), params.get("release_signatures"), what, how
    )
    if not (
        manifest.get("format") == MANIFEST_FORMAT
        and isinstance(manifest.get("installer"), dict)
        and isinstance(manifest.get("packages"), list)
    ):
        raise StepFailed(
            f"refusing {what}: the signed manifest is not a {MANIFEST_FORMAT} manifest; "
            "upgrade nso-agent to a version that reads it"
        )
    return manifest


def _verified(
    key: Ed25519PublicKey,
    shown: str,
    text: Any,
    signatures: Any,
    what: str,
    how: str,
    noun: str = "the release",
) -> dict[str, Any]:
    """A manifest's JSON (of ``noun``), read only once a signature by ``key`` verifies over
    its bytes."""
    kid = key_id(key)[:16]
    if not isinstance(text, str) or not text:
        raise StepFailed(
            f"refusing {what}: it carries no signed manifest, and this agent installs only "
            f"what key {kid} signed ({OPTION} = {shown}): {how}"
        )
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        data = b""
    if not data or len(data) > MAX_MANIFEST_BYTES:
        raise StepFailed(f"refusing {what}: its manifest is not ASCII JSON under 1 MiB")
    if not _signed_by(key, data, signatures):
        offered = sorted(
            re.sub(r"[^0-9a-f]", "?", str(s.get("key_id"))[:16]) for s in _offered(signatures)
        )
        cause = (
            f"it is signed only by key(s) {', '.join(offered)}"
            if offered and kid not in offered
            else f"no signature verifies over the manifest the server sent ({noun} changed "
            "after it was signed, or the signature is not this key's)"
            if offered
            else f"{noun} is not signed"
        )
        raise StepFailed(
            f"refusing {what}: {cause}; this agent installs only what is signed by key {kid} "
            f"({OPTION} = {shown}): {how}"
        )
    try:
        manifest = json.loads(data)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise StepFailed(f"refusing {what}: the signed manifest is not a JSON object")
    return manifest


def check_patch(config: Config, params: dict[str, Any], what: str) -> None:
    """Fail the step unless its patch bundle is exactly one the configured key signed
    (``patch_manifest``, ``patch_signatures``: `nso-repo patch sign`). A no-op when no key
    is configured."""
    path = config.release_key_path
    if path is None:
        return
    shown = str(config.release_public_key)
    bundle = _entry(params.get("patch"))[0] or "BUNDLE"
    how = (
        f"sign the bundle with the key whose public half is {shown} ('nso-repo patch sign "
        f"{bundle} --key PRIVATE.pem'), then roll it out again"
    )
    manifest = _verified(
        load_key(path, shown),
        shown,
        params.get("patch_manifest"),
        params.get("patch_signatures"),
        what,
        how,
        "the patch bundle",
    )
    if manifest.get("format") != PATCH_FORMAT:
        raise StepFailed(
            f"refusing {what}: the signed manifest is not a {PATCH_FORMAT} manifest (a "
            "release's signature does not sign a patch); " + how
        )
    differences = _compare("bundle", params.get("patch"), manifest.get("bundle"))
    for field in ("nso_version", "patch_id"):
        if str(params.get(field)) != str(manifest.get(field)):
            differences.append(
                f"{field} {params.get(field)} in the step, {manifest.get(field)} signed"
            )
    modules = params.get("modules")
    if not isinstance(modules, list) or sorted(map(str, modules)) != manifest.get("modules"):
        differences.append(f"modules {modules} in the step, {manifest.get('modules')} signed")
    if differences:
        raise StepFailed(
            f"refusing {what}: it differs from the patch bundle the release manager signed: "
            f"{'; '.join(differences)}. Nothing was downloaded; the server's catalog or "
            "database no longer matches the signed bundle: find out why"
        )


def _entry(data: Any) -> tuple[str, str, Optional[int]]:
    """(filename, sha256, size) of a file entry, for exact comparison."""
    if not isinstance(data, dict):
        return ("", "", None)
    size = data.get("size")
    return (
        str(data.get("filename") or ""),
        str(data.get("sha256") or "").lower(),
        size if isinstance(size, int) and not isinstance(size, bool) else None,
    )


def _compare(label: str, step: Any, signed: Any) -> list[str]:
    """What differs between a file of the step and the signed manifest's file."""
    got, wanted = _entry(step), _entry(signed)
    return [
        f"{label} {wanted[0]}: {field} {g} in the step, {w} signed"
        for field, g, w in zip(("file name", "sha256", "size"), got, wanted)
        if g != w
    ]


def _differences(manifest: dict[str, Any], params: dict[str, Any]) -> list[str]:
    signed = manifest.get("nso_version")
    out = []
    if "target_version" in params and str(params["target_version"]) != signed:
        out.append(f"target version {params['target_version']} is not the signed {signed}")
    if "installer" in params:
        out += _compare("installer", params["installer"], manifest["installer"])
    signed_files = {_entry(p)[0]: p for p in manifest["packages"]}
    for package in params.get("packages") or []:
        name = _entry(package)[0]
        if name not in signed_files:
            out.append(f"package {name} is not in the signed release {signed}")
        else:
            out += _compare("package", package, signed_files[name])
    return out


def check_step(config: Config, params: dict[str, Any], what: str) -> None:
    """Fail the step unless it is exactly (a part of) a release signed by the configured key.

    ``what`` names the step in the message. A no-op when no key is configured.
    """
    path = config.release_key_path
    if path is None:
        return
    shown = str(config.release_public_key)
    manifest = signed_manifest(load_key(path, shown), shown, params, what)
    differences = _differences(manifest, params)
    if differences:
        raise StepFailed(
            f"refusing {what}: it differs from release {manifest.get('nso_version')} as the "
            f"release manager signed it: {'; '.join(differences)}. Nothing was downloaded; "
            "the server's catalog or database no longer matches the signed release: find out "
            f"why ('nso-repo release verify {manifest.get('nso_version')} --public-key PUB')"
        )
