#!/usr/bin/env bash
# How long a newcomer waits: from `git clone` to the demo's first upgrade finished, as the
# console shows it. Clones REPO (default: this repository) into a new folder, runs
# `make demo` there (a new .venv: pip and npm fetch everything), reads the job the demo
# started from its output, and asks the server until that job has succeeded.
#
# Usage: scripts/clone_to_demo.sh [REPO]   (prints the seconds of each phase; stops the demo)
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
work=$(mktemp -d)
# The demo runs in a session of its own: Ctrl-C goes to its whole group (make and the demo),
# as a terminal would send it, and the demo stops its hosts before the clone is removed.
trap 'kill -INT -- "-$demo" 2>/dev/null; wait "$demo" 2>/dev/null; rm -rf "$work"' EXIT
began=$(date +%s.%N)
git clone -q "$repo" "$work/nso-fleet"
cd "$work/nso-fleet"
setsid make demo DEMO_ARGS="--port 0 --first-address ${DEMO_ADDRESS:-127.0.5.1}" > "$work/out" 2> "$work/err" &
demo=$!
until grep -q '^Upgrading:' "$work/out"; do
  kill -0 "$demo" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
  sleep 0.2
done
ready=$(date +%s.%N)
url=$(awk '/^Console:/ {print $2}' "$work/out" | sed 's|/ui/$||')
token=$(awk '/^Admin token:/ {print $3}' "$work/out")
job=$(sed -n 's/^Upgrading:.* job \([0-9]*\):.*/\1/p' "$work/out")
job_state() {
  curl -sf -H "Authorization: Bearer $token" "$url/api/v1/jobs/$job" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])'
}
until [ "$(job_state)" = succeeded ]; do
  sleep 0.2
done
done_at=$(date +%s.%N)
python3 - "$began" "$ready" "$done_at" <<'PY'
import json, sys
began, ready, done = map(float, sys.argv[1:])
print(f"clone to demo ready (URL printed): {ready - began:.1f} s")
print(f"demo ready to first upgrade finished: {done - ready:.1f} s")
print(f"clone to first upgrade finished: {done - began:.1f} s")
print(json.dumps({"clone_to_ready_s": round(ready - began, 1), "ready_to_upgraded_s": round(done - ready, 1), "clone_to_upgraded_s": round(done - began, 1)}))
PY
