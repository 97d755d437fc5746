"""How long NSO's slow operations take on a simulated host: one table of NOMINAL seconds.

Every duration is multiplied by the host's time scale (``HostConfig.scaled``) and slept by the
command that does the work (the installer, ``ncs-backup``, ``ncs --stop``,
``ncs --cdb-compact``, the daemon's start-up, ``nso-sim copy``), so a benchmark run at any
scale sees the same proportions. ``nso-sim timings [--json]`` prints the table.

The values are the simulator's own estimates for a mid-sized production host (no public
source gives them); a real installer is about 200 MiB, so ``install_per_mib`` matters there
while the simulated installers (a few KiB) take about ``install_base``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Timings:
    # sh nso-VSN.linux.ARCH.installer.bin --system-install: unpack and set up a release.
    install_base: float = 30.0
    install_per_mib: float = 2.0  # of the installer file
    # ncs-backup: archive /etc/ncs and the run dir.
    backup_base: float = 5.0
    backup_per_mib: float = 1.0  # of the data archived (before compression)
    # ncs --stop: close the subsystems and write CDB out, from the request until the exit.
    stop_base: float = 3.0
    # ncs --cdb-compact DIR: fold the write log into a snapshot.
    compact_base: float = 4.0
    compact_per_mib: float = 1.0  # of the CDB files before compaction
    # Start-up, "starting" (pre-phase0): read CDB and upgrade it to the packages.
    start_base: float = 5.0
    start_per_package: float = 2.0
    reload_per_package: float = 4.0  # more, with --with-package-reload
    start_per_100_leaves: float = 1.0
    start_per_log_entry: float = 0.05  # write-log entries since the last compaction
    # nso-sim copy (the guide's scp of the installer and the packages to a host).
    copy_base: float = 0.5  # the SSH connection
    copy_per_mib: float = 1.0
    # The commit queue pushing one item to the devices.
    commit_queue_item: float = 30.0

    def install(self, installer_bytes: int) -> float:
        return self.install_base + self.install_per_mib * installer_bytes / MIB

    def backup(self, data_bytes: int) -> float:
        return self.backup_base + self.backup_per_mib * data_bytes / MIB

    def compact(self, cdb_bytes: int) -> float:
        return self.compact_base + self.compact_per_mib * cdb_bytes / MIB

    def copy(self, nbytes: int) -> float:
        return self.copy_base + self.copy_per_mib * nbytes / MIB

    def start(self, packages: int, leaves: int, log_entries: int, reload: bool) -> float:
        return (
            self.start_base
            + self.start_per_package * packages
            + self.start_per_100_leaves * leaves / 100
            + self.start_per_log_entry * log_entries
            + (self.reload_per_package * packages if reload else 0.0)
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


TIMINGS = Timings()

# What each entry is, for ``nso-sim timings``.
DESCRIPTIONS = {
    "install_base": "installer --system-install",
    "install_per_mib": "  + per MiB of the installer file",
    "backup_base": "ncs-backup",
    "backup_per_mib": "  + per MiB of data archived",
    "stop_base": "ncs --stop",
    "compact_base": "ncs --cdb-compact",
    "compact_per_mib": "  + per MiB of CDB files",
    "start_base": "start-up (CDB load and upgrade)",
    "start_per_package": "  + per package",
    "reload_per_package": "  + per package, with package reload",
    "start_per_100_leaves": "  + per 100 CDB leaves",
    "start_per_log_entry": "  + per CDB write-log entry",
    "copy_base": "nso-sim copy (scp)",
    "copy_per_mib": "  + per MiB copied",
    "commit_queue_item": "commit queue, per item",
}


def tree_bytes(*paths: Path) -> int:
    """Bytes of the regular files under ``paths`` (symlinks are not followed)."""
    total = 0
    for top in paths:
        if top.is_file() and not top.is_symlink():
            total += top.stat().st_size
            continue
        for folder, _dirs, files in os.walk(top):
            for name in files:
                path = Path(folder) / name
                # One removed while we walk is not archived either.
                with contextlib.suppress(FileNotFoundError):
                    if not path.is_symlink():
                        total += path.stat().st_size
    return total
