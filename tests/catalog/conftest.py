from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from repo_server.catalog.inspect import ArchiveLimits

from .archives import Member, write_tar_gz

Build = Callable[[str, list[Member]], Path]


@pytest.fixture
def limits() -> ArchiveLimits:
    """Generous for the small archives the tests build; bomb tests pass their own."""
    return ArchiveLimits(max_members=100, max_unpacked_bytes=64 << 20, max_ratio=200)


@pytest.fixture
def build(tmp_path: Path) -> Build:
    """build(filename, members) -> path of a .tar.gz holding those members."""

    def _build(filename: str, members: list[Member]) -> Path:
        return write_tar_gz(tmp_path / filename, members)

    return _build
