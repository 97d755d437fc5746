"""Text of the commands a System Install puts on the host.

The ``bin/`` commands are small Python scripts with the interpreter and the path of the
``nso_sim`` package baked in, so they run by their path with no extra environment, as an
operator or the agent types them. They find the host root from their own location.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nso_sim

SIM_PATH = str(Path(nso_sim.__file__).resolve().parent.parent)

# command name in bin/ -> module holding main(script_path, version, argv)
BIN_COMMANDS = {
    "ncs": "nso_sim.ncs_cmd",
    "ncs-backup": "nso_sim.backup",
    "ncs_cli": "nso_sim.ncs_cli_cmd",
}


def bin_script(command: str, vsn: str) -> str:
    module = BIN_COMMANDS[command]
    return f"""#!{sys.executable}
# NSO {vsn} `{command}`, simulated by nso-sim. The host root is derived from this file's path.
import sys

sys.path.insert(0, {SIM_PATH!r})
from {module} import main

sys.exit(main(__file__, {vsn!r}, sys.argv[1:]))
"""


def systemctl_script() -> str:
    return f"""#!{sys.executable}
# systemctl for ncs.service on a simulated host (nso-sim); the root is derived from this path.
import sys

sys.path.insert(0, {SIM_PATH!r})
from nso_sim.systemd import main

sys.exit(main(__file__, sys.argv[1:]))
"""


def ncsrc(vsn: str) -> str:
    return f"""# NSO {vsn} environment (nso-sim). Source it: . /opt/ncs/current/ncsrc
_ncsrc_dir=$(cd "$(dirname "${{BASH_SOURCE:-$0}}")" 2>/dev/null && pwd)
NCS_DIR=${{_ncsrc_dir}}
PATH=$NCS_DIR/bin:$PATH
export NCS_DIR PATH
"""


INIT_SCRIPT = r"""#!/bin/sh
# /etc/init.d/ncs of a simulated NSO System Install (nso-sim).
# The host root is derived from this script's own path (<root>/etc/init.d/ncs); the daemon
# is whatever <root>/opt/ncs/current points at, as on a real host.
here=$(cd "$(dirname "$0")" && pwd -P)
ROOT=$(cd "$here/../.." && pwd -P)
prog=ncs
NCS_DIR="$ROOT/opt/ncs/current"
conf="$ROOT/etc/ncs/ncs.conf"
rundir="$ROOT/var/opt/ncs"

start() {
    reload_flag=""
    case "${NCS_RELOAD_PACKAGES:-false}" in
        true) reload_flag="--with-package-reload" ;;
        force) reload_flag="--with-package-reload-force" ;;
    esac
    printf "Starting %s: " "$prog"
    "$NCS_DIR/bin/ncs" --cd "$rundir" -c "$conf" $reload_flag
    ret=$?
    echo "."
    return $ret
}

stop() {
    printf "Stopping %s: " "$prog"
    "$NCS_DIR/bin/ncs" --stop >/dev/null 2>&1
    echo "."
    return 0
}

status() {
    if "$NCS_DIR/bin/ncs" --status >/dev/null 2>&1; then
        echo "$prog is running"
        return 0
    fi
    echo "$prog is stopped"
    return 3
}

case "$1" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    reload) "$NCS_DIR/bin/ncs" --reload ;;
    status) status ;;
    start-with-package-reload) NCS_RELOAD_PACKAGES=true start ;;
    restart-with-package-reload) stop; NCS_RELOAD_PACKAGES=true start ;;
    start-with-package-reload-force) NCS_RELOAD_PACKAGES=force start ;;
    restart-with-package-reload-force) stop; NCS_RELOAD_PACKAGES=force start ;;
    *)
        echo "Usage: $0 {start|stop|restart|reload|status|start-with-package-reload|" \
             "restart-with-package-reload}"
        exit 1
        ;;
esac
exit $?
"""
