"""Request and response schemas of the catalog API; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from repo_server.db import MAX_ID
from repo_server.pages import PageSchema

KIND_CHOICES = ("installer", "package", "ned", "patch", "installers", "packages", "neds", "patches")


class ArtifactSchema(Schema):
    id = fields.Integer(dump_only=True)
    filename = fields.String(dump_only=True)
    kind = fields.String(
        dump_only=True, metadata={"enum": ["installer", "package", "ned", "patch"]}
    )
    name = fields.String(dump_only=True)
    version = fields.String(dump_only=True)
    nso_version = fields.String(
        dump_only=True, metadata={"description": "NSO release the artifact is for"}
    )
    nso_branch = fields.String(dump_only=True, metadata={"description": "X.Y of nso_version"})
    arch = fields.String(dump_only=True, allow_none=True)
    sha256 = fields.String(dump_only=True)
    size = fields.Integer(dump_only=True)
    meta = fields.Dict(
        dump_only=True,
        metadata={"description": "What inspection found: package metadata, patch modules..."},
    )
    uploaded_by = fields.String(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    deleted = fields.Boolean(dump_only=True)
    deleted_at = fields.DateTime(dump_only=True, allow_none=True)
    deleted_by = fields.String(dump_only=True, allow_none=True)
    download_url = fields.Method("_download_url", dump_only=True)

    def _download_url(self, artifact: Any) -> str:
        return f"/api/v1/blobs/{artifact.sha256}"


class ArtifactPageSchema(PageSchema):
    items = fields.List(fields.Nested(ArtifactSchema))


class ArtifactQueryArgs(Schema):
    kind = fields.List(
        fields.String(),
        metadata={
            "description": "Repeat or comma-separate: "
            + ", ".join(KIND_CHOICES)
            + "; plural forms group NEDs in packages"
        },
    )
    name = fields.String()
    nso = fields.String(
        metadata={"description": "6.2: everything for the 6.2 branch; 6.2.1: for that release"}
    )
    include_deleted = fields.Boolean(load_default=False)
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_ID))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]

RAW_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [
        {
            "name": "X-Checksum-SHA256",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            "description": "The client's sha256 of the body; the upload fails if it differs.",
        }
    ],
}

MULTIPART_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                    },
                }
            }
        },
    }
}
