"""A patch bundle is read within a bound on what it unpacks to, headers included: the agent
runs as root, and tarfile reads an extended (PAX) header whole into memory."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from agent import patch_bundle
from agent.errors import StepFailed

BEAM = b"FOR1\0\0\0\x10BEAM" + b"\0" * 8


def _member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def _pax_record(size: int) -> bytes:
    # One "LEN comment=AAA...\n" record of about `size` bytes; LEN counts itself.
    body = b" comment=" + b"A" * (size - 30) + b"\n"
    length = len(body) + len(str(len(body) + len(str(len(body)))))
    return str(length).encode() + body


def test_a_small_bundle_with_a_huge_extended_header_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "nso-6.2.3-patch-X1.tar.gz"
    with gzip.open(bundle, "wb", compresslevel=9) as out:
        out.write(_member("././@PaxHeader", _pax_record(100 << 20), tarfile.XHDTYPE))
        out.write(_member("ncs_fix.beam", BEAM) + b"\0" * 1024)
    assert bundle.stat().st_size < 1 << 20  # what the server would hand out is small
    with pytest.raises(StepFailed, match="unpacks to more than"):
        patch_bundle.read_bundle(bundle)


def test_a_bundle_within_the_bound_is_read(tmp_path: Path) -> None:
    bundle = tmp_path / "nso-6.2.3-patch-X2.tar.gz"
    with gzip.open(bundle, "wb") as out:
        out.write(_member("ncs_fix.beam", BEAM) + _member("README", b"fix\n") + b"\0" * 1024)
    assert patch_bundle.read_bundle(bundle) == {"ncs_fix": BEAM}
