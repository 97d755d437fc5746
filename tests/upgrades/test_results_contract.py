"""The result keys the server accepts (repo_server/upgrades/results.py) are exactly the keys
the agent's steps return, and docs/agent-protocol.md lists them.

Read from the agent's source: a key the agent starts sending without a declaration here
would have every such report refused, and a declared key no step sends is a door left open.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.steps.registry import STEPS
from repo_server.upgrades import results

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agent-protocol.md"


def _returned_keys(func: Callable[..., Any], seen: set[str]) -> set[str]:
    """Keys of the dict literals ``func`` returns, following ``return helper(...)`` within
    its module."""
    module = sys.modules[func.__module__]
    keys: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(func).lstrip())):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Dict):
            keys |= {k.value for k in value.keys if isinstance(k, ast.Constant)}
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            helper = getattr(module, value.func.id, None)
            if callable(helper) and value.func.id not in seen:
                keys |= _returned_keys(helper, seen | {value.func.id})
    return keys


def _failure_keys(func: Callable[..., Any]) -> set[str]:
    """Keys of the results the agent attaches to ``StepFailed`` anywhere in its module."""
    source = inspect.getsource(sys.modules[func.__module__])
    keys: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "StepFailed"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Dict)
        ):
            keys |= {k.value for k in node.args[1].keys if isinstance(k, ast.Constant)}
    return keys


@pytest.mark.parametrize("step", sorted(STEPS))
def test_declared_result_keys_are_what_the_agent_returns(step: str) -> None:
    returned = _returned_keys(STEPS[step], {STEPS[step].__name__})
    assert returned == set(results.STEP_RESULTS[step]), step
    assert _failure_keys(STEPS[step]) <= set(results.FAILURE)


def test_every_step_has_a_declaration_and_a_row_in_the_docs() -> None:
    assert set(results.STEP_RESULTS) == set(STEPS)
    table = DOCS.read_text().split("| step | result keys |", 1)[1].split("\n\n", 1)[0]
    for step, keys in results.STEP_RESULTS.items():
        row = re.search(rf"^\| `{step}` \| (.*)\|$", table, re.MULTILINE)
        assert row, f"docs/agent-protocol.md has no result row for {step}"
        for key in keys:
            assert f"`{key}`" in row.group(1), (step, key)


@pytest.mark.parametrize(
    "value,ok",
    [
        ("/var/opt/ncs/backups/nso-agent-job-7/replaced-1/var/opt/ncs", True),
        ("/data/cdb/.nso-agent-replaced-replaced-2", True),
        ("/var/opt/ncs/backups/nso-agent-job-8/replaced-1", False),  # another job
        ("/data/cdb/.nso-agent-replaced-replaced-2/../../etc", False),
        ("/var/opt/ncs/backups/nso-agent-job-7/replaced-1/./x", False),
        ("/.nso-agent-replaced-replaced-2", False),
        ("/data/\x00/.nso-agent-replaced-replaced-2", False),
    ],
)
def test_replaced_data_paths(value: str, ok: bool) -> None:
    spec = results.STEP_RESULTS["recover"]["replaced_data"]
    assert spec.accepts([value], job_id=7) is ok


def test_a_nul_or_a_huge_result_is_refused() -> None:
    with pytest.raises(results.ResultInvalid, match="backup_file"):
        results.succeeded_result("backup", 1, {"backup_file": "/var/opt/ncs/backups/a\x00"})
    with pytest.raises(results.ResultInvalid, match="bytes of JSON"):
        results.succeeded_result("prestage", 1, {"staged_packages": ["x" * 250] * 1000})
    with pytest.raises(results.ResultInvalid, match="must be an object"):
        results.succeeded_result("prestage", 1, ["installed_release"])
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(results.ResultInvalid):
        results.succeeded_result("prestage", 1, {"staged_packages": nested})


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        ("up", True),
        ("file-load-error", True),
        (None, True),
        ("\x1b]0;pwned\x07\x1b[2JALL-GOOD", False),  # quoted in the job's error: a terminal
        ("up\u202e", False),
        ("not up", False),
    ],
)
def test_a_surveyed_packages_oper_status_is_one_visible_word(status: Any, ok: bool) -> None:
    loaded = [{"name": "router-nc", "version": "1.0", "oper_status": status}]
    spec = results.STEP_RESULTS["ha_verify_packages"]["loaded"]
    assert spec.accepts(loaded, job_id=1) is ok
