"""Emergency patches (docs/patches.md): ``apply_patch`` copies a bundle's ``.beam`` files
into ``/opt/ncs/current/lib/ncs/patches/`` and has NSO load them; ``remove_patch`` takes
them out again. Both work on the running release only, and only on what NSO itself says it
runs: the server's word on the version is checked, never trusted.

Each step ends in the same state when run again: a file that already holds the bundle's
bytes is not written, and ``load-modules`` runs only when the step changes a file (judged
against what the folder held before its first attempt, saved with NSO's listing then), NSO
does not list the modules as the step wants them, or the agent cannot tell that NSO runs
these very bytes (the ledger of what it loaded: NSO lists no checksum). Either way NSO's own listing confirms
the end. An apply that fails after its first write puts the files back and checks NSO's
listing against the one saved; its failure says ``changed`` unless the node is as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent import patch_bundle, release_signature, trust
from agent.errors import AgentError, StepFailed
from agent.fsutil import fsync_dir, write_atomic
from agent.journal import write_json_atomic
from agent.nso import STARTED
from agent.steps.context import StepContext

PATCHES = "/opt/ncs/current/lib/ncs/patches"
# Under the agent's state folder: the bytes of each module NSO was seen running after a load
# this agent ran (`_loaded_by_us`).
LOADED_LEDGER = "patches-loaded.json"
# How long the files a failed apply could not put back are kept (docs/patches.md).
UNDO_KEEP_DAYS = 30
# The random part of a temporary file's name (tempfile.mkstemp, as write_atomic makes it).
_TEMPORARY = re.compile(r"[a-z0-9_]{8}")


class _Patch:
    """The step's patch, every parameter checked, and the running release it goes into."""

    def __init__(self, ctx: StepContext) -> None:
        params = ctx.params
        self.ctx = ctx
        self.vsn = trust.nso_version(params.get("nso_version"), "nso_version")
        self.id = patch_bundle.patch_id(params.get("patch_id"), "patch_id")
        self.modules = patch_bundle.modules(params)
        self.artifact = trust.artifact(
            params.get("patch"),
            "patch",
            lambda v, w: patch_bundle.bundle_file(v, w, self.vsn, self.id),
        )

    def check_release(self) -> Path:
        """NSO runs exactly the bundle's release, from ``current``: the patches folder, under
        the host root. Refused (nothing done) otherwise."""
        ctx, vsn = self.ctx, self.vsn
        state = ctx.nso.state()
        if state != STARTED:
            raise StepFailed(
                f"NSO is {state}, not started: a patch is loaded into a running NSO. Start "
                "NSO and roll the patch out again; nothing was done"
            )
        running = ctx.nso.show_ncs_state_version()
        if running != vsn:
            raise StepFailed(
                f"patch {self.id} is built for NSO {vsn} and NSO here runs {running}: refused, "
                "nothing was done. Roll out the build of the patch for the running release"
            )
        current = ctx.nso.current_version()
        if current != vsn:
            raise StepFailed(
                f"NSO runs {vsn} but {ctx.paths.host_path(ctx.paths.current)} points at "
                f"ncs-{current}: an upgrade is half way; finish or recover it first. Nothing "
                "was done"
            )
        folder = trust.under_root(ctx.paths, PATCHES, "the patches folder")
        release = Path(os.path.realpath(ctx.paths.release_dir(vsn)))
        if release not in folder.parents:
            raise StepFailed(
                f"{PATCHES} resolves to {folder}, outside {ctx.paths.host_path(release)}: "
                "refused; nothing was done"
            )
        if not folder.is_dir():
            if not folder.parent.is_dir():
                raise StepFailed(
                    f"{ctx.paths.host_path(folder.parent)} is missing: this is no NSO "
                    f"{vsn} installation the agent knows; nothing was done"
                )
            folder.mkdir(mode=0o755)
        return folder

    def bundle(self) -> dict[str, bytes]:
        """The bundle's modules, downloaded, verified and read member by member; they must
        be the ones the step names."""
        ctx = self.ctx
        path = ctx.require_downloader().fetch(
            self.artifact, ctx.config.downloads_dir / self.artifact.filename
        )
        try:
            found = patch_bundle.read_bundle(path)
        finally:
            # Read once, never extracted: the next attempt downloads it again if need be.
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if sorted(found) != sorted(self.modules):
            raise StepFailed(
                f"{self.artifact.filename} holds {', '.join(sorted(found))}, the step names "
                f"{', '.join(sorted(self.modules))}: refused, nothing was written. Check the "
                "artifact on the server"
            )
        return found

    def listed(self, loaded: dict[str, patch_bundle.LoadedPatch], module: str) -> bool:
        """NSO lists ``module`` from this patch (when NSO prints no patch id, listed at all)."""
        row = loaded.get(module)
        return row is not None and row.patch_id in (None, self.id)

    def unlisted(self, loaded: dict[str, patch_bundle.LoadedPatch]) -> list[str]:
        """The patch's modules NSO does not list from this patch."""
        return [m for m in self.modules if not self.listed(loaded, m)]

    def load(
        self, what: str, modules: Optional[list[str]] = None
    ) -> dict[str, patch_bundle.LoadedPatch]:
        """``load-modules``; StepFailed with NSO's reasons when one of ``modules`` (default:
        this patch's) failed. Another module's failure is logged: it is not this step's."""
        ctx = self.ctx
        ours = self.own_failures(ctx.nso.load_patch_modules(), modules or self.modules)
        if ours:
            raise StepFailed(
                f"NSO did not load {what}: "
                + "; ".join(f"{m}: {why}" for m, why in sorted(ours.items()))
            )
        return ctx.nso.loaded_patches()

    def own_failures(self, failures: dict[str, str], modules: list[str]) -> dict[str, str]:
        """The load-modules failures of ``modules``; the others are logged and left out."""
        for module in sorted(set(failures) - set(modules)):
            self.ctx.log(
                f"NSO could not load {module}, which this step does not change: {failures[module]}"
            )
        return {m: why for m, why in failures.items() if m in modules}


def _existing(folder: Path, module: str) -> Optional[bytes]:
    """The bytes of ``<module>.beam`` in the patches folder; None when there is none. A link
    or anything but a regular file is refused: the agent writes only plain files there."""
    path = folder / f"{module}.beam"
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        raise StepFailed(
            f"{path.name} in the patches folder is not a regular file (a link or a folder): "
            "refused, nothing was written; look at it by hand"
        )
    return path.read_bytes()


def apply_patch(ctx: StepContext) -> dict[str, Any]:
    applied = ctx.journal.fact("patch_applied")
    if isinstance(applied, dict):
        # The agent stopped after the step succeeded and before its report was saved: the
        # undo save is gone, so the step must not be worked out again from it (every file
        # would count as new, and a failure would "put back" no file at all). Nothing is
        # fetched or written: only NSO's listing is read.
        return _applied_before(ctx, _Patch(ctx), applied.get("changed") is True)
    # What an earlier attempt of this step did before the agent stopped is this step's
    # change too: a rerun that fails before it can look (NSO stopped meanwhile, the bundle
    # pulled) must not call the node unchanged.
    with _earlier_attempt(ctx, "apply", ctx.journal.fact("patch_changing") is True):
        # An agent that holds the release manager's key loads only a bundle that key
        # signed: a server in other hands could otherwise load any module into NSO.
        release_signature.check_patch(ctx.config, ctx.params, "this patch")
        patch = _Patch(ctx)
        folder = patch.check_release()
        _prune_undo_saves(ctx)
        _sweep_temporary_files(ctx, folder, patch.modules)
        beams = patch.bundle()
    before = _before_apply(ctx, folder, patch.modules)
    # Decided from what the folder held and NSO listed before the first attempt, not from
    # the folder now: after a crash it holds that attempt's bytes, which NSO may not have
    # loaded yet (or loaded, without the report getting out).
    touched = [m for m in patch.modules if before.files[m] != beams[m]]
    changed = bool(touched) or not all(patch.listed(before.listed or {}, m) for m in patch.modules)
    for module in touched:
        row = (before.listed or {}).get(module)
        # Whose build a file held can be told only when NSO shows patch ids.
        owner = row.patch_id if row is not None and before.files[module] is not None else None
        if owner not in (None, patch.id):
            ctx.log(
                f"{module}.beam replaces the build of patch {owner}: "
                f"removing patch {patch.id} later does not bring that one back"
            )
    if changed:
        ctx.journal.update("patch_changing", patch_changing=True)
    ran_load = False
    # From the first write on, any failure (NSO's answer, a lost CLI session, the disk)
    # ends in _undo_apply: the node goes back as it was, or the report says it did not.
    try:
        for module in touched:
            dest = folder / f"{module}.beam"
            if _existing(folder, module) == beams[module]:
                continue  # an earlier attempt of this step wrote it
            # A temp file beside it, fsynced, renamed over it: NSO never reads half a module.
            like = dest if before.files[module] is not None else None
            write_atomic(dest, beams[module], mode=0o644, like=like)
            ctx.log(f"wrote {ctx.paths.host_path(dest)} ({len(beams[module])} bytes)")
        # NSO lists a module by name, release and compile time, not by its bytes: another
        # build of it in the folder (copied by hand, or written by a cancelled attempt that
        # never loaded it) looks loaded, and without a patch id column any build does. So
        # the folder is loaded unless this agent loaded these very bytes and NSO still lists
        # them as it did then; a row that moves then says NSO ran another build.
        if changed or not _loaded_by_us(ctx, before.listed or {}, beams):
            if not changed:
                # NSO may run another build after this load: a rerun that cannot look must
                # not call the node unchanged.
                ctx.journal.update("patch_changing", patch_changing=True)
            ran_load = True
            loaded = patch.load(f"patch {patch.id}")
        else:
            loaded = ctx.nso.loaded_patches()
        if not changed:
            moved = [m for m in patch.modules if not _same_row(loaded, before.listed or {}, m)]
            changed = bool(moved)
            ctx.log(
                f"NSO ran another build of {', '.join(moved)} than the patches folder holds: "
                "it loads this patch's now"
                if moved
                else f"every module of patch {patch.id} is there and loaded already: nothing to do"
            )
        missing = patch.unlisted(loaded)
        if missing:
            raise StepFailed(
                f"after load-modules NSO does not list {', '.join(missing)} with patch "
                f"{patch.id} ('show ncs-state patches'): check ncs.log on the host"
            )
    except Exception as exc:
        raise _undo_apply(ctx, patch, folder, before, beams, touched, ran_load, exc) from exc
    # Recorded before the undo save goes: a rerun of this step then reports this outcome.
    ctx.journal.update("patch_applied", patch_applied={"changed": changed})
    _note_loaded(ctx, loaded, beams)
    shutil.rmtree(_undo_dir(ctx), ignore_errors=True)
    return {"modules": patch.modules, "changed": changed}


def _same_row(
    now: dict[str, patch_bundle.LoadedPatch], before: dict[str, patch_bundle.LoadedPatch], m: str
) -> bool:
    """NSO lists ``m`` now as it did before: the same row, the compile time aside when the
    row saved before has none (kept by an older nso-agent)."""
    was, row = before.get(m), now.get(m)
    if was is None or row is None:
        return was is row
    return row == was or (was.built is None and dataclasses.replace(row, built=None) == was)


def _ledger_path(ctx: StepContext) -> Path:
    return ctx.config.state_path / LOADED_LEDGER


def _ledger_entry(data: bytes, row: patch_bundle.LoadedPatch) -> dict[str, Any]:
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "row": [row.version, row.patch_id, row.built],
    }


def _loaded_by_us(
    ctx: StepContext, listed: dict[str, patch_bundle.LoadedPatch], beams: dict[str, bytes]
) -> bool:
    """Whether this agent had NSO load each of ``beams`` and NSO lists each as it did then
    (the ledger `_note_loaded` keeps); False when unsure (no ledger, an unreadable one)."""
    try:
        ledger = json.loads(_ledger_path(ctx).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(ledger, dict) and all(
        m in listed and ledger.get(m) == _ledger_entry(data, listed[m]) for m, data in beams.items()
    )


def _note_loaded(
    ctx: StepContext, loaded: dict[str, patch_bundle.LoadedPatch], beams: dict[str, bytes]
) -> None:
    """Keep, across steps, which bytes of each module NSO was seen running and the row it
    listed them with (`_loaded_by_us`). Losing it costs one load-modules, so a failure to
    write it is logged, not raised: the patch is on."""
    path = _ledger_path(ctx)
    try:
        ledger = json.loads(path.read_text())
    except (OSError, ValueError):
        ledger = {}
    if not isinstance(ledger, dict):
        ledger = {}
    ledger.update({m: _ledger_entry(data, loaded[m]) for m, data in beams.items() if m in loaded})
    try:
        write_json_atomic(path, ledger)
    except OSError as exc:
        ctx.log(f"could not keep {path} ({exc}): the next apply of these modules loads them again")


def _applied_before(ctx: StepContext, patch: _Patch, changed: bool) -> dict[str, Any]:
    """A rerun of an apply that had succeeded (``changed``: its outcome): NSO must still
    list every module. A failure says ``changed`` as that attempt did."""
    earlier = (
        f"an earlier attempt of this step applied patch {patch.id} (the agent stopped "
        "before its report)"
    )
    try:
        missing = patch.unlisted(ctx.nso.loaded_patches())
    except Exception as exc:
        raise StepFailed(
            f"{_reason(ctx, exc)}; {earlier}, and NSO's listing could not be read to confirm "
            "it: check 'show ncs-state patches' on the host",
            result={"changed": changed},
        ) from exc
    if missing:
        raise StepFailed(
            f"{earlier}, and NSO now does not list {', '.join(missing)} ('show ncs-state "
            "patches'): check ncs.log and the patches folder on the host, then roll the "
            "patch out again",
            result={"changed": changed},
        )
    shutil.rmtree(_undo_dir(ctx), ignore_errors=True)
    ctx.log(f"an earlier attempt of this step applied patch {patch.id}: nothing left to do")
    return {"modules": patch.modules, "changed": changed}


@contextlib.contextmanager
def _earlier_attempt(ctx: StepContext, what: str, began: bool) -> Iterator[None]:
    """Checks before an attempt changes anything: a failure says ``changed`` when an
    earlier attempt of this step had begun changing the node (``began``)."""
    try:
        yield
    except Exception as exc:
        if not began:
            raise
        raise StepFailed(
            f"{_reason(ctx, exc)}; an earlier attempt of this step (before the agent "
            f"stopped) had begun to {what} the patch, and this one could not check or finish "
            "it: NSO may run it in part. Check 'show ncs-state patches' and the patches "
            "folder on the host"
            + (
                f" (the files from before the step are kept in {_undo_dir(ctx)})"
                if what == "apply"
                else ""
            )
            + ", then roll it out again",
            result={"changed": True},
        ) from exc


def _sweep_temporary_files(ctx: StepContext, folder: Path, modules: list[str]) -> None:
    """Take out the temporary files (write_atomic's ``.<module>.beam.XXXXXXXX``) an attempt
    killed in the middle of a write left beside this patch's modules."""
    for module in modules:
        for leftover in folder.glob(f".{module}.beam.*"):
            suffix = leftover.name[len(module) + 7 :]
            with contextlib.suppress(FileNotFoundError):
                if _TEMPORARY.fullmatch(suffix) and stat.S_ISREG(leftover.lstat().st_mode):
                    leftover.unlink()
                    ctx.log(f"removed {ctx.paths.host_path(leftover)}, left by a write cut short")


def remove_patch(ctx: StepContext) -> dict[str, Any]:
    # What an earlier attempt of this step did before the agent stopped (took files out,
    # had NSO unload them) is this step's change too: a rerun that finds nothing left to
    # do, or fails before it can look, must still report it, or the server calls a node it
    # unpatched unchanged.
    earlier = ctx.journal.fact("patch_removal_began", False) is True
    with _earlier_attempt(ctx, "remove", earlier):
        patch = _Patch(ctx)
        folder = patch.check_release()
        _sweep_temporary_files(ctx, folder, patch.modules)
        beams = patch.bundle()
    before = {m: _existing(folder, m) for m in patch.modules}
    # A file with other bytes is another build of the module (a later patch): not ours.
    kept = [m for m in patch.modules if before[m] is not None and before[m] != beams[m]]
    for module in kept:
        ctx.log(f"{module}.beam holds another build than patch {patch.id}'s: left alone")
    ours = [m for m in patch.modules if m not in kept]
    removed = [m for m in ours if before[m] is not None]
    gone: list[str] = []
    ran_load = False
    try:
        _refuse_kept_but_running(ctx, patch, kept)
        if removed:
            ctx.journal.update("patch_removal", patch_removal_began=True)
        for module in removed:
            os.unlink(folder / f"{module}.beam")
            gone.append(module)
            ctx.log(f"removed {ctx.paths.host_path(folder / f'{module}.beam')}")
        if removed:
            fsync_dir(folder)
        loaded = {} if removed else ctx.nso.loaded_patches()
        to_load = bool(removed) or any(patch.listed(loaded, m) for m in ours)
        if to_load and not removed:
            # NSO still lists a module whose file is gone: only load-modules unloads it.
            ctx.journal.update("patch_removal", patch_removal_began=True)
        changed = to_load or earlier
        if earlier and not to_load:
            ctx.log(f"an earlier attempt of this step removed patch {patch.id}: nothing left to do")
        if to_load:
            ran_load = True
            loaded = patch.load(f"the patches folder after removing patch {patch.id}", ours)
        still = [m for m in ours if patch.listed(loaded, m)]
        if still:
            raise StepFailed(
                f"NSO still lists {', '.join(still)} of patch {patch.id} after load-modules "
                "('show ncs-state patches'): a restart of NSO unloads them; check ncs.log"
            )
    except Exception as exc:
        raise _removal_failed(ctx, patch, gone, ran_load, earlier, exc) from exc
    return {"modules": ours, "kept": kept, "changed": changed}


def _refuse_kept_but_running(ctx: StepContext, patch: _Patch, kept: list[str]) -> None:
    """Before anything is taken out: a module whose file holds another build but which NSO
    still runs from this patch (by the patch id NSO prints) would stay loaded, and the
    removal would say the patch is off. Its file is not ours to delete, and load-modules
    would load that other build, which nobody asked for: the step stops and says so."""
    if not kept:
        return
    loaded = ctx.nso.loaded_patches()
    running = [m for m in kept if (row := loaded.get(m)) is not None and row.patch_id == patch.id]
    if running:
        names = ", ".join(f"{m}.beam" for m in running)
        raise StepFailed(
            f"NSO still runs {', '.join(running)} of patch {patch.id}, but {names} in the "
            "patches folder holds another build, not loaded yet (a later patch cut short, "
            "or a file copied by hand); load-modules would load that build. Find which "
            "patch it belongs to ('show ncs-state patches' and the folder on the host): "
            "roll that patch out, or take its file out, then roll this removal out again"
        )


def _removal_failed(
    ctx: StepContext, patch: _Patch, gone: list[str], ran_load: bool, earlier: bool, exc: Exception
) -> StepFailed:
    """The StepFailed for a removal that failed; ``changed`` once a file was taken out or
    NSO was asked to load the folder again, by this attempt or an ``earlier`` one: the
    server must not call the node unchanged."""
    reason = _reason(ctx, exc)
    if not gone and not ran_load and not earlier:
        return StepFailed(reason, result={"changed": False})
    files = ", ".join(f"{m}.beam" for m in gone) or "none of its files"
    return StepFailed(
        f"{reason}; the removal had taken {files} out of the patches folder"
        + (" and run load-modules" if ran_load else "")
        + (" (an earlier attempt of this step had begun removing it)" if earlier else "")
        + f", so NSO may run patch {patch.id} in part: check 'show ncs-state patches' and "
        "ncs.log on the host, then roll the removal out again (or the patch, to have it back)",
        result={"changed": True},
    )


def _reason(ctx: StepContext, exc: BaseException) -> str:
    """What went wrong, for the report: the agent's own errors say it themselves; anything
    else (a disk error, a bug) is named by its type, its traceback kept in the step's log."""
    if isinstance(exc, AgentError):
        return str(exc)
    ctx.log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return f"nso-agent error: {type(exc).__name__}: {exc}"


def _undo_dir(ctx: StepContext) -> Path:
    return ctx.config.state_path / "patch-undo" / f"job-{ctx.job_id}-step-{int(ctx.step['id'])}"


def _prune_undo_saves(ctx: StepContext) -> None:
    """Take out the undo saves of other steps older than UNDO_KEEP_DAYS. A save outlives
    its step only when the put-back failed: the operator was told where it is, and may need
    it for a while, not for ever (each holds a copy of every module the step replaced)."""
    root = ctx.config.state_path / "patch-undo"
    mine = _undo_dir(ctx)
    oldest = time.time() - UNDO_KEEP_DAYS * 86400
    with contextlib.suppress(FileNotFoundError):
        for save in root.iterdir():
            try:
                info = save.lstat()
            except FileNotFoundError:
                continue
            if save == mine or not stat.S_ISDIR(info.st_mode) or info.st_mtime >= oldest:
                continue  # the agent makes only folders here: anything else is left alone
            shutil.rmtree(save, ignore_errors=True)
            if not os.path.lexists(save):
                ctx.log(f"removed {save}, an undo save older than {UNDO_KEEP_DAYS} days")


@dataclass
class _Before:
    """An apply's undo state, saved before its first attempt wrote a byte: what each
    module's file held (None: no file) and the rows NSO listed of the modules (None when
    an older nso-agent saved no listing)."""

    files: dict[str, Optional[bytes]]
    listed: Optional[dict[str, patch_bundle.LoadedPatch]]


def _before_apply(ctx: StepContext, folder: Path, modules: list[str]) -> _Before:
    """The folder's files and NSO's listing before this step first wrote any: read now on
    the first attempt and saved under the agent's state folder (journaled) before a byte is
    written; read from there on a later attempt, when the folder may hold what the first one
    wrote and NSO may run it."""
    saved = _undo_dir(ctx)
    if ctx.journal.fact("patch_undo_saved"):
        if not saved.is_dir():
            # Without it, what the folder held before is not known: "no file" would make
            # a put-back delete a module the node ran before the step.
            raise StepFailed(
                f"this step's undo save ({saved}) is gone, so what the patches folder held "
                "before its first attempt is not known: this attempt changed nothing, an "
                f"earlier one may have; check {folder} and 'show ncs-state patches' by hand"
            )
        files = {
            m: (saved / f"{m}.beam").read_bytes() if (saved / f"{m}.beam").exists() else None
            for m in modules
        }
        rows = ctx.journal.fact("patch_listed_before")
        listed = (
            {m: patch_bundle.LoadedPatch(m, *row) for m, row in rows.items()}
            if isinstance(rows, dict)
            else None
        )
        return _Before(files, listed)
    files = {m: _existing(folder, m) for m in modules}
    shown = ctx.nso.loaded_patches()
    listed = {m: shown[m] for m in modules if m in shown}
    if saved.exists():
        shutil.rmtree(saved)  # a save the journal never recorded: incomplete, made again
    saved.mkdir(parents=True, mode=0o700)
    for module, data in files.items():
        if data is not None:
            write_atomic(saved / f"{module}.beam", data, mode=0o600)
    fsync_dir(saved)
    rows = {m: [row.version, row.patch_id, row.built] for m, row in listed.items()}
    ctx.journal.update("patch_undo_saved", patch_undo_saved=True, patch_listed_before=rows)
    return _Before(files, listed)


def _undo_apply(
    ctx: StepContext,
    patch: _Patch,
    folder: Path,
    before: _Before,
    beams: dict[str, bytes],
    touched: list[str],
    ran_load: bool,
    exc: Exception,
) -> StepFailed:
    """After ``exc``, put the node back as it was before the step: the files from before
    back, load-modules again when one went back, then NSO's listing compared with the one
    saved before. The StepFailed to raise says ``exc`` and
    where the node stands; ``changed`` is false only when the node is verifiably back."""
    reason = _reason(ctx, exc)
    if not touched and not ran_load:
        # No attempt of this step had a file to write or had NSO load: nothing to undo.
        # Said in the journal before the save goes: a rerun would read a save the journal
        # still names, and gone, as "no file before" and delete the patch. Whether an
        # earlier attempt had NSO load (patch_changing) stays as it was.
        ctx.journal.update("patch_undo_dropped", patch_undo_saved=False)
        shutil.rmtree(_undo_dir(ctx), ignore_errors=True)
        return StepFailed(f"{reason}; nothing was changed", result={"changed": False})
    restored, problems = _restore_files(ctx, folder, before.files)
    if restored:
        problems += _load_again(ctx, patch)
    files_back, files = _folder_now(folder, patch, before.files, beams)
    try:
        shown: Optional[dict[str, patch_bundle.LoadedPatch]] = ctx.nso.loaded_patches()
    except Exception as listing_exc:
        problems.append(f"NSO's listing could not be read: {_reason(ctx, listing_exc)}")
        shown = None
    now = None if shown is None else {m: shown[m] for m in patch.modules if m in shown}
    back = (
        now is not None
        and before.listed is not None
        and set(now) == set(before.listed)
        and all(_same_row(now, before.listed, m) for m in now)
    )
    if not problems and files_back and back:
        # Said in the journal before the save goes: a rerun (the agent killed before its
        # report was kept) reads the folder, as it is again, not an empty save.
        ctx.journal.update("patch_undone", patch_undo_saved=False, patch_changing=False)
        shutil.rmtree(_undo_dir(ctx), ignore_errors=True)
        done = (
            "the files it replaced were put back and loaded" if restored else "nothing to put back"
        )
        return StepFailed(
            f"{reason}; {done}: the node is as it was before the step (NSO lists "
            f"{_listing(now, patch.modules)})",
            result={"changed": False},
        )
    if before.listed is None:
        problems.append("no listing from before the step to compare with (an older nso-agent)")
    return StepFailed(
        f"{reason}; "
        + "".join(f"{p}; " for p in problems)
        + f"the node is not as it was before the step: the patches folder holds {files}; NSO "
        f"lists {_listing(now, patch.modules)} (before the step: "
        f"{_listing(before.listed, patch.modules)}). Put the folder back as it was (the files "
        f"from before, if any, are kept in {_undo_dir(ctx)} for {UNDO_KEEP_DAYS} days), run 'ncs-state patches "
        "load-modules' on the host or restart NSO, and check ncs.log",
        result={"changed": True},
    )


def _restore_files(
    ctx: StepContext, folder: Path, files: dict[str, Optional[bytes]]
) -> tuple[list[str], list[str]]:
    """Each module's file back as it was (or gone); also one an earlier attempt wrote before
    the agent restarted. (modules put back, what could not be); one failing does not stop
    the others."""
    restored: list[str] = []
    problems: list[str] = []
    for module, data in files.items():
        dest = folder / f"{module}.beam"
        try:
            if _existing(folder, module) == data:
                continue
            if data is None:
                os.unlink(dest)
            else:
                write_atomic(dest, data, mode=0o644, like=dest)
        except Exception as exc:
            problems.append(f"{dest.name} could not be put back: {_reason(ctx, exc)}")
            continue
        restored.append(module)
        ctx.log(f"put back {ctx.paths.host_path(dest)} as it was before the step")
    if restored:
        fsync_dir(folder)
    return restored, problems


def _load_again(ctx: StepContext, patch: _Patch) -> list[str]:
    """load-modules after the put-back; what went wrong with this patch's modules (another
    module's failure is logged: it failed before the step too)."""
    try:
        failures = patch.own_failures(ctx.nso.load_patch_modules(), patch.modules)
    except Exception as exc:
        return [f"load-modules after putting the files back failed: {_reason(ctx, exc)}"]
    return [f"load-modules after putting the files back: {m}: {why}" for m, why in failures.items()]


def _folder_now(
    folder: Path, patch: _Patch, files: dict[str, Optional[bytes]], beams: dict[str, bytes]
) -> tuple[bool, str]:
    """Whether each module's file is as it was before the step, and the folder in words."""
    back, said = True, []
    for module in patch.modules:
        name = f"{module}.beam"
        try:
            now = _existing(folder, module)
        except (StepFailed, OSError):
            back = False
            said.append(f"{name} (not a regular file, or unreadable)")
            continue
        if now == files[module]:
            said.append(f"no {name}, as before" if now is None else f"{name} as before")
            continue
        back = False
        if now is None:
            said.append(f"no {name} (there was one before)")
        elif now == beams[module]:
            said.append(f"{name} of patch {patch.id}")
        else:
            said.append(f"{name} with bytes neither from before nor of patch {patch.id}")
    return back, ", ".join(said)


def _listing(rows: Optional[dict[str, patch_bundle.LoadedPatch]], modules: list[str]) -> str:
    """NSO's rows of ``modules`` in words, as 'show ncs-state patches' prints them."""
    if rows is None:
        return "unknown"
    if not rows:
        return f"none of {', '.join(modules)}"
    return ", ".join(
        " ".join(c for c in (m, rows[m].version, rows[m].patch_id, rows[m].built) if c)
        if m in rows
        else f"no {m}"
        for m in modules
    )
