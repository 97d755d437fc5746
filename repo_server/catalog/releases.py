"""Release manifests: which installer and which exact package builds make up an NSO release."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.catalog import release_manifest as signing
from repo_server.catalog.compatibility import PackageBuild, unmet_requirements
from repo_server.catalog.filenames import a_kind
from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release, ReleaseSignature
from repo_server.catalog.versions import NsoVersion
from repo_server.db import utcnow
from repo_server.errors import Conflict, NotFound, ValidationFailed

REQUIREMENT_KEYS = ("java", "glibc", "min_source_version", "min_free_bytes")


class ReleaseExists(Conflict):
    code = "release_exists"


class SignatureInvalid(ValidationFailed):
    code = "signature_invalid"


class SignatureUntrusted(ValidationFailed):
    code = "signature_untrusted"


def parse_version(text: str, field: str) -> NsoVersion:
    try:
        return NsoVersion.parse(text)
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", field=field) from None


def live_artifact(session: Session, filename: str) -> Artifact:
    artifact = session.scalar(select(Artifact).where(Artifact.filename == filename))
    if artifact is None or artifact.deleted:
        raise ValidationFailed(
            f"{filename} is not in the catalog: upload it first ('nso-repo upload {filename}')",
            filename=filename,
        )
    return artifact


# A free-space figure larger than any disk is a typo, not a requirement.
MAX_FREE_BYTES = 1 << 60


def _byte_count(value: Any) -> int:
    # bool is an int in Python, and "12" or 1e999 from JSON would pass int(); only a whole
    # JSON number of bytes is a byte count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FREE_BYTES:
        raise ValidationFailed(
            f"requirements.min_free_bytes={str(value)[:40]!r} is not a byte count: "
            f"give a whole number from 0 to {MAX_FREE_BYTES}",
            field="requirements.min_free_bytes",
        )
    return value


def _check_requirements(requirements: dict[str, Any]) -> dict[str, Any]:
    unknown = set(requirements) - set(REQUIREMENT_KEYS)
    if unknown:
        raise ValidationFailed(
            f"unknown requirements {sorted(unknown)}: use {', '.join(REQUIREMENT_KEYS)}",
            field="requirements",
        )
    clean: dict[str, Any] = {}
    for key, value in requirements.items():
        if value in (None, ""):
            continue
        if key == "min_free_bytes":
            clean[key] = _byte_count(value)
        elif key == "min_source_version":
            clean[key] = str(parse_version(str(value), "requirements.min_source_version"))
        else:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", str(value).strip()):
                raise ValidationFailed(
                    f"requirements.{key}={value!r} is not a version such as 17 or 2.28",
                    field=f"requirements.{key}",
                )
            clean[key] = str(value).strip()
    return clean


def create_release(
    session: Session,
    *,
    nso_version: str,
    installer: str,
    packages: list[str],
    requirements: Optional[dict[str, Any]] = None,
    notes: str = "",
    who: Principal,
) -> Release:
    """Define a release. Every problem with the manifest is reported at once."""
    version = parse_version(nso_version, "nso_version")
    if session.scalar(select(Release.id).where(Release.nso_version == str(version))):
        raise ReleaseExists(
            f"release {version} is already defined, and a release is never changed or "
            "deleted (jobs and signatures refer to it): newer package builds for it are "
            "installed by a package-only upgrade ('nso-repo node upgrade-packages', 'nso-repo "
            "group package-upgrade'), without a new release (agents that install only signed "
            "releases take only builds a signed release holds: docs/signed-releases.md)",
            nso_version=str(version),
        )
    problems: list[str] = []
    installer_artifact = live_artifact(session, installer)
    if installer_artifact.kind != "installer":
        problems.append(f"{installer} is {a_kind(installer_artifact.kind)}, not an installer")
    elif NsoVersion.parse(installer_artifact.nso_version) != version:
        problems.append(f"{installer} installs NSO {installer_artifact.nso_version}, not {version}")
    chosen: list[Artifact] = []
    names: dict[str, str] = {}
    for filename in packages:
        artifact = live_artifact(session, filename)
        if artifact.kind not in ("package", "ned"):
            problems.append(f"{filename} is {a_kind(artifact.kind)}, not a package")
            continue
        refusal = PackageBuild.of(artifact).load_refusal(version)
        if refusal is not None:
            problems.append(str(refusal))
        if artifact.name in names:
            problems.append(
                f"{filename} and {names[artifact.name]} are both {artifact.name}: keep one"
            )
        names[artifact.name] = filename
        chosen.append(artifact)
    for unmet in unmet_requirements(
        [PackageBuild.of(a) for a in chosen], {a.name: a.version for a in chosen}
    ):
        problems.append(
            f"{unmet.fact(f'release {version}')}: add a build of {unmet.requirement.wanted} "
            "to the release"
        )
    clean_requirements = _check_requirements(requirements or {})
    if problems:
        raise ValidationFailed(
            f"release {version} cannot be defined: " + "; ".join(problems), problems=problems
        )
    release = Release(
        nso_version=str(version),
        version_key=version.sort_key,
        installer=installer_artifact,
        packages=chosen,
        requirements=clean_requirements,
        notes=notes,
        created_by=who.actor,
    )
    session.add(release)
    session.flush()
    audit(
        session,
        who.actor,
        "release.create",
        f"release:{version}",
        installer=installer,
        packages=sorted(names.values()),
    )
    session.commit()
    return release


def list_releases(session: Session) -> list[Release]:
    return list(session.scalars(select(Release).order_by(Release.version_key)))


def get_release(session: Session, nso_version: str) -> Release:
    version = parse_version(nso_version, "nso_version")
    release = session.scalar(select(Release).where(Release.nso_version == str(version)))
    if release is None:
        raise NotFound(
            f"no release {version} is defined: define it with 'nso-repo release create {version} "
            "--installer ... --package ...'"
        )
    return release


def signature_checks(release: Release) -> list[dict[str, Any]]:
    """Every stored signature of the release, checked again over today's manifest: one that
    no longer verifies means the release's rows changed after it was signed."""
    data = signing.canonical_bytes(signing.manifest_of(release))
    checked = []
    for stored in release.signatures:
        valid = signing.stored_valid(stored.public_key, data, stored.signature)
        checked.append({"signature": stored, "valid": valid})
    return checked


def signed_release_containing(session: Session, builds: list[Artifact]) -> Optional[Release]:
    """The newest signed release that holds every one of ``builds``: a package-only upgrade
    carries its manifest, so an agent that installs only signed releases can take it."""
    wanted = {a.id for a in builds}
    signed = session.scalars(
        select(Release).where(Release.signatures.any()).order_by(Release.version_key.desc())
    )
    return next((r for r in signed if wanted <= {a.id for a in r.packages}), None)


def sign_release(
    session: Session,
    nso_version: str,
    *,
    signature: str,
    public_key: str,
    trusted: tuple[str, ...],
    who: Principal,
) -> Release:
    """Store a release manager's signature over the release's canonical manifest.

    The signature must verify with the public key sent along it; when the server is
    configured with release managers' keys (``trusted``: NSO_REPO_RELEASE_PUBLIC_KEYS) that
    key must be one of them. Without configured keys any verifying signature is stored: the
    agents hold the key that decides, so storing one only helps agents that trust its key.
    """
    release = get_release(session, nso_version)
    data = signing.canonical_bytes(signing.manifest_of(release))
    kid, key, digest = checked_signature(
        data,
        signature,
        public_key,
        trusted,
        f"the manifest of release {release.nso_version}",
        f"GET /api/v1/releases/{release.nso_version}/manifest; 'nso-repo release sign "
        f"{release.nso_version} --key PRIVATE.pem' does both",
    )
    stored = session.get(ReleaseSignature, (release.id, kid))
    if stored is None:
        stored = ReleaseSignature(release=release, key_id=kid, signed_by=who.actor)
        session.add(stored)
    stored.public_key = signing.public_pem(key)
    stored.signature = signature
    stored.manifest_sha256 = digest
    stored.signed_at = utcnow()
    stored.signed_by = who.actor
    session.flush()
    audit(
        session,
        who.actor,
        "release.sign",
        f"release:{release.nso_version}",
        key_id=kid,
        manifest_sha256=digest,
    )
    session.commit()
    return release


def checked_signature(
    data: bytes, signature: str, public_key: str, trusted: tuple[str, ...], what: str, how: str
) -> tuple[str, Any, str]:
    """(key id, key, sha256 of ``data``) of a signature that verifies over ``data`` (``what``
    it is) with ``public_key``, a key the server trusts when it is told which
    (NSO_REPO_RELEASE_PUBLIC_KEYS); ``how``: where to get the bytes to sign."""
    try:
        key = signing.load_public_key(public_key)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="public_key") from None
    kid = signing.key_id(key)
    digest = hashlib.sha256(data).hexdigest()
    try:
        signing.decode_signature(signature)
    except ValueError as exc:
        raise ValidationFailed(
            f"{exc}: send the base64 Ed25519 signature 'nso-repo release sign' makes",
            field="signature",
        ) from None
    if not signing.signature_valid(key, data, signature):
        raise SignatureInvalid(
            f"the signature does not verify with key {kid[:16]} over {what} (sha256 "
            f"{digest}): sign the manifest the server serves ({how})",
            key_id=kid,
            manifest_sha256=digest,
        )
    if trusted and kid not in signing.trusted_keys(trusted):
        raise SignatureUntrusted(
            f"key {kid[:16]} is not one of the release managers' keys this server trusts "
            "(NSO_REPO_RELEASE_PUBLIC_KEYS): sign with one of those keys, or add its .pub file "
            "to the setting and restart the server",
            key_id=kid,
        )
    return kid, key, digest
