"""The front's second stage times its models again at length: a trial whose short timing
came out lucky leaves the front, one whose timing came out unlucky by a little joins it,
and the search's own figures are kept beside the new ones."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from tests.helpers.cli import vitpareto as cli
from tests.helpers.nets import trained_supernet
from vitpareto.evaluators import Evaluator, analytic_macs
from vitpareto.search import (
    SearchConfig,
    load_supernet,
    rescore_front,
    search,
)
from vitpareto.search.explore import NEAR, LocalBackend
from vitpareto.spaces import Candidate, VitParetoError

pytestmark = pytest.mark.slow  # training, searches


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A supernet trained one epoch on digits and a 3-trial study of it."""
    d = tmp_path_factory.mktemp("retime")
    trained_supernet(d / "net.pt", random_candidates=0)
    return d, load_supernet(d / "net.pt")


def _study(net, url, name):
    search(net, url, name, 3, SearchConfig(latency_repeats=3), progress=False)
    return optuna.load_study(study_name=name, storage=url)


def _plant(study, cand: Candidate, accuracy: float, latency_ms: float, speedup: float) -> int:
    """A trial as if the search had scored it so: its candidate, accuracy and timing."""
    ref = study.trials[0]
    attrs = dict(ref.user_attrs)
    attrs.update(candidate=cand.to_dict(), accuracy=accuracy, latency_ms=latency_ms)
    attrs["speedup"] = speedup
    study.add_trial(
        create_trial(
            params=ref.params,
            distributions=ref.distributions,
            values=[accuracy, latency_ms],
            user_attrs=attrs,
        )
    )
    return study.trials[-1].number


class MacLatency(Evaluator):
    """A stand-in target whose latency is the candidate's MACs: which candidate is faster
    is known, so which trials the re-timed front keeps is too."""

    name = "latency"
    keys = ("latency_ms", "speedup", "reference_ms")

    def evaluate(self, elastic, candidate, context=None):
        full = analytic_macs(elastic.spec, Candidate.full(elastic.spec)) / 1e6
        ms = analytic_macs(elastic.spec, candidate) / 1e6
        return {"latency_ms": ms, "speedup": full / ms, "reference_ms": full}


class MacBackend(LocalBackend):
    def measured(self, supernet, config):
        return MacLatency()


def test_lucky_trial_leaves_and_near_trial_joins_the_retimed_front(searched, tmp_path):
    d, net = searched
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = _study(net, url, "s")
    rng = random.Random(0)
    cands = {}
    while len(cands) < 3:  # three candidates of distinct costs, none the full model
        c = net.space.sample(rng)
        cands.setdefault(analytic_macs(net.elastic.spec, c), c)
    (_, small), (_, middle), (_, large) = sorted(cands.items(), key=lambda kv: kv[0])
    full = Candidate.full(net.elastic.spec)
    # planted far ahead of the real trials (faster, as accurate as anything can be)
    a = _plant(study, middle, 1.0, 0.010, 500.0)  # on the search's front
    b = _plant(study, small, 1.0, 0.010 * (1 + NEAR / 2), 480.0)  # just behind a
    lucky = _plant(study, full, 0.999, 0.001, 5000.0)  # the fastest, by a lucky timing
    far = _plant(study, large, 0.5, 0.010 * 2, 250.0)  # well behind a: not timed again
    assert {t.number for t in study.best_trials} == {a, lucky}

    front = rescore_front(net, url, "s", rounds=7, progress=False, backend=MacBackend())
    got = {t.user_attrs["source_trial"]: t for t in front.get_trials(deepcopy=False)}
    assert set(got) == {a, b, lucky} and far not in got  # the front, and b within NEAR
    assert front.user_attrs["front_rounds"] == 7
    assert front.user_attrs["full"]["latency_rounds"] == 7
    for n, t in got.items():  # re-timed, the search's figures kept beside
        src = study.trials[n]
        assert t.user_attrs["search_latency_ms"] == src.user_attrs["latency_ms"]
        assert t.user_attrs["search_speedup"] == src.user_attrs["speedup"]
        assert t.user_attrs["latency_rounds"] == 7
        assert t.values[1] == t.user_attrs["latency_ms"] != src.user_attrs["latency_ms"]
    # on the figures timed again, b (cheaper than a, as accurate) is the whole front
    assert [t.user_attrs["source_trial"] for t in front.best_trials] == [b]
    # resumed with the same rounds: nothing timed twice; other rounds are refused
    again = rescore_front(net, url, "s", rounds=7, progress=False, backend=MacBackend())
    assert len(again.trials) == 3
    with pytest.raises(VitParetoError, match="timed at 7 rounds"):
        rescore_front(net, url, "s", rounds=9, progress=False, backend=MacBackend())


def test_front_timed_again_for_real(searched, tmp_path):
    d, net = searched
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = _study(net, url, "s")
    full = Candidate.full(net.elastic.spec)
    lucky = _plant(study, full, 1.0, 1e-4, 400.0)  # the full model, "400x faster than itself"
    front = rescore_front(net, url, "s", rounds=8, progress=False)
    (t,) = [t for t in front.trials if t.user_attrs["source_trial"] == lucky]
    assert t.user_attrs["search_speedup"] == 400.0 and t.user_attrs["latency_count"] == 8
    # the full model against itself, interleaved: about 1x, nowhere near the lucky 400x. Its
    # call is shorter than a time slice, so beside another busy process (a CI runner's) a
    # slice lands on one call of most rounds and 8 rounds can say 0.4x (bench_timing)
    assert 0.1 < t.user_attrs["speedup"] < 10.0
    assert t.user_attrs["latency_ms"] > 1e-4 * 20
    # the front's milliseconds are the reference's over the speedup; the trial's own kept
    ref = front.user_attrs["full"]["latency_ms"]
    assert t.values[1] == t.user_attrs["latency_ms"] == ref / t.user_attrs["speedup"]
    assert t.user_attrs["measured_latency_ms"] > 1e-4 * 20


def test_cli_retimes_the_front_by_default_and_checks_rounds(searched, tmp_path):
    d, _ = searched
    url = f"sqlite:///{tmp_path / 'c.db'}"
    base = ["search", "--supernet", str(d / "net.pt"), "--storage", url, "--trials", "2"]
    for bad in ("2", "-1", "x", "100001"):
        out = cli(*base, "--study", "bad", "--front-rounds", bad, "--no-progress")
        assert out.returncode == 2 and "--front-rounds" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert not any(s.study_name == "bad" for s in optuna.get_all_study_summaries(url))
    out = cli(*base, "--study", "c", "--front-rounds", "12")
    assert out.returncode == 0, out.stderr
    assert "timed again at 12 rounds" in out.stdout
    front = optuna.load_study(study_name="c/front", storage=url)
    done = front.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert done and all(t.user_attrs["latency_rounds"] == 12 for t in done)
    out = cli(*base, "--study", "d", "--front-rounds", "0")
    assert out.returncode == 0, out.stderr
    assert "d/front" not in {s.study_name for s in optuna.get_all_study_summaries(url)}


def test_front_header_marker_written_last(searched, tmp_path, monkeypatch):
    """Two searches sharing one study both open its front: the second may read the front's
    attributes between two of the first's writes, so the marker it trusts
    (``finetune_steps``) must come after every setting it then checks."""
    d, net = searched
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _study(net, url, "s")
    seen = []
    real = optuna.study.Study.set_user_attr

    def record(self, key, value):
        if self.study_name == "s/front":  # what a second process would read right now
            seen.append((key, dict(self.user_attrs)))
        return real(self, key, value)

    monkeypatch.setattr(optuna.study.Study, "set_user_attr", record)
    rescore_front(net, url, "s", rounds=5, progress=False, backend=MacBackend())
    keys = [k for k, _ in seen]
    assert "finetune_steps" in keys and "front_rounds" in keys
    after = [k for k, _ in seen[keys.index("finetune_steps") + 1 :]]
    assert set(after) <= {"full"}  # only what the stage then measures
    for _, attrs in seen:  # a reader at any moment: no marker, or every setting with it
        if "finetune_steps" in attrs:
            assert attrs["front_rounds"] == 5 and "finetune_lr" in attrs
