# The two commands the README opens with: `make demo` and `make test`; `make run` is the
# server alone, as production runs it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKERS ?= auto

.PHONY: run demo test test-agent-py39 lint format bench clean assets

# The agent runs on the Python of NSO hosts (RHEL 9: 3.9); its tests run there too, with
# only the agent's own dependencies installed.
PYTHON39 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.9*/bin/python) $(shell command -v python3.9))
VENV39 ?= .venv39

# What the machine needs: a Python that makes venvs; for the tests also PostgreSQL 15 and curl.
# Installed when we are root with apt-get, otherwise one line says what to install. `test`
# passes its needs down to the venv's recipe, so a fresh machine gets one apt-get run.
NEEDS = run
test: NEEDS = test

# The console's htmx and Pico CSS, from the npm registry (integrity-checked by package-lock),
# copied into the package: never loaded from a CDN (scripts/vendor_assets.sh).
CONSOLE_ASSETS = repo_server/console/static/vendor/htmx.min.js
$(CONSOLE_ASSETS): repo_server/console/frontend/package-lock.json scripts/vendor_assets.sh
	@$(CHECK_PREREQUISITES) $(NEEDS)
	bash scripts/vendor_assets.sh

assets: $(CONSOLE_ASSETS)
CHECK_PREREQUISITES = PYTHON=$(PYTHON) bash scripts/prerequisites.sh

$(BIN)/.installed: pyproject.toml $(CONSOLE_ASSETS)
	@$(CHECK_PREREQUISITES) $(NEEDS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/nso-repo serve

# The server, releases 6.1 and 6.2 and a simulated fleet with agents; prints the console's
# URL and an admin token; Ctrl-C stops and removes it all.
demo: $(BIN)/.installed
	$(BIN)/nso-repo demo $(DEMO_ARGS)

test: $(BIN)/.installed
	@$(CHECK_PREREQUISITES) test
	$(BIN)/python -m pytest -n $(WORKERS) $(PYTEST_ARGS)

$(VENV39)/.installed: pyproject.toml
	@test -n "$(PYTHON39)" || { echo "Python 3.9 not found: set PYTHON39=/path/to/python3.9"; exit 1; }
	$(PYTHON39) -m venv $(VENV39)
	$(VENV39)/bin/pip install -q --upgrade pip
	$(VENV39)/bin/pip install -q -e . pytest pytest-timeout pytest-xdist
	touch $@

# --confcutdir keeps out tests/conftest.py (it needs the server's dependencies); -p loads
# the shared fixtures the agent's tests use.
test-agent-py39: $(VENV39)/.installed
	$(VENV39)/bin/python -m pytest -n $(WORKERS) --confcutdir=tests/agent -p tests.support.sim_hosts \
		--ignore=tests/agent/test_runner_server.py tests/agent $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/bandit -q -c pyproject.toml -r repo_server agent nso_sim
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VENV39) .pytest_cache .mypy_cache .ruff_cache
