#!/usr/bin/env bash
# The console's front-end files come from the npm registry at build time, never from a CDN
# when a page loads (production NSO networks are often offline): `npm ci` checks each
# package against the integrity in repo_server/console/frontend/package-lock.json, then the
# files the pages load are copied into the Python package (static/vendor, not in git).
#
# Usage: scripts/vendor_assets.sh   (needs node and npm; `make` runs it)
set -euo pipefail
cd "$(dirname "$0")/../repo_server/console"

command -v npm >/dev/null 2>&1 || {
  echo "vendor_assets: npm is needed to fetch the console's htmx and Pico CSS (apt-get install npm)" >&2
  exit 1
}
npm ci --prefix frontend --ignore-scripts --no-audit --no-fund --loglevel=error
mkdir -p static/vendor.new
cp frontend/node_modules/htmx.org/dist/htmx.min.js static/vendor.new/htmx.min.js
cp frontend/node_modules/@picocss/pico/css/pico.min.css static/vendor.new/pico.min.css
cp frontend/node_modules/htmx.org/LICENSE static/vendor.new/htmx.LICENSE
cp frontend/node_modules/@picocss/pico/LICENSE.md static/vendor.new/pico.LICENSE.md
# One rename: a server reading the folder never sees half of it.
rm -rf static/vendor.old
[ ! -d static/vendor ] || mv static/vendor static/vendor.old
mv static/vendor.new static/vendor
rm -rf static/vendor.old
