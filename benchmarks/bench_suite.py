"""How long the test suite takes on this machine, and where its time goes.

Clones this repository (``--rev``, default HEAD) into a temporary folder, builds its
``.venv`` once (not timed: ``make test`` reuses a fresh one), then runs ``make test`` (or
``make test-fast``) ``--runs`` times, each from a clean tree (``git clean``, the venv
kept), alone on the machine. Reports each run's wall time and the median, pass or fail,
and the slowest tests of the median run with what they spend their time on. Writes the
section ``suite:LABEL`` of RESULTS.md. ``--from-log`` formats the output of a run made
by hand instead (``pytest --durations=N``), with its wall time.

    python benchmarks/bench_suite.py [--runs 3] [--rev HEAD] [--label after] [--fast]
    python benchmarks/bench_suite.py --label before --from-log run.log --wall 1207
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)$")
SUMMARY = re.compile(r"((?:\d+ \w+, )*\d+ (?:passed|failed)[^=]*?) in ([\d.]+)s")
SPENDS = {  # test module -> what its slow tests spend their time on
    "tests/cluster/test_ray.py": "Ray nodes started; `vitpareto search` processes on them",
    "tests/cluster/test_backends.py": "`vitpareto search` processes, killed and resumed",
    "tests/cluster/test_sampler_resume.py": "`vitpareto search` processes, killed and resumed",
    "tests/cluster/test_postgres.py": "a PostgreSQL server; two search processes",
    "tests/search/test_train.py": "training: a 10-epoch supernet, a plain model of equal compute",
    "tests/search/test_deployed.py": "ONNX and .pt2 exports; a process running them",
    "tests/search/test_backbones.py": "training one epoch, a search, ONNX and .pt2 exports",
    "tests/search/test_channels.py": "training one epoch, a search, ONNX and .pt2 exports",
    "tests/search/test_searched_exits.py": "training one epoch, a search, exports",
    "tests/search/test_study.py": "training; a search process killed and resumed",
    "tests/search/test_pipeline.py": "searches, fine-tuning, exports",
    "tests/search/test_trained_model.py": "`search --model`: ranking, search, fine-tuning",
    "tests/search/test_teacher.py": "training a wider teacher, distilling from it",
    "tests/evaluators/test_latency.py": "timing rounds; torch.compile",
    "tests/evaluators/test_variant_exports.py": "ONNX and .pt2 exports of 17 variants",
    "tests/spaces/test_importance.py": "ranking criteria on 17 variants; a plain training",
    "tests/spaces/test_models.py": "timm model creation (pretrained weights refused offline)",
    "tests/test_layout.py": "a wheel built and imported",
    "tests/search/test_samplers.py": "hundreds of trials of a synthetic scorer",
}


def parse(log: str) -> tuple[str, list[tuple[float, str, str]]]:
    """(pytest's summary line, [(seconds, phase, test)]) of one run's output."""
    rows, summary = [], "no summary"
    for line in log.splitlines():
        m = DURATION.match(line.strip())
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3)))
        s = SUMMARY.search(line)
        if s:
            summary = s.group(1)
    return summary, rows


def timed_runs(rev: str, runs: int, target: str, done_one=None) -> list[tuple[float, str, str]]:
    """(wall seconds, summary, output) of each ``make target`` in a clean clone of ``rev``;
    ``done_one(runs so far)`` after each (the section is written as the runs come in)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="vitpareto-suite-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
        print("building .venv (not timed) ...", flush=True)
        subprocess.run(["make", ".venv/.installed"], cwd=clone, check=True)
        for i in range(runs):
            subprocess.run(["git", "clean", "-qxfd", "-e", ".venv"], cwd=clone, check=True)
            start = time.perf_counter()
            done = subprocess.run(["make", target], cwd=clone, capture_output=True, text=True)
            wall = time.perf_counter() - start
            summary, _ = parse(done.stdout)
            ok = "passed" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
            print(f"run {i + 1}: {wall / 60:.1f} min, {summary}, {ok}", flush=True)
            out.append((wall, f"{summary}; make {ok}", done.stdout + done.stderr))
            if done_one is not None:
                done_one(out)
    return out


def table(rows: list[tuple[float, str, str]], top: int) -> str:
    lines = ["| seconds | phase | test | what it spends them on |", "|---:|---|---|---|"]
    for sec, phase, test in sorted(rows, reverse=True)[:top]:
        what = SPENDS.get(test.split("::")[0], "")
        if phase == "teardown":  # a worker's last test: its session fixtures end there
            what = "the worker's session fixtures ending (its Ray cluster stopped)"
        lines.append(f"| {sec:.1f} | {phase} | `{test}` | {what} |")
    return "\n".join(lines)


def section(label: str, target: str, runs: list[tuple[float, str, str]], top: int, how: str) -> str:
    walls = [w for w, _, _ in runs]
    median = statistics.median(walls)
    chosen = min(runs, key=lambda r: abs(r[0] - median))
    _, rows = parse(chosen[2])
    text = [
        f"## Test suite, {label} (bench_suite.py)",
        "",
        f"{stamp()}. {how}",
        "",
        "| run | wall | result |",
        "|---:|---:|---|",
        *[f"| {i + 1} | {w / 60:.1f} min | {s} |" for i, (w, s, _) in enumerate(runs)],
        "",
        f"Median {median / 60:.1f} min. The slowest tests of the run nearest the median "
        f"(pytest's durations; with two workers they overlap):",
        "",
        table(rows, top),
    ]
    return "\n".join(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rev", default="HEAD")
    p.add_argument("--label", default="after")
    p.add_argument("--fast", action="store_true", help="time make test-fast instead")
    p.add_argument("--top", type=int, default=25, help="slowest tests listed")
    p.add_argument("--from-log", type=Path, help="format this pytest output instead")
    p.add_argument("--wall", type=float, help="with --from-log: its wall seconds")
    p.add_argument("--how", default="", help="with --from-log: how that run was made")
    args = p.parse_args()
    target = "test-fast" if args.fast else "test"
    if args.from_log:
        log = args.from_log.read_text()
        runs = [(args.wall or 0.0, parse(log)[0], log)]
        how = args.how
        write_section(f"suite:{args.label}", section(args.label, target, runs, args.top, how))
    else:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        how = (
            f"`make {target}` on a clean clone of {rev} (its .venv built first, not timed), "
            "alone on the machine."
        )
        timed_runs(
            args.rev,
            args.runs,
            target,
            lambda runs: write_section(
                f"suite:{args.label}", section(args.label, target, runs, args.top, how)
            ),
        )
    print(f"wrote the suite:{args.label} section of {Path(__file__).with_name('RESULTS.md')}")


if __name__ == "__main__":
    main()
