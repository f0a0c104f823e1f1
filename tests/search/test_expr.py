"""The --where / --sort grammar: every legitimate filter works, every escape attempt is
refused before anything runs."""

from __future__ import annotations

import hashlib

import optuna
import pandas as pd
import pytest

from tests.helpers.cli import vitpareto
from tests.helpers.hostile import trials_table
from vitpareto.search.outputs import ExpressionError, parse_where, select
from vitpareto.spaces import Candidate, create_model


@pytest.fixture
def df():
    return trials_table()


@pytest.mark.parametrize(
    "text, trials",
    [
        ("latency_ms < 5 and accuracy > 0.9", [0]),
        ("latency_ms <= 5.5 or accuracy >= 0.97", [0, 1, 2, 3, 4]),
        ("0.9 < accuracy <= 0.95", [0, 1]),
        ("not pareto", [1, 3]),
        ("pareto and not (latency_ms > 5)", [0, 2]),
        ("patch_size in [4, 8]", [0, 1, 2, 4]),
        ("patch_size not in (4, 8)", [3]),
        ("fidelity == 'finetuned'", [2, 4]),
        ('fidelity != "shared" and heads_b3 >= 1', [2, 4]),
        ("macs / 1e2 + heads_b3 * 2 > 4.5", [0, 1, 3, 4]),
        ("latency_ms ** 2 < 10", [0, 2]),
        ("macs // 100 == 1 and macs % 100 == 0", [0]),
        ("-latency_ms > -3", [2]),
        ("accuracy != accuracy", [3]),  # NaN: the only value unequal to itself
        ("pareto == True", [0, 2, 4]),
        ("trial == 3", [3]),
        ("accuracy > 0.9 and accuracy > 2 or trial == 1", [1]),
    ],
)
def test_legitimate_filters(df, text, trials):
    assert select(df, where=text)["trial"].tolist() == trials


def test_the_readme_filter_and_sort_of_the_readme(df):
    out = select(df, where="latency_ms < 5 and accuracy > 0.9", sort="-accuracy", limit=10)
    assert out["trial"].tolist() == [0]
    out = select(df, sort="-accuracy,latency_ms")
    assert out["trial"].tolist()[:3] == [4, 1, 0]
    assert select(df, sort="patch_size,-trial")["trial"].tolist() == [4, 1, 2, 0, 3]


class Sentinel:
    """Records whether any escape attempt reached code of ours."""

    ran: list[str] = []


def _marker_globals():
    Sentinel.ran.append("called")
    return "x"


ESCAPES = [
    "accuracy.__class__.__init__.__globals__.get('sys').modules.get('os').system('touch m') == 0",
    "accuracy.to_csv('somefile') is None",
    "accuracy.to_csv('somefile') == None",
    "accuracy.pipe(print) == 1",
    "accuracy.eval('1') == 1",
    "accuracy.__class__ == 1",
    "__import__('os').system('touch m') == 0",
    "open('m', 'w') == 1",
    "@Sentinel.ran.append(1) == 1",
    "@_marker_globals() == 'x'",
    "`accuracy`.sum() > 0",
    "`accuracy` > 0",
    "(lambda: __import__('os'))() == 1",
    "(lambda x: (lambda y: y)(x))(1) == 1",
    "[c for c in ().__class__.__base__.__subclasses__()] == 1",
    "{c for c in accuracy} == 1",
    "accuracy[0] > 1",
    "accuracy @ latency_ms > 1",
    "latency_ms < 5 & accuracy > 0.9",
    "~pareto",
    "accuracy if pareto else latency_ms",
    "(x := 1) == 1",
    "f'{accuracy}' == 'x'",
    "9 ** 9 ** 9 > 1",
    "accuracy ** 10000000 > 1",
    "10 ** macs > 1",
    "accuracy > 1e999",
    "b'bytes' == accuracy",
    "accuracy is None",
    "accuracy in accuracy",
    "patch_size in [macs]",
    "*accuracy",
    "accuracy; import os",
    "import os",
    "accuracy > 0.5\nimport os",
    "(" * 500 + "accuracy > 1" + ")" * 500,
    "accuracy",
    "accuracy + 1",
    "fidelity + 1 > 2",
    "nonexistent > 1",
    "",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_escape_attempts_are_refused_and_run_nothing(df, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Sentinel.ran.clear()
    before = df.copy()
    with pytest.raises(ExpressionError) as e:
        select(df, where=text)
    message = str(e.value)
    assert "\n" not in message and message.startswith("--where")
    assert not Sentinel.ran and not list(tmp_path.iterdir())
    pd.testing.assert_frame_equal(df, before)


@pytest.mark.parametrize(
    "text, named",
    [
        ("accuracy.to_csv('f') is None", "call"),
        ("accuracy.__class__ == 1", "attribute access"),
        ("open('m') == 1", "call"),
        ("@x == 1", "'@' names"),
        ("`accuracy` > 0", "backticks"),
        ("accuracy[0] > 1", "subscripts"),
        ("(lambda: 1)() == 1", "call"),
        ("[c for c in accuracy] == 1", "comprehension"),
        ("latency_ms < 5 & accuracy > 0.9", "write 'and'"),
        ("9 ** 9 ** 9 > 1", "exponent"),
        ("nonexistent > 1", "no column nonexistent"),
        ("accuracy", "is not a condition"),
    ],
)
def test_refusals_name_the_construct(df, text, named):
    with pytest.raises(ExpressionError, match=None) as e:
        select(df, where=text)
    assert named in str(e.value)


def test_grammar_is_checked_without_data():
    parse_where("latency_ms < 5 and accuracy > 0.9")
    with pytest.raises(ExpressionError, match="call"):
        parse_where("accuracy.to_csv('f') is None")


@pytest.mark.parametrize(
    "text", ["accuracy.__class__", "-accuracy;x", "sum(accuracy)", "a b", "`x`", ",", "--acc"]
)
def test_sort_takes_column_names_only(df, text):
    with pytest.raises(ExpressionError):
        select(df, sort=text)


def test_sort_names_a_missing_column(df):
    with pytest.raises(ExpressionError, match="no column speed"):
        select(df, sort="speed")


def test_query_command_refuses_escapes_and_leaves_the_database_unchanged(tmp_path):
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(storage=url, study_name="s", directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "latency_ms"])
    candidate = Candidate.full(create_model("test_vit")).to_dict()
    for acc, lat in [(0.9, 3.0), (0.95, 5.0), (0.8, 1.0)]:
        study.add_trial(
            optuna.trial.create_trial(
                values=[acc, lat], user_attrs={"macs": int(lat * 100), "candidate": candidate}
            )
        )
    digest = hashlib.sha256(db.read_bytes()).hexdigest()

    out = vitpareto(
        "query", "--storage", url, "--study", "s", "--where", "latency_ms < 4 and accuracy > 0.85",
        "--format", "json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"trial":0' in out.stdout.replace(" ", "") and '"trial":1' not in out.stdout

    # the whole corpus runs through select() above; here one of each kind, end to end
    for text in [ESCAPES[0], ESCAPES[1], ESCAPES[8], ESCAPES[11], ESCAPES[12], "nonexistent > 1"]:
        out = vitpareto("query", "--storage", url, "--study", "s", "--where", text, cwd=tmp_path)
        assert out.returncode == 2, (text, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    out = vitpareto("query", "--storage", url, "--study", "s", "--sort", "accuracy.__class__")
    assert out.returncode == 2 and "not a column name" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]  # no marker, no written file
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
