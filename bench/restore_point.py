"""Cost of the restore point (taken while NSO is stopped: it is downtime) against the shell
tools an operator would use for the same guarantee, measured in the same run.

Run from the repository root:

    python bench/restore_point.py                  # 512 MiB CDB + 2000 small files, 3 runs
    python bench/restore_point.py --cdb-mib 64 --repeat 1

The agent's restore point (agent/restore_point.py) copies the stopped run directory and
/etc/ncs, hashing what it reads, fsyncs every file, then reads every copied byte back and
compares it with the hash of the source. The baseline does the same with coreutils:
`sha256sum` of every source file, `cp -a`, `sync`, `sha256sum -c` on the copy. Restoring is
compared (stage, then swap: the agent's two passes) with `sha256sum -c` of the copy plus
`cp -a` back. Each of ours runs in a child
process so its peak memory (ru_maxrss) is its own. Goals: at most 1.5x the baseline's time,
and memory that does not grow with the data (under 64 MiB). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchkit import BenchError, loadavg, run_benchmark
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.5
GOAL_RSS_MIB = 64
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from agent import restore_point as rp
from agent.config import HostPaths
paths = HostPaths(Path({root!r}))
began = time.perf_counter()
quiet = lambda *args: None
if {op!r} == "take":
    rp.take(paths, Path({dest!r}), "bench", quiet)
else:
    progress = {{}}
    rp.stage(paths, Path({dest!r}), "bench", progress, quiet, quiet)
    rp.swap(paths, Path({dest!r}), lambda area: Path({aside!r}) / area.rel, progress, quiet,
            lambda: None, quiet)
seconds = time.perf_counter() - began
print(json.dumps({{"seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def make_host(root: Path, cdb_mib: int, small_files: int) -> int:
    """A stopped NSO's run dir and config: one big CDB file, many small package files."""
    cdb = root / "var/opt/ncs/cdb"
    cdb.mkdir(parents=True)
    block = os.urandom(1 << 20)
    with open(cdb / "A.cdb", "wb") as fh:
        for i in range(cdb_mib):
            fh.write(block[i % 7 :] + block[: i % 7])
    state = root / "var/opt/ncs/state/packages-in-use.cur"
    for i in range(small_files):
        folder = state / f"pkg-{i // 100}" / "load-dir"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i}.fxs").write_bytes(os.urandom(4096))
    (root / "var/opt/ncs/backups").mkdir()
    (root / "etc/ncs").mkdir(parents=True)
    (root / "etc/ncs/ncs.conf").write_text("<ncs-config/>\n" * 200)
    (root / "etc/ncs/ncs.crypto_keys").write_text("AES256CFB128_KEY=" + "0" * 64 + "\n")
    total = 0
    for folder, _dirs, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def ours(root: Path, op: str, dest: Path, aside: Path) -> dict[str, float]:
    code = CHILD.format(repo=str(REPO), root=str(root), op=op, dest=str(dest), aside=str(aside))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"restore point {op} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def sh(script: str, cwd: Path) -> float:
    began = time.perf_counter()
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"baseline failed: {script}\n{out.stderr[-2000:]}")
    return time.perf_counter() - began


def baseline_take(root: Path, dest: Path) -> float:
    dest.mkdir(parents=True)
    return sh(
        f"find var/opt/ncs etc/ncs -path var/opt/ncs/backups -prune -o -type f -print0 "
        f"| xargs -0 sha256sum > {dest}/SHA256SUMS "
        f"&& mkdir -p {dest}/var/opt {dest}/etc "
        f"&& cp -a var/opt/ncs {dest}/var/opt/ && rm -rf {dest}/var/opt/ncs/backups "
        f"&& cp -a etc/ncs {dest}/etc/ && sync "
        f"&& (cd {dest} && sha256sum --quiet -c SHA256SUMS)",
        root,
    )


def baseline_restore(root: Path, copy: Path, aside: Path) -> float:
    aside.mkdir(parents=True)
    return sh(
        f"(cd {copy} && sha256sum --quiet -c SHA256SUMS) "
        f"&& mv var/opt/ncs/cdb var/opt/ncs/state etc/ncs {aside}/ "
        f"&& cp -a {copy}/var/opt/ncs/cdb {copy}/var/opt/ncs/state var/opt/ncs/ "
        f"&& cp -a {copy}/etc/ncs etc/ && sync",
        root,
    )


def body(args: argparse.Namespace) -> Callable[..., dict[str, Any]]:
    def run(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        root = work / "host"
        console.print(f"making a host: {args.cdb_mib} MiB CDB, {args.small_files} small files")
        size = make_host(root, args.cdb_mib, args.small_files)
        times: dict[str, list[float]] = {k: [] for k in ("take", "base_take", "rest", "base_rest")}
        rss: list[float] = []
        for i in range(args.repeat):
            # Alternate who goes first so neither always meets a warmer page cache.
            order = ["ours", "base"] if i % 2 == 0 else ["base", "ours"]
            for who in order:
                if who == "ours":
                    dest = root / f"var/opt/ncs/backups/job-{i}/restore-point"
                    took = ours(root, "take", dest, dest)
                    back = ours(root, "restore", dest, root / f"var/opt/ncs/backups/aside-{i}")
                    times["take"].append(took["seconds"])
                    times["rest"].append(back["seconds"])
                    rss += [took["maxrss_kib"] / 1024, back["maxrss_kib"] / 1024]
                    shutil.rmtree(root / f"var/opt/ncs/backups/job-{i}")
                    shutil.rmtree(root / f"var/opt/ncs/backups/aside-{i}")
                else:
                    copy = work / f"base-{i}"
                    times["base_take"].append(baseline_take(root, copy))
                    times["base_rest"].append(baseline_restore(root, copy, work / f"bx-{i}"))
                    shutil.rmtree(copy)
                    shutil.rmtree(work / f"bx-{i}")
        load.append(loadavg())
        med = {k: statistics.median(v) for k, v in times.items()}
        take_ratio = med["take"] / med["base_take"]
        rest_ratio = med["rest"] / med["base_rest"]
        peak = max(rss)
        table = Table(
            title=f"restore point of {size / (1 << 20):.0f} MiB (median of {args.repeat})"
        )
        for column in ("operation", "agent s", "shell tools s", "ratio", "goal", "result"):
            table.add_column(column, justify="right" if column != "operation" else "left")
        for name, key, ratio in (("take", "take", take_ratio), ("restore", "rest", rest_ratio)):
            table.add_row(
                name,
                f"{med[key]:.2f}",
                f"{med['base_' + key]:.2f}",
                f"{ratio:.2f}",
                f"<= {GOAL_RATIO}",
                "pass" if ratio <= GOAL_RATIO else "FAIL",
            )
        table.add_row(
            "peak memory",
            f"{peak:.0f} MiB",
            "",
            "",
            f"< {GOAL_RSS_MIB} MiB",
            "pass" if peak < GOAL_RSS_MIB else "FAIL",
        )
        console.print(table)
        mib_s = size / (1 << 20) / med["take"]
        console.print(f"the agent copies and proves {mib_s:.0f} MiB/s: NSO stays stopped that long")
        return {
            "benchmark": "restore_point",
            "data_mib": round(size / (1 << 20), 1),
            "runs": args.repeat,
            "take_s": round(med["take"], 3),
            "baseline_take_s": round(med["base_take"], 3),
            "take_ratio": round(take_ratio, 3),
            "restore_s": round(med["rest"], 3),
            "baseline_restore_s": round(med["base_rest"], 3),
            "restore_ratio": round(rest_ratio, 3),
            "peak_rss_mib": round(peak, 1),
            "take_mib_per_s": round(mib_s, 1),
            "goal_ratio": GOAL_RATIO,
            "goal_rss_mib": GOAL_RSS_MIB,
            "loadavg_start_end": load,
            "pass": take_ratio <= GOAL_RATIO and rest_ratio <= GOAL_RATIO and peak < GOAL_RSS_MIB,
        }

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdb-mib", type=int, default=512)
    parser.add_argument("--small-files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp-dir", default=None, help="where to build the host (default: /tmp)")
    args = parser.parse_args()
    return run_benchmark(console, "nso-bench-rp-", args.tmp_dir, body(args))


if __name__ == "__main__":
    sys.exit(main())
