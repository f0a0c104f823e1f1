"""What a hostile database or option text makes of a message: a stored number past
Python's digit limit, a column name holding a newline, a value thousands of digits long,
each still one line naming what is wrong; and a query matching nothing says so."""

from __future__ import annotations

import pytest

from tests.helpers.cli import vitpareto
from tests.helpers.hostile import READERS, copy_db, reader_args, refused, sql
from tests.helpers.searches import stored
from vitpareto.search.cli import main


@pytest.mark.parametrize("command", READERS)
def test_a_stored_number_past_pythons_digit_limit_names_the_trial(
    capsys, net, db, tmp_path, command
):
    path = copy_db(db[0], tmp_path / "r.db")
    sql(path, "UPDATE trial_user_attributes SET value_json = ? WHERE key = 'macs' "
         "AND trial_id = (SELECT MIN(trial_id) FROM trial_user_attributes)", "1" * 5000)  # fmt: skip
    before = stored(path)
    refused(
        capsys, reader_args(command, f"sqlite:///{path}", tmp_path, net), "'macs'", "not valid JSON"
    )
    assert stored(path) == before


def test_a_column_name_holding_a_newline_stays_on_one_line(capsys, db, tmp_path):
    path = copy_db(db[0], tmp_path / "r.db")
    sql(path, "UPDATE trial_user_attributes SET key = ? WHERE key = 'macs'", "evil\nline")
    url = f"sqlite:///{path}"
    refused(
        capsys, ["query", "--storage", url, "--study", "s", "--sort", "nosuch"], "'evil\\nline'"
    )
    refused(capsys, ["query", "--storage", url, "--study", "s", "--columns", "a\nb"], "'a\\nb'")


def test_a_query_matching_nothing_says_so(capsys, db):
    args = ["query", "--storage", db[1], "--study", "s", "--where", "accuracy > 2"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "Empty DataFrame" not in out.out and "no trial of 3 matches" in out.err


def test_a_value_argparse_refuses_is_not_repeated_whole():
    out = vitpareto("query", "--study", "s", "--limit", "1" * 5000)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--limit" in out.stderr and len(out.stderr) < 500
