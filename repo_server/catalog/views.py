"""Catalog HTTP API: thin views over CatalogService."""

from __future__ import annotations

from typing import Any

from flask import request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from repo_server.catalog.form_upload import form_file
from repo_server.catalog.receive import normalize_sha256
from repo_server.catalog.schemas import (
    BEARER,
    KIND_CHOICES,
    MULTIPART_UPLOAD_DOC,
    RAW_UPLOAD_DOC,
    ArtifactPageSchema,
    ArtifactQueryArgs,
    ArtifactSchema,
)
from repo_server.catalog.service import KIND_ALIASES, ArtifactQuery, CatalogService, IngestResult
from repo_server.context import db_session, principal, require, state
from repo_server.errors import (
    ValidationFailed,
)

blp = Blueprint(
    "artifacts", __name__, url_prefix="/api/v1", description="Installers, packages, NEDs, patches"
)


def catalog() -> CatalogService:
    app = state()
    return CatalogService(db_session(), app.storage, app.settings)


def _kinds(values: list[str]) -> tuple[str, ...]:
    kinds: list[str] = []
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if part not in KIND_CHOICES:
                raise ValidationFailed(
                    f"kind={part!r} is not a kind: use {', '.join(KIND_CHOICES)}",
                    fields={"kind": [f"unknown kind {part!r}"]},
                )
            kinds.extend(KIND_ALIASES.get(part, (part,)))
    return tuple(dict.fromkeys(kinds))


def _created(result: IngestResult) -> Any:
    location = url_for("artifacts.ArtifactItem", filename=result.artifact.filename)
    if result.created:
        return result.artifact, 201, {"Location": location}
    return result.artifact, 200, {"Location": location}


@blp.route("/artifacts")
class Artifacts(MethodView):
    @require("artifact:read")
    @blp.doc(security=BEARER)
    @blp.arguments(ArtifactQueryArgs, location="query", as_kwargs=True)
    @blp.response(200, ArtifactPageSchema)
    def get(self, **args: Any) -> Any:
        """List artifacts, filtered and paginated, in version order."""
        query = ArtifactQuery(
            kinds=_kinds(args.get("kind", [])),
            name=args.get("name"),
            nso=args.get("nso"),
            include_deleted=args["include_deleted"],
            page=args["page"],
            per_page=args["per_page"],
        )
        return catalog().list(query)

    @require("artifact:upload")
    @blp.doc(security=BEARER, **MULTIPART_UPLOAD_DOC)
    @blp.response(201, ArtifactSchema, description="Stored")
    @blp.alt_response(200, schema=ArtifactSchema, description="Same name, same bytes: no-op")
    def post(self) -> Any:
        """Upload an artifact as a multipart form (field `file`, optional `sha256`)."""
        filename, stream, sha256 = form_file(state().settings)
        result = catalog().ingest(filename, stream, who=principal(), expected_sha256=sha256)
        return _created(result)


@blp.route("/artifacts/<string:filename>")
class ArtifactItem(MethodView):
    @require("artifact:read")
    @blp.doc(security=BEARER)
    @blp.response(200, ArtifactSchema)
    def get(self, filename: str) -> Any:
        """One artifact by file name (deleted ones included, marked as such)."""
        return catalog().get(filename)

    @require("artifact:upload")
    @blp.doc(security=BEARER, **RAW_UPLOAD_DOC)
    @blp.response(201, ArtifactSchema, description="Stored")
    @blp.alt_response(200, schema=ArtifactSchema, description="Same name, same bytes: no-op")
    def put(self, filename: str) -> Any:
        """Upload an artifact: the body is the file's bytes; the kind comes from the name."""
        expected = normalize_sha256(
            request.headers.get("X-Checksum-SHA256") or request.args.get("sha256")
        )
        result = catalog().ingest(
            filename,
            request.stream,
            who=principal(),
            content_length=request.content_length,
            expected_sha256=expected,
        )
        return _created(result)

    @require("artifact:delete")
    @blp.doc(security=BEARER)
    @blp.response(200, ArtifactSchema)
    def delete(self, filename: str) -> Any:
        """Soft-delete: hidden from listings and downloads; the name stays reserved."""
        return catalog().delete(filename, principal())


@blp.route("/artifacts/<string:filename>/release-name")
class ArtifactNameRelease(MethodView):
    @require("artifact:delete")
    @blp.doc(security=BEARER)
    @blp.response(200, ArtifactSchema)
    def post(self, filename: str) -> Any:
        """Free the reserved name of a deleted artifact (admin, audited): the old row is kept
        as `released-<id>-<name>` and the name can be published again."""
        return catalog().release_name(filename, principal())
