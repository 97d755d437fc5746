"""Safe inspection of an uploaded artifact that is already on disk.

Nothing is ever extracted. Archives are read once, as a stream, through a counter that
stops a decompression bomb as soon as it exceeds its budget, and every member is checked
before anything else looks at it. What is accepted and why: docs/artifact-formats.md.
"""

from __future__ import annotations

import gzip
import re
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

import defusedxml
import defusedxml.ElementTree as SafeET

from repo_server.catalog.compatibility import META_FILE, PackageBuild
from repo_server.catalog.filenames import ParsedName
from repo_server.errors import AmbiguousPackage, InvalidArtifact, MetadataMismatch, UnsafeArchive

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element  # nosec B405 # the type only: every parse is defusedxml's

    from repo_server.config import Settings

MiB = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
RATIO_SLACK = MiB  # tiny archives compress extremely well; do not flag them as bombs
META_MAX_BYTES = MiB
# pax / GNU long-name headers are read into memory whole by tarfile: cap them first.
HEADER_DATA_MAX = MiB
README_MAX_BYTES = 64 << 10
NCS_PACKAGES_NS = "http://tail-f.com/ns/ncs-packages"
COMPONENT_TYPES = ("ned", "callback", "application", "upgrade")
BEAM_MODULE = re.compile(r"[a-z][A-Za-z0-9_]*")
# What every agent takes of a patch bundle (agent/patch_bundle.py, agent/trust.py): the
# catalog takes no bundle that all of them would then refuse, mid-emergency.
PATCH_MAX_MEMBERS = 1000
PATCH_BEAM_MAX_BYTES = 16 << 20
PATCH_MAX_BYTES = 64 << 20
PATCH_MODULE_MAX = 128
PATCH_UNPACKED_MAX = PATCH_MAX_BYTES + MiB  # the whole tar stream, headers and padding too
_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


@dataclass
class ArchiveLimits:
    max_members: int
    max_unpacked_bytes: int
    max_ratio: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_members=settings.tar_max_members,
            max_unpacked_bytes=settings.tar_max_unpacked_bytes,
            max_ratio=settings.tar_max_ratio,
        )


@dataclass
class PackageMeta:
    name: str
    version: str
    description: Optional[str] = None
    ncs_min_versions: list[str] = field(default_factory=list)
    ncs_max_versions: list[str] = field(default_factory=list)
    required_packages: list[dict[str, Optional[str]]] = field(default_factory=list)
    ned_ids: list[str] = field(default_factory=list)
    components: list[dict[str, Optional[str]]] = field(default_factory=list)
    top_folder: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PatchMeta:
    patch_id: str
    nso_version: str
    modules: list[str] = field(default_factory=list)
    readme: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- streaming


class _Budget:
    """File-like reader over the decompressed stream that counts every byte handed out.

    tarfile in stream mode pulls everything (headers, skipped member data) through
    `read()`, so the count is the true decompressed size and the bomb check runs as the
    bytes arrive, never after. It also keeps the last bytes read so the end-of-archive
    block can be checked afterwards.
    """

    WINDOW = 64 << 10

    def __init__(self, inner: IO[bytes], limits: ArchiveLimits, compressed_size: int) -> None:
        self._inner = inner
        self._limits = limits
        self._compressed = compressed_size
        self._ratio_cap = limits.max_ratio * compressed_size + RATIO_SLACK
        self.total = 0
        self._recent: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MiB:
            size = MiB  # never let a caller pull an unbounded amount in one call
        data = self._inner.read(size)
        if data:
            self._remember(data)
            self.total += len(data)
            self._check()
        return data

    def _check(self) -> None:
        if self.total > self._limits.max_unpacked_bytes:
            raise UnsafeArchive(
                f"the archive unpacks to more than {self._limits.max_unpacked_bytes} bytes "
                "(NSO_REPO_TAR_MAX_UNPACKED_SIZE): refused as a possible decompression bomb",
                limit=self._limits.max_unpacked_bytes,
            )
        if self.total > self._ratio_cap:
            raise UnsafeArchive(
                f"the archive expands more than {self._limits.max_ratio} times its compressed "
                f"size of {self._compressed} bytes (NSO_REPO_TAR_MAX_RATIO): refused as a "
                "possible decompression bomb",
                ratio=self._limits.max_ratio,
            )

    def _remember(self, data: bytes) -> None:
        self._recent.append((self.total, data))
        self._recent_bytes += len(data)
        while self._recent_bytes - len(self._recent[0][1]) >= self.WINDOW:
            self._recent_bytes -= len(self._recent.popleft()[1])

    def bytes_at(self, offset: int, size: int) -> Optional[bytes]:
        """Bytes [offset, offset+size), shorter if the stream ends first.

        Reads on if needed; None only if those bytes already left the window.
        """
        while self.total < offset + size and self.read(size):
            pass
        if offset >= self.total:
            return b""
        first = self._recent[0][0] if self._recent else self.total
        if offset < first:
            return None
        joined = b"".join(chunk for _, chunk in self._recent)
        return joined[offset - first : offset - first + size]

    def drain(self) -> None:
        while self.read(MiB):
            pass


class _GuardedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        # Checked before tarfile reads the header's data into memory in one piece.
        if self.type in _EXTENDED_HEADERS and self.size > HEADER_DATA_MAX:
            raise UnsafeArchive(
                f"the archive has an extended header of {self.size} bytes: refused",
                limit=HEADER_DATA_MAX,
            )
        return super()._proc_member(tarfile)  # type: ignore[misc]


@dataclass
class _Entry:
    info: tarfile.TarInfo
    parts: list[str]  # the member path split on "/", without "" and "." components
    tar: tarfile.TarFile

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    def read(self, limit: int, what: str) -> bytes:
        if self.info.size > limit:
            raise InvalidArtifact(f"{what} is {self.info.size} bytes, over the {limit} limit")
        handle = self.tar.extractfile(self.info)
        if handle is None:  # pragma: no cover - only regular files are read
            raise InvalidArtifact(f"{what} is not a regular file")
        return handle.read()


def _bad_chars(text: str) -> bool:
    return "\\" in text or any(ord(ch) < 32 or ord(ch) == 127 for ch in text)  # NUL too


def _member_parts(info: tarfile.TarInfo) -> list[str]:
    name = info.name
    if not name:
        raise UnsafeArchive("the archive has a member with an empty name")
    if _bad_chars(name):
        raise UnsafeArchive(
            f"member {name!r} has a backslash, NUL or control character in its name",
            member=name,
        )
    if (info.issym() or info.islnk()) and _bad_chars(info.linkname):
        raise UnsafeArchive(
            f"link {name!r} has a backslash, NUL or control character in its target",
            member=name,
        )
    if name.startswith("/"):
        raise UnsafeArchive(f"member {name!r} has an absolute path", member=name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r} has a '..' component", member=name)
    if not parts and not info.isdir():
        raise UnsafeArchive(f"member {name!r} names the archive root but is not a folder")
    return parts


def _check_type(info: tarfile.TarInfo) -> None:
    if info.isreg() or info.isdir() or info.issym() or info.islnk():
        return
    kinds = {
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a FIFO",
    }
    kind = kinds.get(info.type, f"of tar type {info.type!r}")
    raise UnsafeArchive(
        f"member {info.name!r} is {kind}: only files, folders and links are allowed",
        member=info.name,
    )


def _walk(path: Path, limits: ArchiveLimits) -> Iterator[_Entry]:
    """Yield every member of a gzip tar after the checks every archive must pass.

    After the last member it reads the rest of the gzip stream (checking its CRC) and makes
    sure the tar really ended (a zero block), so a truncated upload is never accepted.
    """
    with path.open("rb") as raw:
        if raw.read(2) != GZIP_MAGIC:
            raise InvalidArtifact("not a gzip file: expected a .tar.gz made with tar -czf")
        raw.seek(0)
        compressed_size = path.stat().st_size
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            budget = _Budget(gz, limits, compressed_size)  # type: ignore[arg-type]
            try:
                with tarfile.open(
                    fileobj=budget,  # type: ignore[call-overload]
                    mode="r|",
                    tarinfo=_GuardedTarInfo,
                ) as tar:
                    for count, info in enumerate(tar, start=1):
                        if count > limits.max_members:
                            raise UnsafeArchive(
                                f"the archive has more than {limits.max_members} members "
                                "(NSO_REPO_TAR_MAX_MEMBERS)",
                                limit=limits.max_members,
                            )
                        parts = _member_parts(info)
                        _check_type(info)
                        yield _Entry(info, parts, tar)
                    end = tar.offset  # where tarfile looked for the next header
                tail = budget.bytes_at(end, tarfile.BLOCKSIZE)
                budget.drain()
            except EOFError:
                raise InvalidArtifact(
                    "the archive is truncated: the gzip stream ends early"
                ) from None
            except (gzip.BadGzipFile, zlib.error) as exc:
                raise InvalidArtifact(f"the archive is not a valid gzip stream: {exc}") from None
            except tarfile.TarError as exc:
                if "unexpected end" in str(exc):  # tarfile's words for data cut short
                    raise InvalidArtifact(
                        "the archive is truncated: a member's data ends early"
                    ) from None
                raise InvalidArtifact(f"the archive is not a valid tar file: {exc}") from None
    if tail is not None and tail != bytes(tarfile.BLOCKSIZE):
        # Short: the tar was cut at a member boundary. Non-zero: tarfile stopped at a
        # header it could not read, and everything after it would go unchecked.
        raise InvalidArtifact(
            "the archive is truncated or corrupt: the tar does not end with an end-of-archive "
            f"block at offset {end}; upload the complete file again"
        )


# -------------------------------------------------------------------------- packages


def _resolve(parts: list[str], links: dict[str, str]) -> Optional[list[str]]:
    """Resolve a path inside the archive the way the OS would after extraction.

    Follows the archive's own symlinks (so `a/../x` through a link to a deeper folder
    is handled correctly). Returns None if it climbs above the archive root, hits an
    absolute target, or loops.
    """
    resolved: list[str] = []
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get("/".join(resolved))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):  # 40: the Linux symlink-hop limit
                return None
            resolved.pop()
            pending = target.split("/") + pending
    return resolved


def _inside(top: str, resolved: Optional[list[str]]) -> bool:
    return bool(resolved) and resolved is not None and resolved[0] == top


def _check_links(top: str, symlinks: dict[str, str], hardlinks: dict[str, str]) -> None:
    for link, target in symlinks.items():
        if target.startswith("/"):
            raise UnsafeArchive(f"symlink {link!r} points to absolute path {target!r}", member=link)
        folder = link.split("/")[:-1]
        if not _inside(top, _resolve([*folder, *target.split("/")], symlinks)):
            raise UnsafeArchive(
                f"symlink {link!r} -> {target!r} points outside the package folder {top!r} "
                "(or into a loop of links)",
                member=link,
            )
    for link, target in hardlinks.items():
        # tar stores hardlink targets relative to the archive root, not the link's folder.
        parts = [part for part in target.split("/") if part not in ("", ".")]
        if target.startswith("/") or ".." in parts:
            raise UnsafeArchive(f"hardlink {link!r} -> {target!r} is not a safe path", member=link)
        if not _inside(top, _resolve(parts, symlinks)):
            raise UnsafeArchive(
                f"hardlink {link!r} -> {target!r} points outside the package folder {top!r}",
                member=link,
            )


def _scan_package(path: Path, limits: ArchiveLimits) -> tuple[str, bytes]:
    """Check a package tarball's layout; return its top folder and package-meta-data.xml."""
    tops: list[str] = []
    seen: set[str] = set()
    symlinks: dict[str, str] = {}
    hardlinks: dict[str, str] = {}
    meta: Optional[bytes] = None
    metas: list[str] = []
    for entry in _walk(path, limits):
        info, parts = entry.info, entry.parts
        if not parts:
            continue  # the "./" folder entry of `tar -C dir -czf x.tar.gz .`
        if parts[0] not in tops:
            tops.append(parts[0])
            if len(tops) > 1:
                raise InvalidArtifact(
                    f"the package has more than one top-level folder ({', '.join(tops)}): "
                    "a package tarball holds exactly one folder, the package",
                )
        if len(parts) == 1 and not info.isdir():
            raise InvalidArtifact(
                f"{entry.path!r} is a file at the top level: everything must be inside the "
                "package folder",
                member=entry.path,
            )
        if not info.isdir():
            if entry.path in seen:
                raise InvalidArtifact(f"member {entry.path!r} appears twice", member=entry.path)
            seen.add(entry.path)
        if info.issym():
            symlinks[entry.path] = info.linkname
        elif info.islnk():
            hardlinks[entry.path] = info.linkname
        if parts[-1] == META_FILE:
            metas.append(entry.path)
            _one_meta(tops[0], metas)
            if len(parts) == 2:
                if not info.isreg():
                    raise InvalidArtifact(f"{entry.path} must be a regular file", member=entry.path)
                meta = entry.read(META_MAX_BYTES, entry.path)
    if not tops:
        raise InvalidArtifact("the archive is empty: expected one package folder")
    top = tops[0]
    _check_links(top, symlinks, hardlinks)
    if meta is None:
        found = f" (found {', '.join(metas)} instead)" if metas else ""
        raise InvalidArtifact(
            f"{META_FILE} is missing: expected it at {top}/{META_FILE}{found}",
            expected=f"{top}/{META_FILE}",
        )
    return top, meta


def _one_meta(top: str, metas: list[str]) -> None:
    """Refuse a second package-meta-data.xml anywhere: NSO reads only the top one, but a
    reader that takes the first it meets (an older agent, a script) would see another package,
    and its name would reach the NSO CLI."""
    if len(metas) > 1:
        raise AmbiguousPackage(
            f"the package has more than one {META_FILE} ({', '.join(metas)}): only "
            f"{top}/{META_FILE} may exist, so that every reader sees the same package; remove "
            "the others and rebuild the package",
            members=sorted(metas),
        )


def _local(tag: Any) -> Optional[str]:
    """Local name of a tag in the packages namespace or in no namespace; else None."""
    if not isinstance(tag, str):
        return None  # comments and processing instructions
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return local if ns == NCS_PACKAGES_NS else None
    return tag


def _children(element: Element, name: str) -> list[Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: Element, name: str) -> Optional[str]:
    for child in _children(element, name):
        text = (child.text or "").strip()
        return text or None
    return None


def _strip_prefix(text: str) -> str:
    # ElementTree does not keep the xmlns:prefix declarations, so `id:router-nc-1.0` is
    # resolved by dropping the prefix: the identity name is what NSO shows as the ned-id.
    return text.split(":", 1)[1] if ":" in text else text


def parse_package_meta(data: bytes) -> PackageMeta:
    """Parse package-meta-data.xml bytes (no DTDs, no entities) into a PackageMeta."""
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise InvalidArtifact(
            f"{META_FILE} uses XML features that are not allowed ({type(exc).__name__})"
        ) from None
    except SafeET.ParseError as exc:
        raise InvalidArtifact(f"{META_FILE} is not well-formed XML: {exc}") from None
    if _local(root.tag) != "ncs-package":
        raise InvalidArtifact(
            f"{META_FILE} has root element {root.tag!r}, expected ncs-package in namespace "
            f"{NCS_PACKAGES_NS}"
        )
    name, version = _text(root, "name"), _text(root, "package-version")
    if name is None or version is None:
        missing = "name" if name is None else "package-version"
        raise InvalidArtifact(f"{META_FILE} has no <{missing}>: rebuild the package")
    meta = PackageMeta(name=name, version=version, description=_text(root, "description"))
    for key, target in (
        ("ncs-min-version", meta.ncs_min_versions),
        ("ncs-max-version", meta.ncs_max_versions),
    ):
        target.extend((el.text or "").strip() for el in _children(root, key))
    for req in _children(root, "required-package"):
        meta.required_packages.append(
            {
                "name": _text(req, "name"),
                "min_version": _text(req, "min-version"),
                "max_version": _text(req, "max-version"),
            }
        )
    for comp in _children(root, "component"):
        kind = next((_local(c.tag) for c in comp if _local(c.tag) in COMPONENT_TYPES), None)
        meta.components.append({"name": _text(comp, "name"), "type": kind})
        for ned in _children(comp, "ned"):
            for el in ned.iter():
                text = (el.text or "").strip()
                if _local(el.tag) == "ned-id" and text:
                    ned_id = _strip_prefix(text)
                    if ned_id not in meta.ned_ids:
                        meta.ned_ids.append(ned_id)
    return meta


def check_package_meta(meta: PackageMeta, parsed: ParsedName) -> None:
    """The file name and package-meta-data.xml must tell the same story, and the metadata
    must not contradict itself (the rules: compatibility.py)."""
    says = f"{meta.name}-{meta.version}"
    if says != parsed.remainder:
        raise MetadataMismatch(
            f"the file name says {parsed.remainder!r} but {META_FILE} says name {meta.name!r} "
            f"version {meta.version!r}: rename the file to "
            f"ncs-{parsed.nso_version}-{says}.tar.gz, or fix {META_FILE} and rebuild",
            filename=parsed.remainder,
            metadata=says,
        )
    try:
        build = PackageBuild.from_meta(parsed.filename, parsed.nso_version, meta.to_json())
    except ValueError as exc:
        raise InvalidArtifact(str(exc)) from None
    problems = build.metadata_problems()
    if problems:
        raise MetadataMismatch("; ".join(problems), prefix=str(parsed.nso_version))


def inspect_package(path: Path, parsed: ParsedName, limits: ArchiveLimits) -> PackageMeta:
    """Check a package tarball and return what its package-meta-data.xml says."""
    top, data = _scan_package(path, limits)
    meta = parse_package_meta(data)
    meta.top_folder = top
    check_package_meta(meta, parsed)
    return meta


# --------------------------------------------------------------------------- patches


def _check_beam(entry: _Entry) -> None:
    # BEAM files are IFF containers: "FOR1", a big-endian length of what follows, "BEAM".
    handle = entry.tar.extractfile(entry.info)
    header = handle.read(12) if handle is not None else b""
    length = int.from_bytes(header[4:8], "big") if len(header) == 12 else 0
    if len(header) < 12 or header[:4] != b"FOR1" or header[8:] != b"BEAM":
        raise InvalidArtifact(
            f"{entry.path!r} is not a compiled Erlang module (no FOR1...BEAM header)",
            member=entry.path,
        )
    if length < 4 or length + 8 > entry.info.size:
        raise InvalidArtifact(
            f"{entry.path!r} is truncated: its header says {length + 8} bytes, "
            f"the file has {entry.info.size}",
            member=entry.path,
        )


def _beam_module(module: str) -> bool:
    return len(module) <= PATCH_MODULE_MAX and bool(BEAM_MODULE.fullmatch(module))


def inspect_patch_bundle(path: Path, parsed: ParsedName, limits: ArchiveLimits) -> PatchMeta:
    """Check a patch bundle: top-level `<module>.beam` files and an optional README."""
    meta = PatchMeta(patch_id=parsed.name or "", nso_version=str(parsed.nso_version))
    seen: set[str] = set()
    total = 0
    limits = replace(limits, max_unpacked_bytes=min(limits.max_unpacked_bytes, PATCH_UNPACKED_MAX))
    for count, entry in enumerate(_walk(path, limits), start=1):
        info, name = entry.info, entry.path
        if count > PATCH_MAX_MEMBERS:
            raise InvalidArtifact(
                f"the patch bundle has more than {PATCH_MAX_MEMBERS} members: agents take no more"
            )
        if not entry.parts:
            continue  # the "./" folder entry of `tar -C dir -czf x.tar.gz .`
        # Spelled as the agent reads it: `X` or `./X`, nothing tar would also resolve to X
        # (`.//X`, `X/`), which the agent refuses.
        spelled = info.name in (name, f"./{name}")
        if len(entry.parts) != 1 or not info.isreg() or not spelled:
            what = "nested in a folder"
            if info.isdir():
                what = "a folder"
            elif info.issym() or info.islnk():
                what = "a link"
            raise InvalidArtifact(
                f"patch bundle member {info.name!r} is {what}: "
                "a bundle holds only <module>.beam files and a README at the top level",
                member=info.name,
            )
        if name in seen:
            raise InvalidArtifact(f"patch bundle member {name!r} appears twice", member=name)
        seen.add(name)
        if name == "README":
            try:
                meta.readme = entry.read(README_MAX_BYTES, "README").decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArtifact("the patch bundle README is not UTF-8 text") from None
        elif name.endswith(".beam") and _beam_module(name[: -len(".beam")]):
            total += info.size
            if info.size > PATCH_BEAM_MAX_BYTES or total > PATCH_MAX_BYTES:
                raise InvalidArtifact(
                    f"patch bundle member {name!r} makes it too large: agents take .beam "
                    f"files of at most {PATCH_BEAM_MAX_BYTES >> 20} MiB, "
                    f"{PATCH_MAX_BYTES >> 20} MiB in all",
                    member=name,
                )
            _check_beam(entry)
            meta.modules.append(name[: -len(".beam")])
        else:
            raise InvalidArtifact(
                f"patch bundle member {name!r} is not allowed: only <module>.beam (module "
                f"matching [a-z][A-Za-z0-9_]*, at most {PATCH_MODULE_MAX} characters) and "
                "README",
                member=name,
            )
    if not meta.modules:
        raise InvalidArtifact("the patch bundle has no .beam files")
    return meta


# ---------------------------------------------------------------------- installers, NEDs


def _require_content(path: Path, what: str) -> int:
    size = path.stat().st_size
    if size == 0:
        raise InvalidArtifact(f"the {what} is empty: upload the complete file")
    return size


def inspect_installer(path: Path, parsed: ParsedName) -> dict[str, Any]:
    """Light check: non-empty; an `.installer.bin` is a self-extracting shell script."""
    _require_content(path, "installer")
    if not parsed.signed:
        with path.open("rb") as handle:
            if handle.read(2) != b"#!":
                raise InvalidArtifact(
                    "the installer does not start with '#!': an .installer.bin is a "
                    "self-extracting shell script; check that the right file was uploaded"
                )
    return {"arch": parsed.arch, "signed": parsed.signed}


def inspect_ned(path: Path, parsed: ParsedName) -> dict[str, Any]:
    """Non-empty only: the format of Cisco's signed NED bundles is not public."""
    _require_content(path, "NED")
    return {"signed": True}


def inspect_artifact(path: Path, parsed: ParsedName, limits: ArchiveLimits) -> dict[str, Any]:
    """Inspect by kind; return JSON-able metadata plus `name` and `version` for the row."""
    if parsed.kind == "package":
        package = inspect_package(path, parsed, limits)
        return {**package.to_json(), "name": package.name, "version": package.version}
    if parsed.kind == "patch":
        patch = inspect_patch_bundle(path, parsed, limits)
        return {**patch.to_json(), "name": patch.patch_id, "version": patch.nso_version}
    if parsed.kind == "installer":
        facts = inspect_installer(path, parsed)
    elif parsed.kind == "ned":
        facts = inspect_ned(path, parsed)
    else:
        raise InvalidArtifact(f"unknown artifact kind {parsed.kind!r}")
    return {**facts, "name": parsed.name, "version": parsed.version}
