"""The full model is a point of every front: a search measures its accuracy, and a trial it
dominates (no more accurate, no faster, no cheaper) is never on the front that query,
report, export and the front's second stage read."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import create_trial

from tests.helpers.cli import vitpareto
from tests.helpers.hostile import copy_db
from vitpareto.evaluators import AccuracyEvaluator
from vitpareto.search.explore import beaten_by_full, front_trials
from vitpareto.search.supernet import load_supernet
from vitpareto.spaces import Candidate

OBJECTIVES = ["accuracy", "latency_ms"]
FULL = {"accuracy": 0.95, "latency_ms": 10.0, "macs": 1000, "params": 100}


def _study(trials):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("full", FULL)
    for accuracy, speedup in trials:
        study.add_trial(
            create_trial(
                values=[accuracy, FULL["latency_ms"] / speedup],
                user_attrs={"speedup": speedup},
            )
        )
    return study


def test_a_trial_the_full_model_dominates_is_off_the_front():
    # 0: less accurate and slower than the full model (the demo's trial 1); 1: more
    # accurate, slower; 2: faster, less accurate
    study = _study([(0.94, 0.83), (0.96, 0.8), (0.90, 2.0)])
    assert {t.number for t in study.best_trials} == {0, 1, 2}  # Optuna alone keeps 0
    assert {t.number for t in front_trials(study)} == {1, 2}
    values = {"accuracy": 0.95, "latency_ms": 12.0, "macs": 1000}
    assert beaten_by_full(values, {"speedup": 0.9}, FULL)
    assert not beaten_by_full(values, {"speedup": 1.0}, FULL)  # the full model's own figures
    assert not beaten_by_full(values, {"speedup": 1.01}, FULL)  # faster
    assert not beaten_by_full({**values, "macs": 999}, {"speedup": 0.9}, FULL)  # cheaper
    assert not beaten_by_full({"accuracy": 0.9, "loss": 1.0}, {}, FULL)  # unknown objective
    assert not beaten_by_full(values, {"speedup": 0.9}, FULL, doubt=0.15)  # maybe faster
    assert beaten_by_full(values, {"speedup": 0.8}, FULL, doubt=0.15)
    # the full model as a trial (nothing cut), timed a little slow beside itself
    assert not beaten_by_full(
        {"accuracy": 0.95}, {"speedup": 0.97, "macs": 1000, "params": 100}, FULL
    )
    # a study from before the full model's accuracy was measured: Optuna's front
    study.set_user_attr("full", {"latency_ms": 10.0})
    assert {t.number for t in front_trials(study)} == {0, 1, 2}


def test_a_search_measures_the_full_model_as_its_trials(small_net, small_study):
    _, url = small_study
    full = optuna.load_study(study_name="s", storage=url).user_attrs["full"]
    net = load_supernet(small_net)
    evaluator = AccuracyEvaluator(net.load_data(batch_size=128).val, max_batches=1)
    measured = evaluator(net.elastic.eval(), Candidate.full(net.elastic.spec))["accuracy"]
    assert full["accuracy"] == pytest.approx(measured)


def test_query_report_and_export_leave_dominated_trials_off(small_study, tmp_path):
    url = f"sqlite:///{copy_db(small_study[0], tmp_path / 'r.db')}"
    study = optuna.load_study(study_name="s", storage=url)
    full = study.user_attrs["full"]
    study.set_user_attr("full", {**full, "accuracy": 1.0})  # more accurate than any trial
    kept = {  # faster than the full model, or the full model itself (nothing cut)
        t.number
        for t in study.best_trials
        if t.user_attrs["speedup"] > 1
        or (t.user_attrs["macs"], t.user_attrs["params"]) == (full["macs"], full["params"])
    }
    assert {t.number for t in front_trials(study)} == kept
    out = vitpareto("query", "--storage", url, "--study", "s", "--pareto", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert {r["trial"] for r in json.loads(out.stdout)} == kept
    out = vitpareto("report", "--storage", url, "--study", "s", "--out", tmp_path / "rep")
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "full model" in page
    if kept:
        out = vitpareto("export", "--storage", url, "--study", "s", "--pareto", "--out",
                        tmp_path / "m", "--no-portable", "--no-measure")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert {p.name for p in (tmp_path / "m").iterdir()} == {f"trial_{n}" for n in kept}
    else:  # nothing beats the full model: export says so, and writes nothing
        out = vitpareto("export", "--storage", url, "--study", "s", "--pareto", "--out",
                        tmp_path / "m", "--no-portable")  # fmt: skip
        assert out.returncode == 2 and "full model" in out.stderr, out.stderr
        assert not (tmp_path / "m").exists()
