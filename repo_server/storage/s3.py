"""Blobs as objects in an S3 bucket (AWS or any S3-compatible server) through boto3.

This module and its siblings are the only place that imports boto3/botocore: every vendor
error is turned into `FileNotFoundError` (missing object) or `StorageError` here.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, Optional

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from repo_server.errors import StorageError
from repo_server.storage.base import BlobInfo, blob_key, is_digest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from repo_server.config import Settings

# S3 refuses multipart parts below 5 MiB (except the last one).
MIN_PART_SIZE = 5 << 20
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_VENDOR_ERRORS = (BotoCoreError, ClientError, Boto3Error)
_SIGNED_OPERATIONS = {"GET": "get_object", "HEAD": "head_object"}


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    # upload_file wraps the ClientError in S3UploadFailedError; look underneath.
    cause = exc.__cause__ or exc.__context__
    return _error_code(cause) if isinstance(cause, ClientError) else ""


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a real file object, with vendor errors translated."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            chunk = self._body.read(len(view))
        except _VENDOR_ERRORS as exc:
            raise StorageError(
                f"reading {self._where} failed midway: {exc}; retry, and check the S3 server"
            ) from None
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Storage:
    name = "s3"
    list_page_size = 1000  # S3's own maximum; tests lower it to exercise paging

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "blobs/",
        endpoint_url: Optional[str] = None,
        region: str = "us-east-1",
        access_key_id: Optional[str] = None,
        secret_access_key: Optional[str] = None,
        multipart_threshold: int = 64 << 20,
        public_url: Optional[str] = None,
    ) -> None:
        """Empty credentials fall back to boto3's own chain (environment, instance role).
        ``public_url``: the endpoint as the agents reach it, which presigned URLs name (the
        signature covers the host, so they are signed for that endpoint)."""
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.multipart_threshold = multipart_threshold
        session = boto3.session.Session()

        def client(endpoint: Optional[str]) -> S3Client:
            return session.client(
                "s3",
                endpoint_url=endpoint,
                region_name=region or None,
                aws_access_key_id=access_key_id or None,
                aws_secret_access_key=secret_access_key or None,
                config=config,
            )

        config = Config(
            # Path-style and SigV4 are what S3-compatible servers (SeaweedFS, MinIO, Ceph)
            # all understand; virtual-hosted buckets need DNS they rarely have.
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        self.client: S3Client = client(self.endpoint_url)
        self.public_url = public_url or None
        # Signing makes no request: a second client only to sign for the public endpoint.
        self.presigner: S3Client = client(public_url) if public_url else self.client
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(multipart_threshold, MIN_PART_SIZE),
            max_concurrency=4,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            multipart_threshold=settings.s3_multipart_threshold,
            public_url=settings.s3_public_url,
        )

    @property
    def where(self) -> str:
        endpoint = self.endpoint_url or f"AWS S3 ({self.region})"
        return f"bucket {self.bucket!r} at {endpoint}"

    def _key(self, digest: str) -> str:
        return self.prefix + blob_key(digest)

    def _fail(self, exc: BaseException, action: str, digest: Optional[str] = None) -> NoReturn:
        """Raise the Python error for a vendor error: FileNotFoundError or StorageError."""
        code = _error_code(exc)
        if digest is not None and code in _MISSING_CODES:
            raise FileNotFoundError(f"blob {digest} is not in {self.where}") from None
        if code == "NoSuchBucket" or (digest is None and code == "404"):
            advice = "create the bucket or fix NSO_REPO_S3_BUCKET"
        elif code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            advice = (
                "check NSO_REPO_S3_ACCESS_KEY_ID/NSO_REPO_S3_SECRET_ACCESS_KEY and that they "
                "may read and write the bucket"
            )
        else:
            advice = "check that the S3 server is up and NSO_REPO_S3_ENDPOINT_URL is right"
        what = f" of blob {digest}" if digest else ""
        raise StorageError(f"S3 {action}{what} on {self.where} failed: {exc}; {advice}") from None

    def _head(self, digest: str) -> Optional[dict[str, Any]]:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(digest)))
        except _VENDOR_ERRORS as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            self._fail(exc, "HEAD", digest)

    def put_file(self, digest: str, source: Path) -> bool:
        key = self._key(digest)
        if self._head(digest) is not None:
            return False
        size = Path(source).stat().st_size
        extra: dict[str, Any] = {
            "Metadata": {"sha256": digest},
            "ContentType": "application/octet-stream",
        }
        if size < self.multipart_threshold:
            # The server recomputes the digest and refuses the upload if the bytes differ.
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(digest)).decode("ascii")
        else:
            # A whole-object SHA-256 is not allowed for multipart uploads (S3 and SeaweedFS
            # answer InvalidRequest); each part is checked with its own SHA-256 instead.
            extra["ChecksumAlgorithm"] = "SHA256"
        try:
            self.client.upload_file(
                str(source), self.bucket, key, ExtraArgs=extra, Config=self.transfer
            )
        except _VENDOR_ERRORS as exc:
            self._fail(exc, "upload", None)
        return True

    def exists(self, digest: str) -> bool:
        return self._head(digest) is not None

    def stat(self, digest: str) -> BlobInfo:
        head = self._head(digest)
        if head is None:
            raise FileNotFoundError(f"blob {digest} is not in {self.where}")
        return BlobInfo(digest=digest, size=head["ContentLength"], modified=head["LastModified"])

    def open(self, digest: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(digest))
        except _VENDOR_ERRORS as exc:
            self._fail(exc, "GET", digest)
        raw = _BodyReader(response["Body"], f"blob {digest} from {self.where}")
        return io.BufferedReader(raw, buffer_size=1 << 20)

    def delete(self, digest: str) -> None:
        # S3 answers 204 for a key that is not there, which is what the protocol wants.
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(digest))
        except _VENDOR_ERRORS as exc:
            if _error_code(exc) in _MISSING_CODES:
                return
            self._fail(exc, "DELETE", digest)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    digest = key.rsplit("/", 1)[-1]
                    # Only keys in the blob layout count; anything else in the bucket
                    # (other tools' objects, a stray upload) is not ours to report.
                    if not is_digest(digest) or key != self._key(digest):
                        continue
                    yield BlobInfo(digest=digest, size=obj["Size"], modified=obj["LastModified"])
        except _VENDOR_ERRORS as exc:
            self._fail(exc, "listing")

    def local_path(self, digest: str) -> Optional[Path]:
        return None

    def presigned_url(self, digest: str, method: str, expires: int) -> Optional[str]:
        """Signed for `method` itself: S3 refuses the URL for any other method."""
        operation = _SIGNED_OPERATIONS.get(method.upper())
        if operation is None:
            raise ValueError(f"cannot presign {method!r}: only GET and HEAD are served")
        try:
            return self.presigner.generate_presigned_url(
                operation,
                Params={"Bucket": self.bucket, "Key": self._key(digest)},
                ExpiresIn=expires,
                HttpMethod=method.upper(),
            )
        except _VENDOR_ERRORS as exc:
            self._fail(exc, "presigning", digest)

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _VENDOR_ERRORS as exc:
            self._fail(exc, "HEAD bucket")
