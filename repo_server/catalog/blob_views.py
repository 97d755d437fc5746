"""Blob downloads by sha256: sent from local disk, or a 302 to a presigned S3 URL."""

from __future__ import annotations

from typing import Any

from flask import redirect, request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.catalog.schemas import BEARER
from repo_server.catalog.views import catalog
from repo_server.context import db_session, principal, require, state
from repo_server.errors import BadRequest, NotFound
from repo_server.storage import is_digest
from repo_server.upgrades.step_payloads import node_may_download

blp = Blueprint("blobs", __name__, url_prefix="/api/v1", description="Download blobs")

# Blobs never change under their digest, so any cache may keep them; tokens make them private.
CACHE_SECONDS = 365 * 24 * 3600


@blp.route("/blobs/<string:sha256>")
class BlobItem(MethodView):
    @require("blob:read")
    @blp.doc(
        security=BEARER,
        responses={
            "200": {"description": "The bytes (local storage); Range, ETag, If-None-Match work"},
            "206": {"description": "Partial content for a Range request"},
            "302": {"description": "Redirect to a presigned URL (S3 storage)"},
            "304": {"description": "Not modified (If-None-Match matched)"},
        },
    )
    def get(self, sha256: str) -> Any:
        """Download a blob by its sha256. HEAD is answered the same way without a body."""
        if not is_digest(sha256):
            raise BadRequest(f"{sha256!r} is not a sha256 digest: use 64 lowercase hex characters")
        app = state()
        _blob, filename = catalog().blob_for_download(sha256)
        who = principal()
        if who.role == "agent" and not node_may_download(db_session(), who.node_id or 0, sha256):
            # The answer an unknown digest gets: an agent learns nothing beyond its own steps.
            raise NotFound(
                f"no published artifact has sha256 {sha256}: check the digest with "
                "GET /api/v1/artifacts"
            )
        url = app.storage.presigned_url(sha256, request.method, app.settings.s3_presign_expires)
        if url is not None:
            return redirect(url, code=302)
        path = app.storage.local_path(sha256)
        if path is None or not path.is_file():
            raise NotFound(
                f"blob {sha256} is catalogued but missing from storage: "
                "restore it from backup or upload the artifact again"
            )
        response = send_file(
            path,
            mimetype="application/octet-stream",
            as_attachment=True,
            download_name=filename,
            conditional=True,
            etag=sha256,
            max_age=CACHE_SECONDS,
        )
        response.headers["Cache-Control"] = f"private, max-age={CACHE_SECONDS}, immutable"
        response.headers["X-Checksum-SHA256"] = sha256
        return response
