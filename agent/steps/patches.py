"""Emergency patches (docs/patches.md): ``apply_patch`` copies a bundle's ``.beam`` files
into ``/opt/ncs/current/lib/ncs/patches/`` and has NSO load them; ``remove_patch`` takes
them out again. Both work on the running release only, and only on what NSO itself says it
runs: the server's word on the version is checked, never trusted.

Each step ends in the same state when run again: a file that already holds the bundle's
bytes is not written, and ``load-modules`` runs only when something changed or NSO does not
list the modules as the step wants them. Either way NSO's own listing confirms the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from agent import patch_bundle, trust
from agent.errors import StepFailed
from agent.fsutil import fsync_dir, write_atomic
from agent.nso import STARTED
from agent.steps.context import StepContext

PATCHES = "/opt/ncs/current/lib/ncs/patches"


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

    def load(self, what: str) -> dict[str, patch_bundle.LoadedPatch]:
        """``load-modules``; StepFailed with NSO's reasons when one of this patch's modules
        failed (another module's failure is logged: it is not this step's)."""
        ctx = self.ctx
        failures = ctx.nso.load_patch_modules()
        ours = {m: why for m, why in failures.items() if m in self.modules}
        for module in sorted(set(failures) - set(ours)):
            ctx.log(f"NSO could not load {module}, which is not this patch's: {failures[module]}")
        if ours:
            raise StepFailed(
                f"NSO did not load {what}: "
                + "; ".join(f"{m}: {why}" for m, why in sorted(ours.items()))
            )
        return ctx.nso.loaded_patches()


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
    patch = _Patch(ctx)
    folder = patch.check_release()
    beams = patch.bundle()
    before = _before_apply(ctx, folder, patch.modules)
    written = [m for m in patch.modules if _existing(folder, m) != beams[m]]
    for module in written:
        # A temp file beside it, fsynced, renamed over it: NSO never reads half a module.
        dest = folder / f"{module}.beam"
        write_atomic(
            dest, beams[module], mode=0o644, like=dest if before[module] is not None else None
        )
        ctx.log(f"wrote {ctx.paths.host_path(dest)} ({len(beams[module])} bytes)")
    # NSO's listing is asked first only when no file changed: then it alone says whether
    # NSO runs the patch already.
    loaded = {} if written else ctx.nso.loaded_patches()
    changed = bool(written) or not all(patch.listed(loaded, m) for m in patch.modules)
    if changed:
        try:
            loaded = patch.load(f"patch {patch.id}")
        except StepFailed as exc:
            # Every module this step may have written goes back, also one an earlier attempt
            # wrote before the agent restarted (its bytes before are the ones saved then).
            changed_back = [m for m in patch.modules if _existing(folder, m) != before[m]]
            reloaded = _put_back(ctx, folder, {m: before[m] for m in changed_back})
            raise StepFailed(
                f"{exc}; the files it replaced were put back"
                + (
                    " and loaded"
                    if reloaded
                    else ", but NSO did not load them all again (see the log): "
                    "'ncs-state patches load-modules' on the host, or restart NSO"
                )
            ) from None
    else:
        ctx.log(f"every module of patch {patch.id} is there and loaded already: nothing to do")
    missing = [m for m in patch.modules if not patch.listed(loaded, m)]
    if missing:
        raise StepFailed(
            f"after load-modules NSO does not list {', '.join(missing)} with patch {patch.id} "
            "('show ncs-state patches'): check ncs.log on the host"
        )
    shutil.rmtree(_undo_dir(ctx), ignore_errors=True)
    return {"modules": patch.modules, "changed": changed}


def remove_patch(ctx: StepContext) -> dict[str, Any]:
    patch = _Patch(ctx)
    folder = patch.check_release()
    beams = patch.bundle()
    before = {m: _existing(folder, m) for m in patch.modules}
    # A file with other bytes is another build of the module (a later patch): not ours.
    kept = [m for m in patch.modules if before[m] is not None and before[m] != beams[m]]
    for module in kept:
        ctx.log(f"{module}.beam holds another build than patch {patch.id}'s: left alone")
    ours = [m for m in patch.modules if m not in kept]
    removed = [m for m in ours if before[m] is not None]
    for module in removed:
        os.unlink(folder / f"{module}.beam")
        ctx.log(f"removed {ctx.paths.host_path(folder / f'{module}.beam')}")
    if removed:
        fsync_dir(folder)
    loaded = {} if removed else ctx.nso.loaded_patches()
    changed = bool(removed) or any(patch.listed(loaded, m) for m in ours)
    if changed:
        loaded = patch.load(f"the patches folder after removing patch {patch.id}")
    still = [m for m in ours if patch.listed(loaded, m)]
    if still:
        raise StepFailed(
            f"NSO still lists {', '.join(still)} of patch {patch.id} after load-modules "
            "('show ncs-state patches'): a restart of NSO unloads them; check ncs.log"
        )
    return {"modules": ours, "kept": kept, "changed": changed}


def _undo_dir(ctx: StepContext) -> Path:
    return ctx.config.state_path / "patch-undo" / f"job-{ctx.job_id}-step-{int(ctx.step['id'])}"


def _before_apply(ctx: StepContext, folder: Path, modules: list[str]) -> dict[str, Optional[bytes]]:
    """What each module's file held before this step first wrote any: read now on the first
    attempt and saved under the agent's state folder (journaled) before a byte is written;
    read from there on a later attempt, when the folder may hold what the first one wrote."""
    saved = _undo_dir(ctx)
    if ctx.journal.fact("patch_undo_saved"):
        return {
            m: (saved / f"{m}.beam").read_bytes() if (saved / f"{m}.beam").exists() else None
            for m in modules
        }
    before = {m: _existing(folder, m) for m in modules}
    if saved.exists():
        shutil.rmtree(saved)  # a save the journal never recorded: incomplete, made again
    saved.mkdir(parents=True, mode=0o700)
    for module, data in before.items():
        if data is not None:
            write_atomic(saved / f"{module}.beam", data, mode=0o600)
    fsync_dir(saved)
    ctx.journal.update("patch_undo_saved", patch_undo_saved=True)
    return before


def _put_back(ctx: StepContext, folder: Path, before: dict[str, Optional[bytes]]) -> bool:
    """Undo a failed apply: each written module's previous bytes back (or the file gone),
    then load-modules again, so NSO runs what it ran before. False when NSO did not load
    them all again."""
    for module, data in before.items():
        dest = folder / f"{module}.beam"
        if data is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
        else:
            write_atomic(dest, data, like=dest)
    fsync_dir(folder)
    failures = ctx.nso.load_patch_modules()
    if failures:
        ctx.log("load-modules after putting the files back: " + "; ".join(failures.values()))
    return not failures
