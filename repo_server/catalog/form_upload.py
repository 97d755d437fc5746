"""The file of a multipart upload form (the API's POST /api/v1/artifacts and the console's
upload), read within the size limit and checked before the catalog ingests it."""

from __future__ import annotations

from typing import IO, Optional

from flask import request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from repo_server.catalog.receive import normalize_sha256
from repo_server.config import Settings
from repo_server.errors import BadRequest, PayloadTooLarge, TruncatedBody, UnsupportedMediaType


def form_file(settings: Settings) -> tuple[str, IO[bytes], Optional[str]]:
    """(file name, its bytes, the sha256 the form announces) of the form's `file` field."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "POST takes multipart/form-data with a 'file' field; "
            "or PUT the raw bytes to /api/v1/artifacts/<filename>"
        )
    # Werkzeug spools the part to disk; cap the whole body so it cannot grow unbounded.
    request.max_content_length = settings.max_upload_bytes + (1 << 20)
    try:
        upload = request.files.get("file")
        sha256 = request.form.get("sha256")
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the upload passed the limit of {settings.max_upload_bytes} bytes "
            "(NSO_REPO_MAX_UPLOAD_SIZE)",
            limit=settings.max_upload_bytes,
        ) from None
    except (ClientDisconnected, ValueError):
        raise TruncatedBody("the multipart body ended early: upload the file again") from None
    if upload is None or not upload.filename:
        raise BadRequest("the form has no 'file' field with a file name: send -F file=@FILE")
    return upload.filename, upload.stream, normalize_sha256(sha256)
