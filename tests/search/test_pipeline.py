"""Search to standalone models: export, reload, portable formats, the front's second stage,
parallel workers, the report, and the mistakes a user can make on the way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

import vitpareto
from tests.helpers.cli import vitpareto as cli
from vitpareto.evaluators import AccuracyEvaluator
from vitpareto.search import (
    SearchConfig,
    load_supernet,
    rescore_front,
    search,
)
from vitpareto.search.explore import front_trials
from vitpareto.search.outputs import disagreement
from vitpareto.spaces import VitParetoError

pytestmark = pytest.mark.slow  # training, searches, exports

CONFIG = dict(latency_repeats=3)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, trained_net):
    """A supernet trained one epoch on digits and a 6-trial study of it."""
    d = tmp_path_factory.mktemp("pipeline")
    shutil.copy(trained_net, d / "net.pt")  # tests here write beside it
    url = f"sqlite:///{d / 'r.db'}"
    search(load_supernet(d / "net.pt"), url, "s", 6, SearchConfig(**CONFIG), progress=False)
    return d, url


def _study(url, name):
    return optuna.load_study(study_name=name, storage=url)


def _accuracy(model, net):
    data = net.load_data(batch_size=128)
    return AccuracyEvaluator(data.val, progress=False).score(model, net.elastic.spec)["accuracy"]


PORTABLE = """
import sys, json
sys.modules["vitpareto"] = None  # these files must load without vitpareto (or timm)
sys.modules["timm"] = None
import numpy as np, torch, onnxruntime as ort
d = sys.argv[1]
x = torch.from_numpy(np.load(d + "/x.npy"))
pt2 = torch.export.load(d + "/model.pt2").module()(x)
pt2 = (pt2[0] if isinstance(pt2, (tuple, list)) else pt2).detach().numpy()  # logits first
onnx = ort.InferenceSession(d + "/model.onnx").run(None, {"images": x.numpy()})[0]
np.save(d + "/pt2.npy", pt2); np.save(d + "/onnx.npy", onnx)
"""


def test_export_reload_equals_stored_accuracy_and_portable_logits(searched, tmp_path):
    import numpy as np

    d, url = searched
    study = _study(url, "s")
    out = cli("export", "--storage", url, "--study", "s", "--pareto", "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    net = load_supernet(d / "net.pt")
    front = front_trials(study)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        f"trial_{t.number}" for t in front
    )
    for t in front:
        mdir = tmp_path / "m" / f"trial_{t.number}"
        for name in ("config.json", "model.safetensors", "candidate.json", "metrics.json"):
            assert (mdir / name).is_file()
        assert "## Loading" in (mdir / "README.md").read_text()
        assert json.loads((mdir / "candidate.json").read_text()) == t.user_attrs["candidate"]
        metrics = json.loads((mdir / "metrics.json").read_text())
        assert metrics["deployed_latency_ms"] > 0 and metrics["deployed_speedup"] > 0
        # the deployed figure agrees with the search's, or the export said why not
        assert disagreement(metrics) is None or f"trial {t.number}:" in out.stderr
        model = vitpareto.load(mdir)
        assert _accuracy(model, net) == t.user_attrs["accuracy"]
        x = torch.randn(3, 3, 32, 32)
        np.save(mdir / "x.npy", x.numpy())
        run = subprocess.run(
            [sys.executable, "-c", PORTABLE, str(mdir)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        with torch.no_grad():  # a model with exits ships its exit policy
            ref = (model.forward_dynamic(x)[0] if model.exit_heads else model(x)).numpy()
        assert np.abs(np.load(mdir / "pt2.npy") - ref).max() < 1e-5
        assert np.abs(np.load(mdir / "onnx.npy") - ref).max() < 1e-4


def test_export_mistakes_exit_2_and_change_nothing(searched, tmp_path):
    d, url = searched
    first = cli("export", "--storage", url, "--study", "s", "--trial", "0", "--out", str(tmp_path))
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "trial_0" / "model.safetensors").read_bytes()
    for args, message in [
        (["--study", "s", "--trial", "0", "--no-portable"], "already exists"),
        (["--study", "s", "--trial", "99"], "no completed trial 99"),
        (["--study", "s"], "--pareto, or --trial N"),
        (["--study", "nope", "--pareto"], "no study 'nope'"),
        (["--study", "s", "--trial", "1", "--supernet", str(d / "none.pt")], "none.pt"),
    ]:
        out = cli("export", "--storage", url, *args, "--out", str(tmp_path))
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert (tmp_path / "trial_0" / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "trial_1").exists()
    assert (tmp_path / "trial_0").stat().st_mode & 0o044  # readable by others, as the umask says
    (tmp_path / "file").write_text("x")
    for cmd in ("export", "report"):
        extra = ["--pareto"] if cmd == "export" else []
        out = cli(cmd, "--storage", url, "--study", "s", *extra, "--out", str(tmp_path / "file"))
        assert out.returncode == 2 and "is a file" in out.stderr, out.stderr
    out = cli("report", "--storage", f"sqlite:///{tmp_path / 'no.db'}", "--study", "s")
    assert out.returncode == 2 and "--out" in out.stderr


def test_front_finetuned_and_remeasured_into_its_own_study(searched, tmp_path):
    d, url = searched
    net = load_supernet(d / "net.pt")
    config = SearchConfig(latency="predicted", **CONFIG)
    url2 = f"sqlite:///{tmp_path / 'p.db'}"
    study = search(net, url2, "p", 5, config, progress=False)
    assert all(t.user_attrs["latency_predicted"] for t in study.trials)
    front = rescore_front(net, url2, "p", config, steps=5, progress=False, lr=1e-4)
    assert front.study_name == "p/front"
    # its hypervolume reference is the full model timed, like its trials' latency
    assert front.user_attrs["full"]["latency_measured"] is True
    assert front.user_attrs["full"]["latency_ms"] != study.user_attrs["full"]["latency_ms"]
    src = {t.number: t for t in front_trials(study)}
    got = front.get_trials(states=(TrialState.COMPLETE,))
    distinct = {json.dumps(t.user_attrs["candidate"], sort_keys=True) for t in src.values()}
    assert len(got) == len(distinct)  # each candidate on the front once
    assert {t.user_attrs["source_trial"] for t in got} <= set(src)
    for t in got:
        s = src[t.user_attrs["source_trial"]]
        assert t.params == s.params and t.user_attrs["fidelity"] == "finetuned"
        assert t.user_attrs["finetune"]["steps"] == 5 and t.user_attrs["finetune"]["lr"] == 1e-4
        assert t.user_attrs["shared_accuracy"] == s.user_attrs["accuracy"]
        assert t.user_attrs["predicted_latency_ms"] == s.user_attrs["latency_ms"]
        assert t.user_attrs["latency_predicted"] is False and "latency_iqr_ms" in t.user_attrs
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency_ms"]]
        if t.user_attrs["exit_latency_ms"]:  # expected latency from the fine-tuned exit mix
            mix = zip(t.user_attrs["exit_fraction"], t.user_attrs["exit_latency_ms"], strict=True)
            assert t.user_attrs["latency_ms"] == pytest.approx(sum(f * ms for f, ms in mix))
    # the stage resumes: nothing done twice; another step count is refused
    assert len(rescore_front(net, url2, "p", config, steps=5, progress=False).trials) == len(got)
    with pytest.raises(VitParetoError, match="fine-tuned with 5 steps"):
        rescore_front(net, url2, "p", config, steps=7, progress=False)
    with pytest.raises(VitParetoError, match="learning rate 0.0001, not 0.0005"):
        rescore_front(net, url2, "p", config, steps=5, progress=False, lr=5e-4)
    # the fine-tuned weights are what export writes: its accuracy is the stored one
    t = got[0]
    out = cli("export", "--storage", url2, "--study", "p/front", "--trial", str(t.number),
              "--no-portable", "--out", str(tmp_path / "m"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    model = vitpareto.load(tmp_path / "m" / f"trial_{t.number}")
    assert _accuracy(model, net) == t.user_attrs["accuracy"]
    # an artifact store that moved: a clear message, then --artifacts finds it
    (tmp_path / "artifacts").rename(tmp_path / "moved")
    args = ["export", "--storage", url2, "--study", "p/front", "--trial", str(t.number)]
    out = cli(*args, "--no-portable", "--out", str(tmp_path / "m2"))
    assert out.returncode == 2 and "pass --artifacts DIR" in out.stderr, out.stderr
    assert not (tmp_path / "m2").exists()
    out = cli(*args, "--artifacts", str(tmp_path / "moved"), "--out", str(tmp_path / "m2"))
    assert out.returncode == 0, out.stderr


def test_parallel_workers_reach_the_count_exactly(searched, tmp_path):
    d, _ = searched
    url = f"sqlite:///{tmp_path / 'j.db'}"
    net = load_supernet(d / "net.pt")
    search(net, url, "j", 6, SearchConfig(**CONFIG), progress=False, jobs=2)
    trials = _study(url, "j").get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 6
    assert all("candidate" in t.user_attrs and "latency_ms" in t.user_attrs for t in trials)
    # each worker samples its own candidates (one seed for all would repeat them)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6


def test_constraints_and_report(searched, tmp_path):
    from vitpareto.search import load_trials

    d, url = searched
    df = load_trials(url, "s")
    limit = float(df["latency_ms"].median())
    url2 = f"sqlite:///{tmp_path / 'c.db'}"
    config = SearchConfig(max_latency_ms=limit, **CONFIG)
    study = search(load_supernet(d / "net.pt"), url2, "c", 8, config, progress=False)
    df = load_trials(url2, "c")
    assert (df.loc[df["feasible"], "latency_ms"] <= limit).all()
    assert (df.loc[~df["feasible"], "latency_ms"] > limit).all()
    assert all(t.user_attrs["latency_ms"] <= limit for t in study.best_trials)
    out = cli("query", "--storage", url2, "--study", "c")
    assert "hypervolume" in out.stdout and "reference: accuracy 0, latency_ms" in out.stdout
    out = cli("report", "--storage", url2, "--study", "c", "--out", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "plotly" in page and "Hypervolume" in page and "<table" in page
    for png in ("front.png", "knobs.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:4] == b"\x89PNG"


def test_finetune_a_trial_by_number(searched, tmp_path):
    d, url = searched
    t = _study(url, "s").trials[0]
    args = ["finetune", "--supernet", str(d / "net.pt"), "--storage", url, "--study", "s"]
    out = cli(*args, "--trial", "0", "--steps", "3", "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["candidate"] == t.user_attrs["candidate"]
    assert metrics["shared_accuracy"] == t.user_attrs["accuracy"]
    out = cli(*args, "--trial", "42", "--out", str(tmp_path / "m2"))
    assert out.returncode == 2 and "no completed trial 42" in out.stderr


def test_optuna_dashboard_reads_the_database_unchanged(searched):
    import io

    from optuna_dashboard import wsgi

    _, url = searched
    app = wsgi(optuna.storages.RDBStorage(url))

    def get(path):
        status = {}
        env = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
        }
        body = b"".join(app(env, lambda s, h, e=None: status.update(s=s)))
        assert status["s"].startswith("200"), status
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    sid = next(s["study_id"] for s in studies if s["study_name"] == "s")
    study = get(f"/api/studies/{sid}")
    assert len(study["trials"]) == len(_study(url, "s").trials)
    keys = {a["key"] for a in study["trials"][0]["user_attrs"]}
    assert {"candidate", "accuracy", "latency_ms", "fidelity"} <= keys
