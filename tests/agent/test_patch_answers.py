"""What the agent reads in NSO's answers about patches. The reference gives no format for
`ncs-state patches load-modules` ("Output unknown") and only `nct`'s heading for the
listing, so the agent reads both tolerantly: an answer it cannot tie to modules is a
failure only when it reads as one, and `show ncs-state patches` has the last word."""

from __future__ import annotations

import pytest

from agent.errors import CliError
from agent.patch_bundle import load_failures, patches_table


@pytest.mark.parametrize(
    "answer",
    [
        "result ok",
        "",
        "Result OK\nmodule ncs_a loaded",
        "result true",
        "2 modules loaded",
        "module fail loaded\nmodule ncs_b unloaded",  # a module's name is no trouble
    ],
)
def test_an_answer_that_says_no_trouble_is_no_failure(answer: str) -> None:
    assert load_failures(answer) == {}


@pytest.mark.parametrize(
    "answer",
    [
        'result error\nmodule ncs a failed "bad"',
        "Error: application communication failure",
        "syntax error: unknown command",
        "result false",
        "% error: aborted",
        "load failed",
        "result: error",
        'module ncs_a error "bad beam"',  # a status the agent does not know
        "could not load ncs_a.beam: badarg",
        "Internal error",
        "% Invalid input detected",
    ],
)
def test_an_answer_that_reads_as_trouble_is_a_failure(answer: str) -> None:
    with pytest.raises(CliError, match="did not say result ok"):
        load_failures(answer)


def test_a_module_nso_names_as_failed_is_that_module_s_failure() -> None:
    answer = 'result error\nmodule ncs_a failed "built for NSO 6.1"\nmodule ncs_b loaded'
    assert load_failures(answer) == {"ncs_a": "built for NSO 6.1"}


@pytest.mark.parametrize(
    ("heading", "patch_id"),
    [
        ("NAME     VERSION  PATCH-ID  COMPILE TIME", "CSCfix1"),
        ("name     version  patch-id  compile time", "CSCfix1"),
        ("MODULE   VERSION  COMPILE TIME", None),
    ],
)
def test_the_listing_is_read_under_any_heading_of_its_known_shapes(heading, patch_id) -> None:
    row = "ncs_a    6.2      CSCfix1   2024-01-21T10:00:00" if patch_id else "ncs_a 6.2 2024"
    rows = patches_table(f"{heading}\n-----------\n{row}\n")
    assert rows["ncs_a"].version == "6.2" and rows["ncs_a"].patch_id == patch_id


def test_a_listing_without_a_table_is_unknown_not_empty() -> None:
    assert patches_table("% No entries found.") == {}
    with pytest.raises(CliError, match="printed no table"):
        patches_table("ncs_a 6.2 CSCfix1")
