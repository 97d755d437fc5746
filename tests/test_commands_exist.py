"""Every `nso-repo ...`, `nso-agent ...` and `nso-sim ...` command that an error message, a
help text or a document tells the operator to run exists in that program's click tree.

A command counts where it is quoted: right after a quote, a backtick or an opening
parenthesis, in a Python string or a Markdown line, and on every line of a Markdown code
block. Its words are walked down the click groups; the walk stops at the first option,
placeholder (``NODE``, ``<token>``, ``{job.id}``) or argument of a command.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import click
import pytest

from agent.cli import main as agent_cli
from nso_sim.commands import main as sim_cli
from repo_server.cli import cli as repo_cli

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS: dict[str, click.Command] = {
    "nso-repo": repo_cli,
    "nso-agent": agent_cli,
    "nso-sim": sim_cli,
}
SOURCES = ("repo_server", "agent", "nso_sim")
DOCUMENTS = ("docs", "README.md")

_PROGRAM = r"(?:[\w.$/-]*/)?(?P<program>nso-repo|nso-agent|nso-sim)(?![\w./-])"
# Quoted: the program right after an opening quote, backtick or parenthesis.
QUOTED = re.compile(r"""(?:(?<=['"`(])|(?<=\$\())""" + _PROGRAM + r"(?P<rest>[^'\"`\n]*)")
ANYWHERE = re.compile(r"(?<![\w./-])" + _PROGRAM + r"(?P<rest>[^\n]*)")
WORD = re.compile(r"^[a-z][a-z0-9-]*$")
SHELL_END = re.compile(r"^(?:\||;|&|>|<|\)|2>|\d>)")


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    """Every string in a Python file, f-string fields shown as ``{...}``, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    parts_of_fstrings = {
        id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values
    }
    for node in ast.walk(tree):
        if id(node) in parts_of_fstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{...}" for v in node.values]
            yield node.lineno, "".join(str(p) for p in parts)


def _markdown(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a code block) of a Markdown file."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        yield number, line, fenced


def mentions() -> Iterator[tuple[str, str, str]]:
    """(where, program, the words after it) for every quoted command."""
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, text in _strings(path):
                for match in QUOTED.finditer(text):
                    where = f"{path.relative_to(ROOT)}:{line}"
                    yield where, match["program"], match["rest"]
    for name in DOCUMENTS:
        top = ROOT / name
        for path in sorted(top.rglob("*.md")) if top.is_dir() else [top]:
            for line, text, fenced in _markdown(path):
                for match in (ANYWHERE if fenced else QUOTED).finditer(text):
                    where = f"{path.relative_to(ROOT)}:{line}"
                    yield where, match["program"], match["rest"]


def _takes_value(group: click.Command, flag: str) -> Optional[bool]:
    """Whether a group's option takes a value; None when the group has no such option."""
    ctx = click.Context(group)
    for param in group.get_params(ctx):
        if (
            isinstance(param, click.Option)
            and flag.split("=")[0] in param.opts + param.secondary_opts
        ):
            return not param.is_flag and not param.count and "=" not in flag
    return None


def missing_command(program: str, rest: str) -> Optional[str]:
    """The first word of ``rest`` that names no command of ``program``; None if all do."""
    command = PROGRAMS[program]
    path = [program]
    words = iter(rest.split())
    for word in words:
        if SHELL_END.match(word) or not isinstance(command, click.Group):
            return None
        if word.startswith("-"):
            takes = _takes_value(command, word)
            if takes is None:
                return f"{' '.join(path)} has no option {word}"
            if takes:
                next(words, None)
            continue
        word = word.rstrip(".,:;'\")")
        if not WORD.match(word):
            return None  # a placeholder: NODE, <token>, {job.id}, $VAR
        sub = command.commands.get(word)
        if sub is None:
            return f"'{' '.join(path)}' has no command {word!r}"
        command = sub
        path.append(word)
    return None


def test_the_walk_finds_a_missing_command_and_accepts_real_ones() -> None:
    assert missing_command("nso-repo", "node nothing-like-this NODE") is not None
    assert missing_command("nso-repo", "token create --role admin") is None
    assert missing_command("nso-agent", "--config demo/agent.conf enroll --server URL") is None
    assert missing_command("nso-sim", "COMMAND --help") is None
    found = {(p, r.strip()) for _w, p, r in mentions()}
    assert ("nso-repo", "token create") in found  # from the 401 message in auth/service.py


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_quoted_command_exists(program: str) -> None:
    wrong = sorted(
        {
            f"{where}: {program}{rest.rstrip()} -> {problem}"
            for where, prog, rest in mentions()
            if prog == program and (problem := missing_command(prog, rest))
        }
    )
    assert not wrong, "commands quoted in messages and docs that do not exist:\n" + "\n".join(wrong)
