"""Release manifests: which installer and which exact package builds make up an NSO release."""

from __future__ import annotations

import re
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.catalog.compatibility import PackageBuild, unmet_requirements
from repo_server.catalog.models import Artifact
from repo_server.catalog.release_models import Release
from repo_server.catalog.versions import NsoVersion
from repo_server.errors import Conflict, NotFound, ValidationFailed

REQUIREMENT_KEYS = ("java", "glibc", "min_source_version", "min_free_bytes")


class ReleaseExists(Conflict):
    code = "release_exists"


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
            clean[key] = int(value)
        elif key == "min_source_version":
            clean[key] = str(parse_version(str(value), "requirements.min_source_version"))
        else:
            if not re.match(r"\d+(\.\d+)*$", str(value).strip()):
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
            f"release {version} is already defined; releases are immutable: "
            "delete it (if no job used it) and define it again",
            nso_version=str(version),
        )
    problems: list[str] = []
    installer_artifact = live_artifact(session, installer)
    if installer_artifact.kind != "installer":
        problems.append(f"{installer} is a {installer_artifact.kind}, not an installer")
    elif NsoVersion.parse(installer_artifact.nso_version) != version:
        problems.append(f"{installer} installs NSO {installer_artifact.nso_version}, not {version}")
    chosen: list[Artifact] = []
    names: dict[str, str] = {}
    for filename in packages:
        artifact = live_artifact(session, filename)
        if artifact.kind not in ("package", "ned"):
            problems.append(f"{filename} is a {artifact.kind}, not a package")
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
