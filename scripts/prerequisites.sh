#!/usr/bin/env bash
# What `make run` and `make test` need from the machine, checked before they start: on a
# fresh Debian as root with apt-get, what is missing is installed; otherwise one line says
# what to install, and the exit status is 1.
#
# Usage: scripts/prerequisites.sh run|test   (PYTHON: the interpreter that makes .venv)
set -euo pipefail

goal=${1:?usage: $0 run|test}
python=${PYTHON:-python3}
pg_bin=${NSO_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}

missing=()
# Both make .venv; Debian's Python has no ensurepip (so no venv) without python3-venv.
"$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The console's htmx and CSS come from the npm registry when the package is built.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "$goal" = test ]; then
  # The tests start their own PostgreSQL 15 cluster (tests/support/postgres.py) ...
  [ -x "$pg_bin/initdb" ] || missing+=(postgresql-15)
  # ... and run the README walkthrough, which polls the server with curl.
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # `nso-repo agent bootstrap` is tested against a real OpenSSH server on a loopback port.
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  # The console's browser tests drive Debian's chromium with Playwright.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make $goal: installing ${missing[*]}"
  apt-get update -qq
  # Packages install, services do not start (openssh-server would listen on port 22): a
  # policy-rc.d that refuses, unless the machine has one of its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  exit 0
fi
sudo=$([ "$(id -u)" -eq 0 ] || echo "sudo ")
echo "make $goal needs ${missing[*]} (Debian packages): ${sudo}apt-get install ${missing[*]}" >&2
exit 1
