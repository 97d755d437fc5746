"""The abuse limits' settings refuse values that would disable them, and say what to use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from repo_server.config import ConfigError, load_settings
from tests.support.processes import REPO, clean_env


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("NSO_REPO_MAX_POLLS_PER_NODE", "0", "use 1 or more"),
        ("NSO_REPO_MAX_JSON_SIZE", "1K", "use 64K or more"),
    ],
)
def test_server_settings(variable: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings({variable: value})
    defaults = load_settings({})
    assert (defaults.max_polls_per_node, defaults.max_json_bytes) == (2, 1 << 20)


@pytest.mark.parametrize(
    "variable",
    ["NSO_REPO_REQUEST_TIMEOUT", "NSO_REPO_IO_TIMEOUT", "NSO_REPO_MAX_PENDING_PER_ADDRESS"],
)
@pytest.mark.parametrize("value", ["0", "soon"])
def test_worker_settings(variable: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import repo_server.gunicorn_settings"],
        env=clean_env(PYTHONPATH=str(REPO), **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{variable}='{value}' is not a positive number" in done.stderr
