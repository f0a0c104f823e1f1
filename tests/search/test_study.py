"""The local search: trials stored in a real SQLite database, resumed after SIGKILL, refused
for another supernet, constraints respected."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from vitpareto.search import SearchConfig, SupernetTrainer, TrainConfig, load_supernet, search
from vitpareto.search.explore import front_trials
from vitpareto.spaces import Candidate, VitParetoError

pytestmark = pytest.mark.slow  # training, a search process killed

CONFIG = dict(latency_repeats=3)


def _train(path, seed):
    trainer = SupernetTrainer.create(
        "test_vit",
        "digits",
        TrainConfig(epochs=1, batch_size=128, random_candidates=1, seed=seed),
        model_kwargs=dict(img_size=32, patch_size=16),
    )
    trainer.fit(path, progress=False)
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory, trained_net):
    """Two supernets of one recipe (the shared one, seed 0) and another seed."""
    return trained_net, _train(tmp_path_factory.mktemp("nets") / "b.pt", 1)


def _complete(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return study.get_trials(states=(TrialState.COMPLETE,))


def test_trials_stored_and_resumed(nets, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    net = load_supernet(nets[0])
    config = SearchConfig(max_latency_ms=1e9, min_accuracy=0.3, **CONFIG)
    study = search(net, url, "s", 5, config, progress=False)
    first = [(t.number, t.values) for t in _complete(url, "s")]
    assert len(first) == 5
    attrs = study.user_attrs
    assert attrs["supernet_sha256"] == net.sha256 and attrs["dataset"] == "digits"
    assert attrs["objectives"] == ["accuracy", "latency_ms"] and "cpu" in attrs["target"]
    for t in _complete(url, "s"):
        c = Candidate.from_dict(t.user_attrs["candidate"]).validate(net.elastic.spec)
        assert net.space.decode(t.params) == c
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency_ms"]]
        for key in ("macs", "params", "latency_iqr_ms", "exit_accuracy", "device_fingerprint"):
            assert key in t.user_attrs
        assert t.user_attrs["fidelity"] == "shared"
    # feasible front members respect the constraint; Optuna's own front is what we report
    for t in study.best_trials:
        assert t.user_attrs["accuracy"] >= 0.3
    # the same command again continues to the new count, keeping what was done
    search(net, url, "s", 7, config, progress=False)
    again = _complete(url, "s")
    assert len(again) == 7 and [(t.number, t.values) for t in again[:5]] == first


def test_another_supernet_is_refused(nets, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    search(load_supernet(nets[0]), url, "s", 2, SearchConfig(**CONFIG), progress=False)
    with pytest.raises(VitParetoError, match="another supernet sha256"):
        search(load_supernet(nets[1]), url, "s", 4, SearchConfig(**CONFIG), progress=False)
    assert len(_complete(url, "s")) == 2


def test_resume_refuses_other_settings_and_foreign_databases(nets, tmp_path):
    import sqlite3

    from tests.helpers.cli import vitpareto

    url = f"sqlite:///{tmp_path / 'r.db'}"
    net = load_supernet(nets[0])
    search(net, url, "s", 2, SearchConfig(**CONFIG), progress=False)
    with pytest.raises(VitParetoError, match="latency_batch 1"):
        search(net, url, "s", 4, SearchConfig(latency_batch=4, **CONFIG), progress=False)
    assert len(_complete(url, "s")) == 2
    # another program's SQLite database is refused, byte for byte untouched
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    before = other.read_bytes()
    for args in (["query", "--study", "s"], ["studies"]):
        out = vitpareto(*args, "--storage", f"sqlite:///{other}")
        assert out.returncode == 2 and "another program" in out.stderr, out.stderr
    assert other.read_bytes() == before
    args = ["search", "--supernet", str(nets[0]), "--study", "s", "--storage", url]
    out = vitpareto(*args, "--device", "tpu")
    assert out.returncode == 2 and "tpu" in out.stderr and "Traceback" not in out.stderr


def test_bad_storage_and_options(nets, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("my notes")
    net = load_supernet(nets[0])
    with pytest.raises(VitParetoError, match="not an SQLite database"):
        search(net, f"sqlite:///{text}", "s", 2, SearchConfig(**CONFIG), progress=False)
    assert text.read_text() == "my notes"
    with pytest.raises(VitParetoError, match="unknown objective"):
        SearchConfig(objectives=("speed",))
    with pytest.raises(VitParetoError, match="cannot be opened"):
        search(net, "nosuchdb://x", "s", 2, SearchConfig(**CONFIG), progress=False)


def test_query_front_filters_and_formats(nets, tmp_path):
    import csv
    import io
    import json as _json

    from tests.helpers.cli import vitpareto
    from vitpareto.search import load_trials

    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = search(load_supernet(nets[0]), url, "q", 6, SearchConfig(**CONFIG), progress=False)
    df = load_trials(url, "q")
    assert len(df) == 6 and {"accuracy", "latency_ms", "macs", "heads_b0"} <= set(df.columns)
    assert set(df.loc[df["pareto"], "trial"]) == {t.number for t in front_trials(study)}

    out = vitpareto("query", "--storage", url, "--study", "q", "--pareto", "--format", "json")
    assert out.returncode == 0, out.stderr
    front = {t.number for t in front_trials(study)}
    assert {r["trial"] for r in _json.loads(out.stdout)} == front
    cut = float(df["latency_ms"].median())
    out = vitpareto(
        "query",
        "--storage",
        url,
        "--study",
        "q",
        "--where",
        f"latency_ms <= {cut}",
        "--sort=-accuracy",
        "--format",
        "csv",
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == int((df["latency_ms"] <= cut).sum())
    accs = [float(r["accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)

    for args, message in [
        (["--study", "nope"], "no study 'nope'"),
        (["--study", "q", "--where", "latency_ms <<< 3"], "not a valid expression"),
        (["--study", "q", "--sort", "speed"], "no column speed"),
    ]:
        out = vitpareto("query", "--storage", url, *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert len(_complete(url, "q")) == 6


def test_scores_on_the_split_the_supernet_was_trained_with(nets):
    import torch

    from vitpareto.evaluators import load_data

    net = load_supernet(nets[1])  # trained with seed 1

    def images(loader):
        return torch.cat([x for x, _ in loader])

    ours = images(net.load_data(batch_size=128).val)
    assert torch.equal(ours, images(load_data("digits", 32, batch_size=128, seed=1).val))
    assert not torch.equal(ours, images(load_data("digits", 32, batch_size=128, seed=0).val))
