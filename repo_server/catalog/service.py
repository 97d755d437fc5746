"""Catalog operations: ingest an upload, query, soft-delete. Each call owns its transaction.

Ingest order matters for the promise that a rejected upload leaves nothing behind: the file
name is checked before a byte is read, the body is hashed into a temp file, the digest and
content are validated, and only then is the blob moved into storage and the rows committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import IO, Any, Optional

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit
from repo_server.catalog.filenames import MAX_NAME_BYTES, ParsedName, parse_filename
from repo_server.catalog.inspect import ArchiveLimits, inspect_artifact
from repo_server.catalog.models import Artifact, Blob
from repo_server.catalog.receive import Received, receive
from repo_server.catalog.versions import NsoVersion, package_version_key
from repo_server.config import Settings
from repo_server.db import utcnow
from repo_server.errors import (
    ArtifactExists,
    Conflict,
    NameReserved,
    NotFound,
    ValidationFailed,
)
from repo_server.pages import Page, paginate
from repo_server.storage import Storage

log = logging.getLogger(__name__)

# What `ls packages` means: NEDs are packages too, whether tarball or signed.bin.
KIND_ALIASES = {
    "installers": ("installer",),
    "packages": ("package", "ned"),
    "neds": ("ned",),
    "patches": ("patch",),
}


@dataclass
class IngestResult:
    artifact: Artifact
    created: bool


@dataclass
class ArtifactQuery:
    kinds: tuple[str, ...] = ()
    name: Optional[str] = None
    nso: Optional[str] = None
    include_deleted: bool = False
    page: int = 1
    per_page: int = 50


class CatalogService:
    def __init__(self, session: Session, storage: Storage, settings: Settings) -> None:
        self.session = session
        self.storage = storage
        self.settings = settings

    # -- ingest -----------------------------------------------------------------------

    def ingest(
        self,
        filename: str,
        stream: IO[bytes],
        *,
        who: Principal,
        content_length: Optional[int] = None,
        expected_sha256: Optional[str] = None,
    ) -> IngestResult:
        parsed = parse_filename(filename)
        existing = self._by_filename(filename)
        # Refuse before reading the body where the answer cannot depend on the bytes.
        if existing is not None and existing.deleted:
            raise self._reserved(existing)
        if existing is not None and expected_sha256 and expected_sha256 != existing.sha256:
            raise self._exists(existing)
        # Do not hold a transaction (and a pooled connection's snapshot) open while a large
        # body streams in; the name is looked up again once the bytes are here.
        self.session.rollback()
        received = receive(
            stream,
            self.settings.tmp_dir,
            limit=self.settings.max_upload_bytes,
            content_length=content_length,
            expected_sha256=expected_sha256,
        )
        try:
            existing = self._by_filename(filename)
            return self._ingest_received(filename, parsed, received, existing, who)
        finally:
            received.discard()

    def _ingest_received(
        self,
        filename: str,
        parsed: ParsedName,
        received: Received,
        existing: Optional[Artifact],
        who: Principal,
    ) -> IngestResult:
        if existing is not None:
            return self._answer_existing(existing, received.sha256)
        meta = inspect_artifact(received.path, parsed, ArchiveLimits.from_settings(self.settings))
        # A lost race (same name, or a blob row gc removed meanwhile) is retried from the top;
        # a file this request stored and could not commit is left for gc, never deleted here,
        # because a concurrent upload of the same bytes may be about to rely on it.
        for attempt in range(3):
            try:
                artifact = self._new_artifact(filename, parsed, received, meta, who)
                artifact.blob = self._claim_blob(received)
                self.session.add(artifact)
                self.session.flush()
                audit(
                    self.session,
                    who.actor,
                    "artifact.upload",
                    f"artifact:{filename}",
                    sha256=received.sha256,
                    size=received.size,
                    kind=parsed.kind,
                )
                self.session.commit()
            except IntegrityError:
                self.session.rollback()
                winner = self._by_filename(filename)
                if winner is not None:
                    return self._answer_existing(winner, received.sha256)
                if attempt == 2:
                    raise
                continue
            except BaseException:
                self.session.rollback()
                raise
            log.info(
                "stored %s (%s, %d bytes) for %s",
                filename,
                received.sha256,
                received.size,
                who.actor,
            )
            return IngestResult(artifact, created=True)
        raise AssertionError("unreachable")

    def _claim_blob(self, received: Received) -> Blob:
        """The blob row for these bytes, locked for this transaction, with the file stored.

        The UPDATE (or the INSERT of a new row) takes the row's lock before the file is
        looked at, and gc deletes a row and its file under that same lock: so either gc
        finishes first and this request stores the file again, or gc finds the row in use.
        """
        now = utcnow()
        touched = self.session.execute(
            update(Blob).where(Blob.sha256 == received.sha256).values(last_used_at=now)
        )
        if touched.rowcount:  # type: ignore[attr-defined]
            blob = self.session.scalar(select(Blob).where(Blob.sha256 == received.sha256))
            assert blob is not None  # nosec B101 # narrows the type for mypy; under python -O the next line fails on None, it never lets anything through
        else:
            blob = Blob(sha256=received.sha256, size=received.size, last_used_at=now)
            self.session.add(blob)
            self.session.flush()
        self.storage.put_file(received.sha256, received.path)
        return blob

    def _answer_existing(self, existing: Artifact, sha256: str) -> IngestResult:
        """Same name again: 200 for the same bytes, 409 otherwise; deleted names stay taken."""
        if existing.deleted:
            raise self._reserved(existing)
        if existing.sha256 == sha256:
            return IngestResult(existing, created=False)
        raise self._exists(existing)

    def _new_artifact(
        self,
        filename: str,
        parsed: ParsedName,
        received: Received,
        meta: dict[str, Any],
        who: Principal,
    ) -> Artifact:
        meta = dict(meta)
        name = str(meta.pop("name", None) or parsed.name or "nso")
        version = str(meta.pop("version", None) or parsed.version or parsed.nso_version)
        nso: NsoVersion = parsed.nso_version
        # An installer's version is an NSO version; everything else has its own scheme.
        version_key = nso.sort_key if parsed.kind == "installer" else package_version_key(version)
        return Artifact(
            filename=filename,
            kind=parsed.kind,
            name=name,
            version=version,
            version_key=version_key,
            nso_version=str(nso),
            nso_version_key=nso.sort_key,
            nso_branch=nso.branch,
            arch=parsed.arch,
            sha256=received.sha256,
            size=received.size,
            meta=meta,
            uploaded_by=who.actor,
        )

    def _exists(self, artifact: Artifact) -> ArtifactExists:
        return ArtifactExists(
            f"{artifact.filename} is already published with other content "
            f"(sha256 {artifact.sha256}); artifacts are immutable: publish the change "
            "under a new version",
            filename=artifact.filename,
            sha256=artifact.sha256,
        )

    def _reserved(self, artifact: Artifact) -> NameReserved:
        return NameReserved(
            f"{artifact.filename} was deleted on {artifact.deleted_at:%Y-%m-%d} and its name "
            "stays reserved so no host can get different bytes under it: publish a new version "
            f"(or, if the name was squatted, an admin may free it: 'nso-repo release-name "
            f"{artifact.filename}')",
            filename=artifact.filename,
        )

    # -- queries ----------------------------------------------------------------------

    def _by_filename(self, filename: str) -> Optional[Artifact]:
        return self.session.scalar(select(Artifact).where(Artifact.filename == filename))

    def get(self, filename: str) -> Artifact:
        artifact = self._by_filename(filename)
        if artifact is None:
            raise self._not_found(filename)
        return artifact

    @staticmethod
    def _not_found(filename: str) -> NotFound:
        return NotFound(
            f"no artifact named {filename!r}: list them with GET /api/v1/artifacts or 'nso-repo ls'"
        )

    def list(self, query: ArtifactQuery) -> Page[Artifact]:
        stmt = select(Artifact)
        if query.kinds:
            stmt = stmt.where(Artifact.kind.in_(query.kinds))
        if query.name:
            stmt = stmt.where(Artifact.name == query.name)
        if query.nso:
            stmt = stmt.where(self._nso_filter(query.nso))
        if not query.include_deleted:
            stmt = stmt.where(Artifact.deleted_at.is_(None))
        return paginate(
            self.session,
            stmt,
            query.page,
            query.per_page,
            Artifact.kind,
            Artifact.name,
            Artifact.version_key,
            Artifact.nso_version_key,
        )

    @staticmethod
    def _nso_filter(text: str) -> Any:
        try:
            wanted = NsoVersion.parse(text)
        except ValueError as exc:
            raise ValidationFailed(
                f"--nso/nso={text!r} is not an NSO version ({exc}); use a form like 6.2 or 6.1.2",
                field="nso",
            ) from None
        if len(wanted.release) <= 2:
            return Artifact.nso_branch == wanted.branch
        # Keys, not strings, so 6.1.2.0 finds 6.1.2. A build for the 6.2 branch serves 6.2.1.
        branch = NsoVersion.parse(wanted.branch)
        return or_(
            Artifact.nso_version_key == wanted.sort_key,
            Artifact.nso_version == wanted.branch,
            Artifact.nso_version_key == branch.sort_key,
        )

    def blob_for_download(self, digest: str) -> tuple[Blob, str]:
        """The blob of a live artifact and one file name for it; deleted ones are not served."""
        row = self.session.execute(
            select(Blob, Artifact.filename)
            .join(Artifact, Artifact.blob_id == Blob.id)
            .where(Blob.sha256 == digest, Artifact.deleted_at.is_(None))
            .order_by(Artifact.id)
            .limit(1)
        ).first()
        if row is None:
            raise NotFound(
                f"no published artifact has sha256 {digest}: check the digest with "
                "GET /api/v1/artifacts"
            )
        return row[0], row[1]

    # -- delete -----------------------------------------------------------------------

    def delete(self, filename: str, who: Principal) -> Artifact:
        artifact = self.get(filename)
        if artifact.deleted:
            return artifact
        artifact.deleted_at = utcnow()
        artifact.deleted_by = who.actor
        # The protection window of gc starts again: a delete by mistake can still be undone
        # from the database's backup while the bytes are kept.
        self.session.execute(
            update(Blob).where(Blob.id == artifact.blob_id).values(last_used_at=artifact.deleted_at)
        )
        audit(
            self.session,
            who.actor,
            "artifact.delete",
            f"artifact:{filename}",
            sha256=artifact.sha256,
        )
        self.session.commit()
        return artifact

    def release_name(self, filename: str, who: Principal) -> Artifact:
        """Free the reserved name of a deleted artifact so it can be published again (admin).

        The row is kept under ``released-<id>-<name>`` (no upload can take such a name): its
        digest, its history and every release manifest naming it stay as they were. Bytes
        published again under the name cannot pass for the old ones on a host: every step
        names its sha256 and the agent checks it.
        """
        artifact = self.session.scalar(
            select(Artifact).where(Artifact.filename == filename).with_for_update()
        )
        if artifact is None:
            raise self._not_found(filename)
        if not artifact.deleted:
            raise Conflict(
                f"{filename} is published and its name is in use: delete it first "
                f"('nso-repo rm {filename}'), then release the name",
                filename=filename,
            )
        kept_as = f"released-{artifact.id}-{filename}"[:MAX_NAME_BYTES]
        artifact.filename = kept_as
        artifact.meta = {
            **artifact.meta,
            "released_name": filename,
            "released_at": utcnow().isoformat(timespec="seconds"),
            "released_by": who.actor,
        }
        audit(
            self.session,
            who.actor,
            "artifact.release_name",
            f"artifact:{filename}",
            sha256=artifact.sha256,
            kept_as=kept_as,
        )
        self.session.commit()
        log.info("released the name %s (kept as %s) for %s", filename, kept_as, who.actor)
        return artifact
