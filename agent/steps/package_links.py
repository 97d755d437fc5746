"""The package links ``ncs-backup`` skips: ``backup`` saves the load path's links and the
files behind them beside the archive, ``recover`` and ``recover_packages`` put them back."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from agent import packages as pkgs
from agent import trust
from agent.errors import StepFailed
from agent.fsutil import fsync_dir, write_atomic
from agent.steps.context import StepContext

# What ``backup`` makes under /var/opt/ncs/backups, the only form an ``extra_dir`` may take.
EXTRA_DIR = r"nso-agent-job-\d+/package-links"


def _link_target(load_dir: Path, target: str) -> Path:
    return Path(os.path.normpath(load_dir / target)) if not os.path.isabs(target) else Path(target)


def save_package_links(ctx: StepContext, extra: Path) -> None:
    """Copy what ``ncs-backup`` skips: the load path's links and the files behind them."""
    paths = ctx.paths
    tmp = extra.with_name(f".{extra.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "packages").mkdir(parents=True)
    links: dict[str, str] = {}
    for name, target in pkgs.current_links(paths.load_dir).items():
        entry = paths.load_dir / name
        if target:
            source = _link_target(paths.load_dir, target)
            links[name] = paths.host_path(source)
        else:
            source = entry
            links[name] = ""
        if source.is_dir():
            shutil.copytree(source, tmp / "packages" / name, symlinks=True)
        elif source.exists():
            shutil.copy2(source, tmp / "packages" / name)
        else:
            ctx.log(f"warning: {name} points at {target}, which does not exist")
    write_atomic(tmp / "links.json", json.dumps({"links": links}, indent=2, sort_keys=True))
    shutil.rmtree(extra, ignore_errors=True)
    os.rename(tmp, extra)
    fsync_dir(extra.parent)
    ctx.log(f"saved {len(links)} package links and their files in {paths.host_path(extra)}")


def restore_package_links(ctx: StepContext, extra: Path) -> None:
    """Put back the package files and the exact set of links saved at backup.

    ``links.json`` is a file on the host: every entry is checked (a plain name, a target
    under the host root) before anything is copied, since a copy to where it points is a
    write as root.
    """
    paths = ctx.paths
    try:
        saved = json.loads((extra / "links.json").read_text())["links"]
    except (OSError, ValueError, KeyError) as exc:
        raise StepFailed(f"cannot read the saved package links in {extra}: {exc}") from None
    store = Path(os.path.realpath(paths.package_store))
    checked: list[tuple[str, str, Optional[Path]]] = []
    for name, host_target in sorted(saved.items()):
        if "/" in name or name in ("", ".", ".."):
            raise StepFailed(f"saved link name {name!r} in {extra}: not a file name, refused")
        if not host_target:
            checked.append((name, host_target, None))
            continue
        where = f"the target of saved link {name} ({paths.host_path(extra)}/links.json)"
        trust.under_root(paths, host_target, where)
        # A link may be named unlike its file (the guide: the `ncs-X.Y-` naming "is neither
        # required nor enforced"): it is put back under its own name.
        checked.append((name, host_target, paths.path(host_target)))
    links: dict[str, Path] = {}
    for name, host_target, link_to in checked:
        copy = extra / "packages" / name
        if link_to is None:  # a package folder or file that was no link: put it back as is
            ctx.log(f"note: {name} was not a link; it is restored as a link to the saved copy")
            links[name] = copy
            continue
        if Path(os.path.realpath(link_to.parent)) != store:
            ctx.log(f"note: {name} points outside /opt/ncs/packages ({host_target}): kept as is")
        elif not link_to.exists() and copy.is_file():
            shutil.copy2(copy, link_to)
            ctx.log(f"restored {host_target} from the saved copy")
        links[name] = link_to
    if pkgs.relink_named(paths.load_dir, links):
        ctx.log(f"relinked {paths.host_path(paths.load_dir)} to the {len(links)} saved links")
