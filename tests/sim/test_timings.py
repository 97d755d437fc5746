"""NSO's slow operations take the nominal seconds of one table (nso_sim/timings.py) times the
host's time scale, slept by the command that does the work."""

from __future__ import annotations

import json
import time

from tests.support.sim_hosts import run, sim

SCALE = 0.02  # large enough to measure, small enough to stay fast


def _timed(*cmd) -> tuple[float, object]:
    began = time.monotonic()
    result = run(*cmd)
    return time.monotonic() - began, result


def test_the_table_is_printed_for_benchmarks():
    table = json.loads(sim("timings", "--json").stdout)
    assert table["install_base"] == 30.0 and table["stop_base"] == 3.0
    assert {"backup_per_mib", "compact_base", "copy_per_mib", "reload_per_package"} <= set(table)
    text = sim("timings").stdout.splitlines()
    assert text[0].split() == ["NAME", "NOMINAL", "S", "WHAT"]
    assert any(line.split()[:2] == ["start_base", "5"] for line in text[1:])


def test_install_backup_stop_compact_and_copy_take_their_scaled_time(make_host, artifacts):
    host = make_host("6.1")
    sim("host", "set", "--root", str(host.root), "--time-scale", str(SCALE))
    table = json.loads(sim("timings", "--json").stdout)
    mib = 1024 * 1024

    elapsed, result = _timed(host.path("/opt/ncs/current/bin/ncs-backup"))
    assert result.returncode == 0, result.stderr
    assert elapsed >= table["backup_base"] * SCALE

    elapsed, result = _timed(host.ncs, "--stop")
    assert result.returncode == 0 and elapsed >= table["stop_base"] * SCALE

    cdb = host.path("/var/opt/ncs/cdb")
    size = sum(p.stat().st_size for p in cdb.iterdir())
    elapsed, result = _timed(host.ncs, "--cdb-compact", cdb)
    assert result.returncode == 0, result.stderr
    assert elapsed >= (table["compact_base"] + table["compact_per_mib"] * size / mib) * SCALE

    installer = artifacts.installer("6.2")
    began = time.monotonic()
    sim("copy", str(installer), str(host.root), "--root", str(host.root))
    assert time.monotonic() - began >= table["copy_base"] * SCALE
    copied = host.root / installer.name
    assert copied.read_bytes() == installer.read_bytes()

    elapsed, result = _timed("sh", copied, "--system-install", "--root", host.root)
    assert result.returncode == 0, result.stderr
    nominal = table["install_base"] + table["install_per_mib"] * copied.stat().st_size / mib
    assert elapsed >= nominal * SCALE
    assert host.path("/opt/ncs/ncs-6.2/VERSION").is_file()
