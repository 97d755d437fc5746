"""Emergency patches: ``.beam`` files and the ``nso-<VSN>-patch-<ID>.tar.gz`` bundle.

The files use the real BEAM container (``FOR1``, big-endian length, ``BEAM``, then 4-byte
aligned chunks). The ``AtU8`` chunk carries the module name as its first atom as in real
BEAM files; an extra ``NSOs`` chunk (invented) records the NSO release, patch id and compile
time so ``show ncs-state patches`` can list them. Real tools skip unknown chunks.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nso_sim.archive import Files, reproducible_targz

MODULE_RE = re.compile(r"^[a-z][A-Za-z0-9_]*$")
PATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BeamError(Exception):
    pass


@dataclass
class BeamInfo:
    module: str
    nso_version: str
    patch_id: str
    compile_time: str


def _chunk(tag: bytes, data: bytes) -> bytes:
    pad = (4 - len(data) % 4) % 4
    return tag + struct.pack(">I", len(data)) + data + b"\0" * pad


def make_beam(module: str, nso_version: str, patch_id: str, compile_time: str) -> bytes:
    if not MODULE_RE.match(module):
        raise ValueError(f"bad module name {module!r}")
    name = module.encode()
    atoms = struct.pack(">I", 1) + bytes([len(name)]) + name
    meta = json.dumps(
        {"module": module, "nso": nso_version, "id": patch_id, "compiled": compile_time},
        sort_keys=True,
    ).encode()
    body = b"BEAM" + _chunk(b"AtU8", atoms) + _chunk(b"NSOs", meta) + _chunk(b"Code", b"\0" * 16)
    return b"FOR1" + struct.pack(">I", len(body)) + body


def parse_beam(data: bytes, where: str = "beam") -> BeamInfo:
    if len(data) < 12 or data[:4] != b"FOR1" or data[8:12] != b"BEAM":
        raise BeamError(f"{where}: not a BEAM file")
    (length,) = struct.unpack(">I", data[4:8])
    if length != len(data) - 8:
        raise BeamError(f"{where}: truncated BEAM file")
    pos, module, meta = 12, None, None
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        payload = data[pos + 8 : pos + 8 + size]
        if tag == b"AtU8" and len(payload) >= 5:
            module = payload[5 : 5 + payload[4]].decode()
        elif tag == b"NSOs":
            meta = json.loads(payload)
        pos += 8 + size + (4 - size % 4) % 4
    if module is None:
        raise BeamError(f"{where}: no atom chunk")
    meta = meta or {}
    return BeamInfo(module, meta.get("nso", "?"), meta.get("id", "?"), meta.get("compiled", "?"))


def bundle_name(vsn: str, patch_id: str) -> str:
    return f"nso-{vsn}-patch-{patch_id}.tar.gz"


def make_patch(
    vsn: str,
    patch_id: str,
    modules: list[str],
    out_dir: Path,
    beam_only: bool = False,
    readme: Optional[str] = None,
    compile_time: str = "2024-01-21T10:00:00",
) -> list[Path]:
    """Write the bundle (or, with ``beam_only``, bare ``.beam`` files) and return the paths."""
    if not PATCH_ID_RE.match(patch_id):
        raise ValueError(f"bad patch id {patch_id!r}")
    if not modules:
        raise ValueError("a patch needs at least one module")
    out_dir.mkdir(parents=True, exist_ok=True)
    beams = {f"{m}.beam": make_beam(m, vsn, patch_id, compile_time) for m in modules}
    if beam_only:
        paths = []
        for name, data in beams.items():
            (out_dir / name).write_bytes(data)
            paths.append(out_dir / name)
        return paths
    files: Files = dict(beams)
    files["README"] = (readme or f"NSO {vsn} emergency patch {patch_id}\n").encode()
    target = out_dir / bundle_name(vsn, patch_id)
    target.write_bytes(reproducible_targz(files))
    return [target]
