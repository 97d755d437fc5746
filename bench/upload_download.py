"""Upload then download a large generated installer through gunicorn with local storage.

Run from the repository root:

    python bench/upload_download.py              # 1 GiB
    python bench/upload_download.py --size 128M  # quick try

Everything is measured in this one run, against baselines measured in the same run:

* upload throughput of `curl -T` into `PUT /api/v1/artifacts/<name>`, as a ratio to
  `sha256sum` on the same file (goal >= 0.7);
* download throughput of `curl` from `GET /api/v1/blobs/<sha256>`, as a ratio to Debian's
  nginx serving the same file to the same client (goal >= 0.8);
* the server's peak RSS growth (master + worker) during an upload (goal < 64 MiB).

Each throughput is the median of `--repeat` runs (default 5), page cache warm, and the
runs of a figure and of its baseline are interleaved so that both see the same machine.
The server runs as `nso-repo serve --workers 1`: a single worker process takes every
request, so the memory reading is that worker's (plus the idle master's), unambiguously.

Needs curl, sha256sum and nginx (`apt-get update && apt-get install -y nginx`); it installs
nothing itself. It stops what it started and removes its temporary files on exit,
on error and on Ctrl-C. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from benchkit import (
    BenchError,
    Started,
    free_port,
    loadavg,
    process_tree,
    run_benchmark,
    serve_repo,
    start,
    wait_http,
)
from rich.console import Console
from rich.table import Table

UPLOAD_GOAL = 0.7
DOWNLOAD_GOAL = 0.8
MEMORY_GOAL_MIB = 64
NGINX = Path("/usr/sbin/nginx")
BLOCK = 64 << 20
MIB = 1 << 20
MB = 1_000_000

# Wide enough for the table when the output goes to a file or a pipe.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


# ---------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    """`1073741824`, `128M`, `1G`, `1GiB`, `512MB` (binary units)."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        scale = units.get(raw[-1:], 1)
        value = int(float(raw[:-1]) * scale) if scale > 1 else int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 128M or 1G") from None
    if value < MIB:
        raise argparse.ArgumentTypeError("use at least 1M")
    return value


def human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of one subprocess run, with its captured output."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def generate(path: Path, size: int) -> None:
    """`#!/bin/sh` then random bytes: one 64 MiB random block, each copy stamped with its
    index so that no two blocks are equal."""
    block = bytearray(os.urandom(min(BLOCK, size)))
    block[:10] = b"#!/bin/sh\n"
    with open(path, "wb", buffering=0) as out:
        written = 0
        index = 0
        view = memoryview(block)
        while written < size:
            if index:
                block[:16] = index.to_bytes(16, "little")
            n = min(len(block), size - written)
            written += out.write(view[:n])
            index += 1


def warm(path: Path) -> None:
    """Read the file once so every measurement starts with it in the page cache."""
    buf = bytearray(8 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


STAMP_OFFSET = 4096


def stamp(path: Path, run: int) -> None:
    """Write the run number into the file in place: new bytes, same size, still cached."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, run.to_bytes(8, "little"), STAMP_OFFSET)
    finally:
        os.close(fd)


def hashlib_sha256(path: Path) -> float:
    """Seconds for Python's hashlib (OpenSSL) to hash the file: for reference only."""
    digest = hashlib.sha256()
    buf = bytearray(MIB)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- memory


def status_kib(pid: int, key: str) -> Optional[int]:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults, summed over `pids`."""
    seconds, faults = 0.0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        faults += int(fields[7])
        seconds += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds, faults


def tree_rss_kib(pids: list[int]) -> int:
    return sum(status_kib(p, "VmRSS") or 0 for p in pids)


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM (peak RSS) to the current RSS; needs to own the process or root."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class MemorySampler:
    """Sum of VmRSS over the server's process tree every `interval` s, in a thread."""

    master: int
    interval: float = 0.02
    before_kib: int = 0
    peak_kib: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def __enter__(self) -> MemorySampler:
        self.before_kib = tree_rss_kib(process_tree(self.master))
        self.peak_kib = self.before_kib
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            # The tree is read again each time: a worker restarted mid-upload still counts.
            rss = tree_rss_kib(process_tree(self.master))
            self.peak_kib = max(self.peak_kib, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_rss_kib(process_tree(self.master)))

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.before_kib) / 1024


# ---------------------------------------------------------------------------- processes


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_nginx(tmp: Path, root: Path, port: int) -> Started:
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, root=root, port=port))
    cmd = [str(NGINX), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    return start("nginx", cmd, tmp / "stdout.log")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    nginx = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True, check=False)
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return {
        "python": sys.version.split()[0],
        "gunicorn": version("gunicorn"),
        "nginx": nginx.stderr.strip().rpartition("/")[2],
        "curl": curl.stdout.split()[1] if curl.stdout else "?",
    }


# ---------------------------------------------------------------------------- runs


def median_rate(size: int, seconds: list[float]) -> float:
    return size / statistics.median(seconds) / MB


def best_rate(size: int, seconds: list[float]) -> float:
    return size / min(seconds) / MB


def run_sha256sum(path: Path) -> tuple[float, str]:
    seconds, done = timed(["sha256sum", str(path)])
    if done.returncode != 0:
        raise BenchError(f"sha256sum failed: {done.stderr.strip()}")
    return seconds, done.stdout.split()[0]


def run_upload(path: Path, url: str, token: str, out: Path) -> tuple[float, dict[str, Any]]:
    cmd = ["curl", "-sS", "-T", str(path)]
    cmd += ["-H", f"Authorization: Bearer {token}"]
    cmd += ["-H", "Content-Type: application/octet-stream"]
    cmd += ["-o", str(out), "-w", "%{http_code}", url]
    seconds, done = timed(cmd)
    body = out.read_text(errors="replace") if out.exists() else ""
    if done.returncode != 0 or done.stdout.strip() != "201":
        raise BenchError(
            f"upload to {url} failed: curl exit {done.returncode}, HTTP {done.stdout.strip()}, "
            f"{done.stderr.strip()} {body[:500]}"
        )
    return seconds, json.loads(body)


def run_download(url: str, size: int, token: Optional[str]) -> float:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    seconds, done = timed([*cmd, url])
    status, _, got = done.stdout.strip().partition(" ")
    if done.returncode != 0 or status != "200" or int(got or 0) != size:
        raise BenchError(
            f"download of {url} failed: curl exit {done.returncode}, HTTP {status}, "
            f"{got} of {size} bytes; {done.stderr.strip()}"
        )
    return seconds


# ---------------------------------------------------------------------------- main


def check_tools() -> None:
    missing = [tool for tool in ("curl", "sha256sum") if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: install them (apt-get install -y curl)")
    if not NGINX.exists():
        raise BenchError(
            f"{NGINX} is missing: the download baseline is Debian's nginx. Install it with:\n"
            "    apt-get update && apt-get install -y nginx"
        )


def measure(args: argparse.Namespace, work: Path, cleanup: list[Callable[[], None]]) -> dict:
    size: int = args.size
    repeat: int = args.repeat
    files = work / "files"
    files.mkdir()
    files.chmod(0o755)  # nginx's worker may run as an unprivileged user
    source = files / "nso-9.9.linux.x86_64.installer.bin"

    with console.status(f"generating {human(size)} in {work}"):
        start_gen = time.perf_counter()
        generate(source, size)
        source.chmod(0o644)
        warm(source)
    console.print(f"generated {source} ({human(size)}) in {time.perf_counter() - start_gen:.1f}s")

    # -- server: nso-repo serve, one worker, a fresh data dir on the same disk as the file:
    # the defaults, i.e. SQLite and local storage
    env = dict(NSO_REPO_STORAGE="local", NSO_REPO_ACCESS_LOG="-", NSO_REPO_LOG_LEVEL="info")
    with console.status("starting nso-repo serve"):
        served = serve_repo(work, cleanup, "uploader", env)
    server, base, token = served.started, served.base, served.token
    tree = process_tree(server.proc.pid)
    console.print(f"nso-repo serve on {base}: master {tree[0]}, workers {tree[1:]}")

    # -- nginx on the folder holding the file
    nginx_port = free_port()
    nginx = start_nginx(work / "nginx", files, nginx_port)
    cleanup.append(nginx.stop)
    nginx_url = f"http://127.0.0.1:{nginx_port}/{source.name}"
    with console.status("starting nginx"):
        wait_http(nginx, nginx_url, timeout=20, method="HEAD")
    console.print(f"nginx on 127.0.0.1:{nginx_port}, root {files}")

    # -- upload vs sha256sum, interleaved. Every upload has its own name. By default the run
    # number is stamped into the file first, so every run stores (and fsyncs) a new blob;
    # with --same-bytes only run 1 does and later runs find it stored already.
    sha_seconds: list[float] = []
    up_seconds: list[float] = []
    growth: list[float] = []
    hwm_growth: list[float] = []
    server_cpu: list[float] = []
    server_faults: list[int] = []
    digest = ""
    for i in range(1, repeat + 1):
        if args.distinct_bytes:
            stamp(source, i)
        with console.status(f"run {i}/{repeat}: sha256sum"):
            seconds, digest = run_sha256sum(source)
        sha_seconds.append(seconds)
        name = f"nso-9.9.{i}.linux.x86_64.installer.bin"
        url = f"{base}/api/v1/artifacts/{name}"
        tree = process_tree(server.proc.pid)
        workers = tree[1:]
        hwm_ok = all(reset_hwm(p) for p in workers)
        rss_before = {p: status_kib(p, "VmRSS") or 0 for p in workers}
        cpu_before, faults_before = tree_cpu(tree)
        status = console.status(f"run {i}/{repeat}: upload {name}")
        with status, MemorySampler(server.proc.pid, interval=args.interval) as mem:
            seconds, answer = run_upload(source, url, token, work / "upload.json")
        cpu_after, faults_after = tree_cpu(tree)
        server_cpu.append(cpu_after - cpu_before)
        server_faults.append(faults_after - faults_before)
        if answer.get("sha256") != digest:
            raise BenchError(f"the server says sha256 {answer.get('sha256')}, sha256sum {digest}")
        up_seconds.append(seconds)
        growth.append(mem.growth_mib)
        if hwm_ok and workers:
            hwm_growth.append(
                max(((status_kib(p, "VmHWM") or 0) - rss_before[p]) / 1024 for p in workers)
            )
        new_blob = args.distinct_bytes or i == 1
        console.print(
            f"run {i}: sha256sum {size / sha_seconds[-1] / MB:.0f} MB/s, "
            f"upload {size / seconds / MB:.0f} MB/s "
            f"({'new blob, fsynced' if new_blob else 'blob already stored'}); "
            f"server: RSS +{mem.growth_mib:.1f} MiB ({mem.samples} samples), "
            f"CPU {server_cpu[-1]:.2f} s, {server_faults[-1]} page faults"
        )

    # -- download: ours vs nginx, interleaved, after one untimed warm-up fetch of each
    blob_url = f"{base}/api/v1/blobs/{digest}"
    with console.status("warm-up downloads"):
        run_download(blob_url, size, token)
        run_download(nginx_url, size, None)
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(1, repeat + 1):
        with console.status(f"run {i}/{repeat}: downloads"):
            ours.append(run_download(blob_url, size, token))
            theirs.append(run_download(nginx_url, size, None))
        console.print(
            f"run {i}: download {size / ours[-1] / MB:.0f} MB/s, "
            f"nginx {size / theirs[-1] / MB:.0f} MB/s"
        )

    hashlib_seconds = min(hashlib_sha256(source) for _ in range(repeat))

    upload = median_rate(size, up_seconds)
    sha = median_rate(size, sha_seconds)
    download = median_rate(size, ours)
    nginx_rate = median_rate(size, theirs)

    def rates(seconds: list[float]) -> list[float]:
        return [round(size / s / MB, 1) for s in seconds]

    return {
        "size": size,
        "repeat": repeat,
        "distinct_bytes": args.distinct_bytes,
        "upload": upload,
        "sha": sha,
        "download": download,
        "nginx": nginx_rate,
        "hashlib": size / hashlib_seconds / MB,
        "upload_runs": rates(up_seconds),
        "sha_runs": rates(sha_seconds),
        "download_runs": rates(ours),
        "nginx_runs": rates(theirs),
        "growth": growth,
        "hwm_growth": hwm_growth,
        "server_cpu": [round(c / (size / (1 << 30)), 2) for c in server_cpu],
        "server_faults": server_faults,
        "peak": max(growth),
        "upload_ratio": upload / sha,
        "download_ratio": download / nginx_rate,
    }


def report(r: dict[str, Any], info: dict[str, str], load: list[float]) -> dict[str, Any]:
    ok_up = r["upload_ratio"] >= UPLOAD_GOAL
    ok_down = r["download_ratio"] >= DOWNLOAD_GOAL
    ok_mem = r["peak"] < MEMORY_GOAL_MIB

    def verdict(ok: bool) -> str:
        return "[green]pass[/]" if ok else "[red]MISS[/]"

    mode = (
        "every upload stored a new blob"
        if r["distinct_bytes"]
        else "same bytes under new names: only upload 1 stored a new blob"
    )
    table = Table(
        title=f"upload/download of {human(r['size'])}, gunicorn with 1 worker, local storage",
        caption=(
            f"MB/s = 10^6 bytes/s, median of {r['repeat']} runs each (every run listed above); "
            f"{mode}; curl {info['curl']}, gunicorn {info['gunicorn']}, nginx {info['nginx']}, "
            f"Python {info['python']}"
        ),
    )
    for column in ("measure", "ours", "baseline", "ratio", "goal", "result"):
        table.add_column(column, justify="left" if column in ("measure", "baseline") else "right")
    table.add_row(
        "upload: curl -T, PUT artifact",
        f"{r['upload']:.0f} MB/s",
        f"sha256sum: {r['sha']:.0f} MB/s",
        f"{r['upload_ratio']:.2f}",
        f">= {UPLOAD_GOAL}",
        verdict(ok_up),
    )
    table.add_row(
        "download: curl, GET blob",
        f"{r['download']:.0f} MB/s",
        f"nginx: {r['nginx']:.0f} MB/s",
        f"{r['download_ratio']:.2f}",
        f">= {DOWNLOAD_GOAL}",
        verdict(ok_down),
    )
    hwm = f"{max(r['hwm_growth']):.1f} MiB" if r["hwm_growth"] else "n/a"
    table.add_row(
        "server RSS growth, upload",
        f"{r['peak']:.1f} MiB",
        f"peak of {r['repeat']} uploads (VmHWM: {hwm})",
        "",
        f"< {MEMORY_GOAL_MIB} MiB",
        verdict(ok_mem),
    )
    table.add_row(
        "[dim]reference: upload vs hashlib[/]",
        "",
        f"[dim]hashlib.sha256: {r['hashlib']:.0f} MB/s[/]",
        f"[dim]{r['upload'] / r['hashlib']:.2f}[/]",
        "",
        "[dim]info[/]",
    )
    table.add_row(
        "[dim]reference: server CPU per GiB uploaded[/]",
        f"[dim]{statistics.median(r['server_cpu']):.2f} s[/]",
        "[dim]user + system, master + worker[/]",
        "",
        "",
        "[dim]info[/]",
    )
    console.print(table)
    return {
        "benchmark": "upload_download",
        "size_bytes": r["size"],
        "runs": r["repeat"],
        "statistic": "median",
        "upload_MBps": round(r["upload"], 1),
        "sha256sum_MBps": round(r["sha"], 1),
        "upload_ratio": round(r["upload_ratio"], 3),
        "upload_goal": UPLOAD_GOAL,
        "download_MBps": round(r["download"], 1),
        "nginx_MBps": round(r["nginx"], 1),
        "download_ratio": round(r["download_ratio"], 3),
        "download_goal": DOWNLOAD_GOAL,
        "peak_rss_growth_MiB": round(r["peak"], 1),
        "peak_rss_growth_per_run_MiB": [round(g, 1) for g in r["growth"]],
        "memory_goal_MiB": MEMORY_GOAL_MIB,
        "hashlib_sha256_MBps": round(r["hashlib"], 1),
        "upload_runs_MBps": r["upload_runs"],
        "sha256sum_runs_MBps": r["sha_runs"],
        "download_runs_MBps": r["download_runs"],
        "nginx_runs_MBps": r["nginx_runs"],
        "server_cpu_s_per_GiB_runs": r["server_cpu"],
        "server_minor_faults_runs": r["server_faults"],
        "every_upload_new_blob": r["distinct_bytes"],
        "workers": 1,
        "loadavg_start_end": load,
        "versions": info,
        "pass": {"upload": ok_up, "download": ok_down, "memory": ok_mem},
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=parse_size, default=1 << 30, help="file size, e.g. 128M (default 1G)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    parser.add_argument(
        "--interval", type=float, default=0.02, help="RSS sampling interval in s (default 0.02)"
    )
    parser.add_argument(
        "--same-bytes",
        dest="distinct_bytes",
        action="store_false",
        help="upload the same bytes under new names, so only the first upload stores (and "
        "fsyncs) a blob (default: the file changes before each run and every upload stores "
        "a new blob, the realistic case)",
    )
    parser.add_argument(
        "--tmp-dir", help="where to make the temporary folder (default: the system's temp dir)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    def body(work: Path, cleanup: list[Callable[[], None]], load: list[float]) -> dict[str, Any]:
        check_tools()
        info = versions()
        work.chmod(0o755)  # so nginx's worker can reach files/ below it
        results = measure(args, work, cleanup)
        load.append(loadavg())
        return report(results, info, load)

    return run_benchmark(console, "nso-bench-", args.tmp_dir, body)


if __name__ == "__main__":
    sys.exit(main())
