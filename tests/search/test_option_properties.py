"""Properties of every numeric option of every command under hostile numbers, checked
with Hypothesis.

What: for each numeric option of each command (walked from the parsers, never a hand
list) and any text a shell could pass for it (integers of any size and sign, floats in
every notation, zero, NaN, infinities, words, the ends of the option's range), parsing
and checking (``vitpareto.search.cli.parse``, which runs no command) either accepts the
value, exactly when the table of bounds (``vitpareto.bounds.OPTIONS``) allows it, or
refuses it with exit status 2 and one line naming the option: never a traceback, never
an out-of-range number let through. ``VITPARETO_DB_TIMEOUT`` is held to the same rule.

Why: a number checked by one command and not by another, or checked after the work began,
was the filed bug; examples written by hand cover the options someone thought of.
"""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.options import numeric_options, required_args
from vitpareto.bounds import ENVIRONMENT, OPTIONS, environment_number
from vitpareto.errors import VitParetoError
from vitpareto.search.cli import main, parse

# modest, quiet, no .hypothesis folder; capsys is read afresh in every example
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CASES = numeric_options()
ODD = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "0", "-0", "0.0",
       "-0.0", "", " ", "abc", "1.5", "0x10", "1_000", "1e3", "+7", " 7 ", "4294967295",
       "4294967296", "9" * 400, "-" + "9" * 400, "9" * 5000]  # fmt: skip
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(-(2**80), 2**80).map(str),
    st.floats().map(repr),
    st.floats().map(lambda f: f"{f:e}"),
    st.sampled_from(ODD),
)


def near(dest: str) -> st.SearchStrategy[str]:
    """Text at and around the ends of an option's range, where off-by-one errors live."""
    bound = OPTIONS[dest]
    ends = [bound.low, bound.highest()]
    if bound.whole:
        return st.sampled_from([e + d for e in ends for d in (-1, 0, 1)]).map(str)
    edges = [
        x for e in ends for x in (math.nextafter(e, -math.inf), e, math.nextafter(e, math.inf))
    ]
    return st.one_of(st.sampled_from(edges), *(st.floats(e - 1, e + 1) for e in ends)).map(repr)


def outcome(capsys, argv: list[str]):
    """(the parsed namespace or None, exit status, stderr lines) of parsing ``argv``."""
    try:
        return parse(argv), 0, []
    except SystemExit as e:  # argparse's own: text that is not a number of the type
        return None, e.code, capsys.readouterr().err.strip().splitlines()
    except VitParetoError as e:  # the table's: printed by main as one line
        return None, 2, str(e).splitlines()


@FAST
@given(data=st.data())
def test_any_number_is_accepted_within_its_bounds_or_refused_in_one_line(capsys, data):
    command, action = data.draw(st.sampled_from(CASES), label="option")
    text = data.draw(NUMBERS | near(action.dest), label="value")
    flag, bound = action.option_strings[0], OPTIONS[action.dest]
    argv = [command, *required_args(command, skip=action), f"{flag}={text}"]
    args, code, err = outcome(capsys, argv)
    try:
        value = action.type(text)
    except ValueError:
        value = None  # not a number of the option's type: argparse's to refuse
    if args is not None:
        got = getattr(args, action.dest)
        assert got == ([value] if isinstance(action, argparse._AppendAction) else value), argv
        assert math.isfinite(value) and bound.allows(value), (argv, value)
        assert value == 0 and bound.off or bound.low <= value <= bound.highest(), argv
        return
    assert code == 2 and len(err) == 1 and flag in err[0], (argv, err)
    assert "Traceback" not in err[0]
    if value is not None:
        assert not bound.allows(value), (argv, err)
        if isinstance(value, int) or math.isfinite(value):  # within the open range: a bug
            assert not bound.low < value < bound.highest(), argv


@FAST
@given(text=NUMBERS)
def test_a_refused_number_exits_2_before_the_command_runs(capsys, text):
    """``main`` prints the table's refusal as one line; nothing ran (no handler is
    reached: the option is bench's, whose directory does not exist)."""
    try:
        bad = not OPTIONS["repeats"].allows(int(text))
    except ValueError:
        return  # argparse's, covered above
    if bad:
        assert main(["bench", "nowhere", f"--repeats={text}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vitpareto bench: error: --repeats"), err


@FAST
@given(text=NUMBERS | st.text(max_size=20))
def test_the_database_timeout_is_a_number_within_its_range_or_one_line(monkeypatch, text):
    if "\x00" in text:
        return  # no environment holds a NUL
    bound, _ = ENVIRONMENT["VITPARETO_DB_TIMEOUT"]
    with monkeypatch.context() as m:
        m.setenv("VITPARETO_DB_TIMEOUT", text)
        try:
            value = environment_number("VITPARETO_DB_TIMEOUT")
        except VitParetoError as e:
            assert len(str(e).splitlines()) == 1 and "VITPARETO_DB_TIMEOUT" in str(e)
            return
    assert math.isfinite(value) and 0 <= value <= bound.highest()


@pytest.mark.parametrize(
    "command, action", CASES, ids=[f"{c}{a.option_strings[0]}" for c, a in CASES]
)
def test_nan_and_infinities_are_refused_by_every_option(capsys, command, action):
    for text in ("nan", "inf", "-inf", "1e999"):
        argv = [command, *required_args(command, skip=action), f"{action.option_strings[0]}={text}"]
        args, code, err = outcome(capsys, argv)
        assert args is None and code == 2 and len(err) == 1, (argv, err)
