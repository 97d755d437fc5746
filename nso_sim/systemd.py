"""``systemctl`` for the ``ncs.service`` that replaces the init script from NSO 6.4.

Installed as ``<root>/usr/bin/systemctl`` (it finds the root from its own path). Package reload
is asked for with ``NCS_RELOAD_PACKAGES=true|force`` in ``/etc/ncs/ncs.systemd.conf``, which
stays in effect for every start until it is set back. A start that takes longer than 90
(nominal) seconds makes ``systemctl`` give up with systemd's message while NSO keeps starting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from nso_sim import ipc
from nso_sim.layout import HostConfig, HostLayout

START_TIMEOUT = 90.0  # systemd's default TimeoutStartSec
START_ALLOWANCE = 1.0  # real seconds for the simulator's own imports (not scaled)
UNIT = "ncs.service"
SYSTEMD_CONF = "ncs.systemd.conf"

UNIT_TEXT = """[Unit]
Description=Cisco NSO (nso-sim)
After=network.target

[Service]
Type=forking
EnvironmentFile=/etc/ncs/ncs.systemd.conf
ExecStart=/opt/ncs/current/bin/ncs --cd /var/opt/ncs -c /etc/ncs/ncs.conf
ExecStop=/opt/ncs/current/bin/ncs --stop

[Install]
WantedBy=multi-user.target
"""

CONF_TEXT = """# Environment of ncs.service. NCS_RELOAD_PACKAGES=true (or force) reloads packages at
# every start until it is set back to false.
NCS_RELOAD_PACKAGES=false
"""


def unit_path(layout: HostLayout) -> Path:
    return layout.root / "etc" / "systemd" / "system" / UNIT


def _environment(layout: HostLayout) -> dict[str, str]:
    env: dict[str, str] = {}
    try:
        for line in (layout.config_dir / SYSTEMD_CONF).read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip().strip('"')
    except FileNotFoundError:
        pass
    return env


def _running(layout: HostLayout) -> bool:
    try:
        return ipc.request(layout, {"op": "status"}, timeout=5).get("status") == "started"
    except OSError:
        return False


def _start(layout: HostLayout) -> int:
    if _running(layout):
        return 0
    cmd = [
        str(layout.current / "bin" / "ncs"),
        "--cd",
        str(layout.run_dir),
        "-c",
        str(layout.ncs_conf),
    ]
    reload = _environment(layout).get("NCS_RELOAD_PACKAGES", "false")
    if reload == "true":
        cmd.append("--with-package-reload")
    elif reload == "force":
        cmd.append("--with-package-reload-force")
    proc = subprocess.Popen(  # nosec B603 # the simulator, run by tests and demos only: the unit's own command, no shell
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    code = _wait(layout, proc, HostConfig.load(layout).scaled(START_TIMEOUT) + START_ALLOWANCE)
    if code is None:
        # The unit is marked failed, but the daemon it started keeps going.
        print(
            f"Job for {UNIT} failed because a timeout was exceeded.\n"
            f'See "systemctl status {UNIT}" and "journalctl -xe" for details.',
            file=sys.stderr,
        )
        return 1
    if code != 0:
        print(
            f"Job for {UNIT} failed because the control process exited with error code.\n"
            f'See "systemctl status {UNIT}" and "journalctl -xe" for details.',
            file=sys.stderr,
        )
        return 1
    return 0


def _wait(layout: HostLayout, proc: subprocess.Popen[bytes], timeout: float) -> Optional[int]:
    """The exit code of ``ncs``, or None on timeout. The clock starts when the daemon answers
    on its IPC port, so the simulator's own process start-up is not counted."""
    began: Optional[float] = None
    hard_limit = time.monotonic() + 60 + timeout
    while True:
        code = proc.poll()
        if code is not None:
            return code
        now = time.monotonic()
        if began is None:
            try:
                ipc.request(layout, {"op": "status"}, timeout=2)
                began = now
            except OSError:
                pass
        if (began is not None and now - began > timeout) or now > hard_limit:
            return None
        time.sleep(0.05)


def _unit_state(layout: HostLayout) -> tuple[str, str]:
    """systemd's ``Active:`` state and, after a failure, how the daemon ended."""
    try:
        status = ipc.request(layout, {"op": "status"}, timeout=5).get("status")
    except OSError:
        status = None
    if status == "started":
        return "active (running)", ""
    if status is not None:
        return "activating (start)", ""
    try:
        ended = json.loads(layout.exit_file.read_text())
    except (OSError, ValueError):
        ended = {}
    if ended.get("status"):
        command = "ExecStart=/opt/ncs/current/bin/ncs"
        return "failed (Result: exit-code)", (
            f"{ended.get('pid')} {command} (code=exited, status={ended['status']})"
        )
    return "inactive (dead)", ""


def _stop(layout: HostLayout) -> int:
    subprocess.call(  # nosec B603 # the simulator, run by tests and demos only: the unit's own command, no shell
        [str(layout.current / "bin" / "ncs"), "--stop"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while _running(layout) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def main(script: str, argv: list[str]) -> int:
    layout = HostLayout(Path(os.path.realpath(script)).parents[2])
    args = [a for a in argv if not a.startswith("-")]
    if args[:1] == ["daemon-reload"]:
        return 0
    if len(args) != 2:
        print("usage: systemctl start|stop|restart|status|is-active ncs", file=sys.stderr)
        return 2
    verb, unit = args
    unit = unit if unit.endswith(".service") else unit + ".service"
    if unit != UNIT or not unit_path(layout).exists():
        print(f"Unit {unit} could not be found.", file=sys.stderr)
        return 5 if verb != "status" else 4
    if verb == "start":
        return _start(layout)
    if verb == "stop":
        return _stop(layout)
    if verb == "restart":
        _stop(layout)
        return _start(layout)
    if verb in ("status", "is-active"):
        state, detail = _unit_state(layout)
        if verb == "is-active":
            print(state.split(" ", 1)[0])
        else:
            print(f"* {UNIT} - Cisco NSO\n     Loaded: loaded ({unit_path(layout)})")
            print(f"     Active: {state}")
            if detail:
                print(f"    Process: {detail}")
        return 0 if state.startswith("active") else 3
    print(f"Unknown command verb {verb}.", file=sys.stderr)
    return 1
