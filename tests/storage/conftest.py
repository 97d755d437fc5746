"""Fixtures of the storage tests; `storage`, `s3_server` come from tests/conftest.py."""

from __future__ import annotations

from tests.services import blob_file  # noqa: F401 — fixture
