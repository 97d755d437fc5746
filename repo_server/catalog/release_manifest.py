"""The signed form of a release: one canonical byte string, Ed25519 keys and signatures.

A release manager signs these bytes with a key kept off the server (`nso-repo release sign`);
the server stores the signature and hands the same bytes and the signature to agents, which
check them against their own copy of the public key (agent/release_signature.py). The
server can never make a signature, only check one, so a compromised server or database
cannot make an agent that holds the key install anything else (docs/signed-releases.md).

The `nso-repo release` client commands use this module too, so it imports neither
SQLAlchemy nor Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import TYPE_CHECKING, Any, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

if TYPE_CHECKING:
    from repo_server.catalog.release_models import Release

# Part of the signed bytes, so that a signature over a manifest can never be taken for a
# signature over anything else, and a later format cannot be confused with this one.
MANIFEST_FORMAT = "nso-fleet-release/1"
SIGNATURE_BYTES = 64


def file_entry(filename: str, sha256: str, size: int) -> dict[str, Any]:
    return {"filename": filename, "sha256": sha256, "size": int(size)}


def manifest_of(release: Release) -> dict[str, Any]:
    """What a release pins, as the dict that is signed."""
    installer = release.installer
    return {
        "format": MANIFEST_FORMAT,
        "nso_version": release.nso_version,
        "installer": file_entry(installer.filename, installer.sha256, installer.size),
        "packages": sorted(
            (file_entry(a.filename, a.sha256, a.size) for a in release.packages),
            key=lambda entry: str(entry["filename"]),
        ),
        "requirements": dict(release.requirements or {}),
    }


# An emergency patch bundle's signed form (`nso-repo patch sign`): the bundle file, the
# release it is built for, its patch id and modules, as agent/release_signature.py checks.
PATCH_FORMAT = "nso-fleet-patch/1"


def patch_manifest(
    filename: str, sha256: str, size: int, nso_version: str, patch_id: str, modules: list[str]
) -> dict[str, Any]:
    return {
        "format": PATCH_FORMAT,
        "bundle": file_entry(filename, sha256, size),
        "nso_version": nso_version,
        "patch_id": patch_id,
        "modules": sorted(modules),
    }


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The one byte form that is signed: JSON, keys sorted, no spaces, ASCII only."""
    return json.dumps(
        manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def manifest_text(release: Release) -> str:
    return canonical_bytes(manifest_of(release)).decode("ascii")


def signed_params(release: Release) -> dict[str, Any]:
    """What a step carries so that an agent holding the release manager's public key can
    check it installs exactly the signed release (agent/release_signature.py)."""
    return {
        "release_manifest": manifest_text(release),
        "release_signatures": [
            {"key_id": s.key_id, "signature": s.signature} for s in release.signatures
        ],
    }


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, in hex: names a key without showing it."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: Union[str, bytes], source: str = "the public key") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (``-----BEGIN PUBLIC KEY-----``); ValueError says why not."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{source} is not a PEM public key; use the .pub file 'nso-repo release keygen' wrote"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(
            f"{source} is a {type(key).__name__.lstrip('_')}, not an Ed25519 public key; "
            "make one with 'nso-repo release keygen'"
        )
    return key


def trusted_keys(paths: tuple[str, ...]) -> dict[str, Ed25519PublicKey]:
    """The keys of NSO_REPO_RELEASE_PUBLIC_KEYS by key id; ConfigError names a bad file."""
    from repo_server.config import ConfigError

    keys = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                key = load_public_key(fh.read(), path)
        except OSError as exc:
            raise ConfigError(
                f"NSO_REPO_RELEASE_PUBLIC_KEYS: cannot read {path} ({exc.strerror}); "
                "give the .pub files of the release managers' keys"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"NSO_REPO_RELEASE_PUBLIC_KEYS: {exc}") from None
        keys[key_id(key)] = key
    return keys


def decode_signature(text: str) -> bytes:
    """The raw 64 bytes of a base64 signature; ValueError says what is wrong."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("the signature is not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(
            f"the signature is {len(raw)} bytes; an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    return raw


def signature_valid(public_key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    try:
        public_key.verify(decode_signature(signature), data)
    except (ValueError, InvalidSignature):
        return False
    return True


def stored_valid(public_key_pem: str, data: bytes, signature: str) -> bool:
    """Whether a signature the server keeps, with the PEM kept beside it, still verifies
    over ``data`` (today's manifest); False too for a key that no longer loads."""
    try:
        return signature_valid(load_public_key(public_key_pem), data, signature)
    except ValueError:
        return False


def sign(private_key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(private_key.sign(data)).decode("ascii")
