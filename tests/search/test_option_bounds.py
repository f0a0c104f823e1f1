"""One table of bounds for every number of the command line (``vitpareto.bounds.OPTIONS``).

What: every numeric option of every command, found by walking the parsers, has an entry
(kind, lowest and highest value, what it counts), named as its flag is; the table is
checked once, right after parsing, so one number is refused alike by every command; and
the cases of the hostile-input issue (a patch size of 0 under ``search --model``, a seed
beyond 2**32 - 1, a GPU that does not exist under ``bench``, a malformed
VITPARETO_DB_TIMEOUT) exit 2 with one line before anything is written.

Why: checks written command by command drifted apart (``train`` checked --patch-size,
``search --model`` divided by it), and a number checked after a study was created left an
empty study behind.
"""

from __future__ import annotations

import math

import pytest

from tests.helpers.hostile import refused
from tests.helpers.options import commands, numeric_options, required_args
from vitpareto.bounds import ENVIRONMENT, OPTIONS, environment_number
from vitpareto.errors import VitParetoError
from vitpareto.search.cli import parse
from vitpareto.search.explore import open_storage

TRAIN = ["train", "--model", "test_vit", "--dataset", "digits"]


def test_every_numeric_option_of_every_command_has_an_entry():
    missing = [f"{c} {a.option_strings[0]}" for c, a in numeric_options() if a.dest not in OPTIONS]
    assert not missing, f"numeric options without an entry in vitpareto.bounds.OPTIONS: {missing}"


def test_every_option_parses_text_a_number_or_a_path():
    """A numeric type other than int or float would slip past the table's walk."""
    known = (None, str, int, float)
    odd = [
        f"{name} {a.option_strings or a.dest}: {a.type}"
        for name, p in commands().items()
        for a in p._actions
        if a.type not in known and getattr(a.type, "__name__", "") != "Path"
    ]
    assert not odd, odd


def test_every_entry_is_an_option_named_after_it_and_of_its_type():
    flags = {a.dest: a.option_strings for _, a in numeric_options()}
    assert sorted(OPTIONS) == sorted(flags), "entries without an option, or options without one"
    for command, a in numeric_options():
        assert f"--{a.dest.replace('_', '-')}" in a.option_strings, (command, a.option_strings)
        assert OPTIONS[a.dest].whole == (a.type is int), (command, a.dest)
    for command, p in commands().items():  # a name of the table is a number everywhere
        for a in p._actions:
            assert a.dest not in OPTIONS or a.type in (int, float), (command, a.dest)


def test_every_entry_says_what_it_counts_and_its_range():
    for dest, bound in OPTIONS.items():
        low, high = bound.low, bound.highest()
        assert bound.what and math.isfinite(low) and math.isfinite(high) and low <= high, dest
        if bound.whole:
            assert isinstance(low, int) and isinstance(high, int), dest


@pytest.mark.parametrize("command, action", numeric_options(), ids=lambda x: getattr(x, "dest", x))
def test_the_ends_of_every_range_are_accepted_and_beyond_them_refused(command, action):
    bound = OPTIONS[action.dest]
    low, high = bound.low, bound.highest()
    step = 1 if bound.whole else 1e-9 * max(1.0, abs(high))
    inside = [low + step if bound.above else low, high - step if bound.below else high]
    outside = [low if bound.above else low - step, high if bound.below else high + step]
    base = [command, *required_args(command, skip=action)]
    for value in inside:
        args = parse([*base, f"{action.option_strings[0]}={value!r}"])
        assert getattr(args, action.dest) in (value, [value]), (command, action.dest, value)
    for value in outside:
        with pytest.raises(VitParetoError, match=action.option_strings[0]):
            parse([*base, f"{action.option_strings[0]}={value!r}"])


@pytest.mark.parametrize("command", sorted(commands()))
def test_the_defaults_of_every_command_are_within_the_table(command):
    assert parse([command, *required_args(command)]).command == command


@pytest.mark.parametrize("value", ["0", "-8"])
def test_a_patch_size_is_checked_alike_by_train_and_by_search_of_a_trained_model(
    capsys, tmp_path, value
):
    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"x")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    search = ["search", "--model", "test_vit", "--img-size", "32", "--dataset", "digits",
              "--checkpoint", weights, "--num-classes", "10", "--study", "s", "--storage", url]  # fmt: skip
    lines = {
        refused(capsys, [*search, "--patch-size", value], "--patch-size", "from 1 to 4096"),
        refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt", "--patch-size", value]),
    }
    assert len({line.split(": error: ")[1] for line in lines}) == 1, lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pth"]


def test_a_patch_larger_than_the_image_is_refused_by_search_of_a_trained_model(capsys, tmp_path):
    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"x")
    refused(capsys, ["search", "--model", "test_vit", "--img-size", "32", "--patch-size", "64",
                     "--dataset", "digits", "--checkpoint", weights, "--study", "s",
                     "--storage", f"sqlite:///{tmp_path / 'r.db'}"], "--patch-size 64", "--img-size 32")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pth"]


@pytest.mark.parametrize("seed", [str(2**32), "-1", str(10**30)])
def test_a_seed_beyond_32_bits_is_refused_before_a_study_is_created(
    capsys, small_net, tmp_path, seed
):
    db = tmp_path / "r.db"
    search = ["search", "--supernet", small_net, "--storage", f"sqlite:///{db}", "--study", "s"]
    refused(capsys, [*search, "--seed", seed], "--seed", "from 0 to 4294967295")
    assert not db.exists()
    refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt", "--seed", seed], "from 0 to 4294967295")
    assert not list(tmp_path.iterdir())


def test_the_largest_seed_is_accepted():
    assert parse([*TRAIN, "--out", "n.pt", "--seed", str(2**32 - 1)]).seed == 2**32 - 1


def test_bench_on_a_gpu_that_does_not_exist_is_refused_as_search_refuses_it(capsys, model_dir):
    line = refused(capsys, ["bench", model_dir, "--device", "cuda:99"], "'cuda:99'")
    assert "GPU" in line


@pytest.mark.parametrize("value", ["nan", "abc", "1e999", "-1", "inf", "86401"])
def test_a_malformed_database_timeout_is_refused_naming_the_variable(
    capsys, monkeypatch, tmp_path, value
):
    monkeypatch.setenv("VITPARETO_DB_TIMEOUT", value)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    refused(capsys, ["studies", "--storage", url], "VITPARETO_DB_TIMEOUT", "from 0 to 86400")
    with pytest.raises(VitParetoError, match="VITPARETO_DB_TIMEOUT") as e:
        open_storage(url)  # the library reads it as the command line does
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_a_database_timeout_within_its_range_is_used(monkeypatch):
    (bound, default) = ENVIRONMENT["VITPARETO_DB_TIMEOUT"]
    assert bound.allows(default)
    monkeypatch.setenv("VITPARETO_DB_TIMEOUT", "2.5")
    assert environment_number("VITPARETO_DB_TIMEOUT") == 2.5
    monkeypatch.delenv("VITPARETO_DB_TIMEOUT")
    assert environment_number("VITPARETO_DB_TIMEOUT") == default


@pytest.mark.parametrize(
    "args, words",
    [
        (["search", "--study", "s", "--seed", "1.5"], ["--seed", "invalid int value: '1.5'"]),
        (["train", "--out", "n.pt", "--lr"], ["--lr", "expected one argument"]),
        (["query"], ["--study", "required"]),
    ],
)
def test_argparse_mistakes_are_one_line_too(capsys, args, words):
    with pytest.raises(SystemExit) as e:
        parse(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert "--help" in err[0]
