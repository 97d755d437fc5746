"""The catalog takes a patch bundle exactly when every agent would: one it takes and the
agents refuse fails on every node in the middle of an emergency, not at upload. Each
crafted bundle goes through both readers, the catalog's (repo_server/catalog/inspect.py)
and the agent's (agent/patch_bundle.py)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import Optional

import pytest

from agent import patch_bundle
from agent.errors import StepFailed
from repo_server.catalog.filenames import parse_filename
from repo_server.catalog.inspect import ArchiveLimits, inspect_patch_bundle
from repo_server.config import Settings
from repo_server.errors import AppError

NAME = "nso-6.2.3-patch-CSCagree1.tar.gz"
MiB = 1 << 20


def beam(size: int = 64, random: bool = False) -> bytes:
    body = b"BEAM" + (os.urandom(size - 12) if random else b"\0" * (size - 12))
    return b"FOR1" + len(body).to_bytes(4, "big") + body


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, Optional[bytes]]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, Optional[bytes]]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


CASES = {
    "good": (True, lambda: [regular("ncs_fix.beam", beam()), regular("README", b"fix")]),
    "made with tar -C dir .": (
        True,
        lambda: [special("./", tarfile.DIRTYPE), regular("./ncs_fix.beam", beam())],
    ),
    "a module name of 128 characters": (True, lambda: [regular("a" * 128 + ".beam", beam())]),
    "1000 members": (True, lambda: [regular(f"m{i}.beam", beam()) for i in range(1000)]),
    "parent folder": (False, lambda: [regular("../ncs_fix.beam", beam())]),
    "absolute": (False, lambda: [regular("/ncs_fix.beam", beam())]),
    "nested": (False, lambda: [regular("a/ncs_fix.beam", beam())]),
    "trailing slash": (False, lambda: [regular("ncs_fix.beam/", beam())]),
    "doubled slash": (False, lambda: [regular(".//ncs_fix.beam", beam())]),
    "symlink": (False, lambda: [special("ncs_fix.beam", tarfile.SYMTYPE, "/etc/passwd")]),
    "hardlink": (
        False,
        lambda: [
            regular("ncs_ok.beam", beam()),
            special("ncs_fix.beam", tarfile.LNKTYPE, "ncs_ok.beam"),
        ],
    ),
    "device": (False, lambda: [special("ncs_fix.beam", tarfile.CHRTYPE)]),
    "twice": (False, lambda: [regular("ncs_fix.beam", beam()), regular("./ncs_fix.beam", beam())]),
    "capital letter": (False, lambda: [regular("NCS_fix.beam", beam())]),
    "dash": (False, lambda: [regular("ncs-fix.beam", beam())]),
    "a module name of 129 characters": (False, lambda: [regular("a" * 129 + ".beam", beam())]),
    "1001 members": (False, lambda: [regular(f"m{i}.beam", beam()) for i in range(1001)]),
    "no BEAM header": (False, lambda: [regular("ncs_fix.beam", b"x" * 64)]),
    "a 17 MiB module": (False, lambda: [regular("ncs_fix.beam", beam(17 * MiB, random=True))]),
    "70 MiB in all": (
        False,
        lambda: [regular(f"ncs_f{i}.beam", beam(14 * MiB, random=True)) for i in range(5)],
    ),
    "no module": (False, lambda: [regular("README", b"fix")]),
    # 64 MiB of modules, but their long names' extended headers take the tar stream past
    # what an agent reads of one (64 MiB + 1 MiB).
    "64 MiB in all and many long names": (
        False,
        lambda: [
            *(regular(f"big{i}.beam", beam(16 * MiB, random=True)) for i in range(3)),
            regular("big3.beam", beam(16 * MiB - 996 * 64, random=True)),
            *(regular(f"m{i:03d}" + "a" * 124 + ".beam", beam()) for i in range(996)),
        ],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_catalog_takes_a_bundle_exactly_when_the_agents_do(tmp_path: Path, case: str) -> None:
    taken, members = CASES[case]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members():
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    bundle = tmp_path / NAME
    bundle.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))

    limits = ArchiveLimits.from_settings(Settings())
    try:
        inspect_patch_bundle(bundle, parse_filename(NAME), limits)
        catalog = True
    except AppError:
        catalog = False
    try:
        patch_bundle.read_bundle(bundle)
        agent = True
    except StepFailed:
        agent = False
    assert (catalog, agent) == (taken, taken)


def test_a_patch_id_longer_than_agents_take_is_refused_at_upload() -> None:
    from repo_server.errors import InvalidFilename

    parse_filename(f"nso-6.2.3-patch-{'C' * 128}.tar.gz")
    with pytest.raises(InvalidFilename, match="is 129 characters long: at most 128"):
        parse_filename(f"nso-6.2.3-patch-{'C' * 129}.tar.gz")
