"""Content-addressed blob storage: local disk (the default) or S3."""

from __future__ import annotations

from typing import TYPE_CHECKING

from repo_server.storage.base import BlobInfo, Storage, blob_key, is_digest
from repo_server.storage.local import LocalStorage

if TYPE_CHECKING:
    from repo_server.config import Settings

__all__ = ["BlobInfo", "LocalStorage", "Storage", "blob_key", "is_digest", "make_storage"]


def make_storage(settings: Settings) -> Storage:
    """The backend `settings.storage` names ("local" or "s3")."""
    if settings.storage == "local":
        return LocalStorage(settings.resolved_storage_dir, tmp_dir=settings.tmp_dir)
    if settings.storage == "s3":
        # Imported here so that local-only deployments never load boto3.
        from repo_server.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    raise ValueError(f"unknown storage backend {settings.storage!r}: use 'local' or 's3'")
