"""One error hierarchy for the server.

Every error a client sees is an `AppError`: a stable machine-readable `code`, an HTTP
status, and a message that says what was wrong and what to do about it. One handler in
`app.py` turns them into the JSON error shape documented in `docs/api.md`:

    {"error": {"code": "checksum_mismatch", "message": "...", "details": {...}}}
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class InvalidFilename(BadRequest):
    code = "invalid_filename"


class InvalidArtifact(BadRequest):
    """The bytes are not an acceptable artifact of the kind its name says."""

    code = "invalid_artifact"


class UnsafeArchive(InvalidArtifact):
    code = "unsafe_archive"


class MetadataMismatch(InvalidArtifact):
    code = "metadata_mismatch"


class AmbiguousPackage(InvalidArtifact):
    """More than one package-meta-data.xml: two readers could see two packages."""

    code = "ambiguous_package"


class ChecksumMismatch(BadRequest):
    code = "checksum_mismatch"


class TruncatedBody(BadRequest):
    code = "truncated_body"


class ValidationFailed(AppError):
    status = 422
    code = "validation_failed"


class Unauthenticated(AppError):
    status = 401
    code = "unauthenticated"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class ArtifactExists(Conflict):
    code = "artifact_exists"


class NameReserved(Conflict):
    code = "name_reserved"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class InsufficientStorage(AppError):
    status = 507
    code = "insufficient_storage"


class StorageError(AppError):
    status = 503
    code = "storage_unavailable"
