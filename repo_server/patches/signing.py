"""Signed emergency patches: a release manager's signature over a patch bundle's manifest.

An agent that holds the release manager's key (`[trust] release_public_key`) installs only
what that key signed (docs/signed-releases.md). A patch bundle is no part of a release, so
it is signed on its own (`nso-repo patch sign BUNDLE --key PRIVATE.pem`): the canonical
bytes of `release_manifest.patch_manifest` (the bundle's file name, sha256 and size, the
release it is built for, its patch id and modules). The server checks each signature when
it is uploaded and keeps it in the bundle's catalog entry (``meta["signatures"]``); every
`apply_patch` step carries the manifest and the signatures, and the agent checks them
against its own key (agent/release_signature.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from repo_server.auth.service import Principal, audit
from repo_server.catalog import release_manifest as signing
from repo_server.catalog.models import Artifact
from repo_server.catalog.releases import checked_signature
from repo_server.db import utcnow


def manifest_text(bundle: Artifact) -> str:
    """The bytes a release manager signs for ``bundle``, as text (ASCII)."""
    modules = [str(m) for m in (bundle.meta or {}).get("modules") or []]
    manifest = signing.patch_manifest(
        bundle.filename,
        bundle.sha256,
        bundle.size,
        str(bundle.nso_version),
        str(bundle.name),
        modules,
    )
    return signing.canonical_bytes(manifest).decode("ascii")


def stored(bundle: Artifact) -> list[dict[str, Any]]:
    found = (bundle.meta or {}).get("signatures")
    return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []


def signed_params(bundle: Artifact) -> dict[str, Any]:
    """What an ``apply_patch`` step carries for an agent that installs only signed files."""
    return {
        "patch_manifest": manifest_text(bundle),
        "patch_signatures": [
            {"key_id": s.get("key_id"), "signature": s.get("signature")} for s in stored(bundle)
        ],
    }


def signature_checks(bundle: Artifact) -> list[dict[str, Any]]:
    """Each stored signature, checked again over today's manifest (``valid``)."""
    data = manifest_text(bundle).encode("ascii")
    checked = []
    for entry in stored(bundle):
        valid = signing.stored_valid(
            str(entry.get("public_key")), data, str(entry.get("signature"))
        )
        checked.append(
            {
                "key_id": entry.get("key_id"),
                "signed_at": entry.get("signed_at"),
                "signed_by": entry.get("signed_by"),
                "signature": entry.get("signature"),
                "public_key": entry.get("public_key"),
                "valid": valid,
            }
        )
    return checked


def manifest_answer(bundle: Artifact) -> dict[str, Any]:
    text = manifest_text(bundle)
    return {
        "patch": bundle.filename,
        "manifest": text,
        "manifest_sha256": hashlib.sha256(text.encode("ascii")).hexdigest(),
        "signatures": signature_checks(bundle),
    }


def sign_patch(
    session: Session,
    bundle: Artifact,
    *,
    signature: str,
    public_key: str,
    trusted: tuple[str, ...],
    who: Principal,
) -> dict[str, Any]:
    """Store a release manager's signature over ``bundle``'s manifest (one per key: signing
    again with a key replaces its signature), checked as a release's is."""
    # Its row locked (PostgreSQL): two signers at once must not drop each other's signature.
    session.execute(
        select(Artifact)
        .where(Artifact.id == bundle.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    data = manifest_text(bundle).encode("ascii")
    kid, key, digest = checked_signature(
        data,
        signature,
        public_key,
        trusted,
        f"the manifest of patch bundle {bundle.filename}",
        f"GET /api/v1/patches/{bundle.filename}/manifest; 'nso-repo patch sign "
        f"{bundle.filename} --key PRIVATE.pem' does both",
    )
    kept = [s for s in stored(bundle) if s.get("key_id") != kid]
    kept.append(
        {
            "key_id": kid,
            "public_key": signing.public_pem(key),
            "signature": signature,
            "manifest_sha256": digest,
            "signed_at": utcnow().isoformat(),
            "signed_by": who.actor,
        }
    )
    bundle.meta = {**(bundle.meta or {}), "signatures": kept}
    flag_modified(bundle, "meta")
    session.flush()
    audit(
        session,
        who.actor,
        "patch.sign",
        f"artifact:{bundle.filename}",
        key_id=kid,
        manifest_sha256=digest,
    )
    session.commit()
    return manifest_answer(bundle)
