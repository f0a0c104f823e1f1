"""``vitpareto report``: an HTML page and PNG plots of a study.

``report.html`` holds an interactive Pareto plot (every trial, the front joined, details
on hover: the trial, its metrics and knobs), the hypervolume with its reference point, and
the front as a table. The plotting library is embedded, so the page opens offline.
``front.png`` is the same plot as an image; ``knobs.png`` plots each knob's summary
(patch size, mean keep ratio, kept heads, MLP channels, exits) against each objective.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from vitpareto.errors import VitParetoError
from vitpareto.files import atomic_write
from vitpareto.search.explore import (
    describe_reference,
    front_hypervolume_of,
    front_study,
    objectives_of,
)
from vitpareto.search.outputs._query import trials_frame

LABELS = {
    "accuracy": "accuracy",
    "latency_ms": "latency (ms)",
    "macs": "MACs per image",
    "params": "parameters",
}


def knob_summary(df):
    """One column per knob, summed or averaged over blocks, from each trial's candidate."""
    rows = []
    for text in df["candidate"]:
        c = json.loads(text)
        rows.append(
            {
                "patch size": c["patch_size"],
                "mean keep ratio": sum(c["keep"]) / len(c["keep"]),
                "heads kept": sum(c["heads"]),
                "q/k channels kept": sum(
                    h * q for h, q in zip(c["heads"], c["qk_dim"], strict=True)
                ),
                "MLP channels kept": sum(c["mlp"]),
                "exits": len(c["exits"]),
            }
        )
    return pd.DataFrame(rows, index=df.index)


def _axes(objectives: list[str]) -> tuple[str, str]:
    """The two objectives plotted: accuracy against the first cost one, when present."""
    x = next((o for o in objectives if o != "accuracy"), objectives[0])
    y = "accuracy" if "accuracy" in objectives else objectives[-1]
    return x, y


def full_point(study, x: str, y: str) -> tuple[float, float] | None:
    """The full model's place on the plot (its measured accuracy, its reference cost), or
    None for a study from before its accuracy was measured."""
    full = study.user_attrs.get("full") or {}
    if x in full and y in full:
        return float(full[x]), float(full[y])
    return None


def write_report(study, out: str | os.PathLike, rescored=None) -> dict[str, Path]:
    """Write report.html, front.png and knobs.png into ``out``; return their paths.

    ``rescored``: the study's ``NAME/front`` study, drawn over it (the front after the
    second stage) and tabled; by default looked up in the same storage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = trials_frame(study)
    if df.empty:
        raise VitParetoError(f"study {study.study_name!r} has no completed trials to report")
    if rescored is None:
        rescored = front_study(study)
    second = trials_frame(rescored) if rescored is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    objectives = objectives_of(study)
    x, y = _axes(objectives)
    hv, ref = front_hypervolume_of(study, df)
    front = df[df["pareto"]].sort_values(x)
    paths = {"html": out / "report.html", "front": out / "front.png", "knobs": out / "knobs.png"}

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    # candidates with a cascade or exits (their latency the expected one) apart from static
    dynamic = df["share_final"].notna() if "share_final" in df.columns else df["trial"] < 0
    static = df[~dynamic]
    ax.scatter(static[x], static[y], s=14, c="#9aa7b8", label=f"static trials ({len(static)})")
    if dynamic.any():
        n = int(dynamic.sum())
        ax.scatter(df[dynamic][x], df[dynamic][y], s=16, marker="^", c="#ff7f0e",
                   label=f"cascade or exits, expected cost ({n})")  # fmt: skip
    bad = df[~df["feasible"]]
    if not bad.empty:
        ax.scatter(bad[x], bad[y], s=14, marker="x", c="#d62728", label="infeasible")
    ax.plot(front[x], front[y], "-o", c="#1f77b4", ms=5, label=f"front ({len(front)})")
    full = full_point(study, x, y)
    if full is not None:
        ax.scatter(*full, s=140, marker="*", c="black", zorder=5, label="full model")
    if second is not None and not second.empty:
        f2 = second[second["pareto"]].sort_values(x)
        ax.plot(f2[x], f2[y], "--D", c="#2ca02c", ms=5, label=f"front re-scored ({len(f2)})")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.set_title(f"{study.study_name}: hypervolume {hv:.4f}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(paths["front"], lambda dest: fig.savefig(dest, format="png"))
    plt.close(fig)

    knobs = knob_summary(df)
    fig, axes = plt.subplots(
        len(objectives),
        len(knobs.columns),
        figsize=(2.6 * len(knobs.columns), 2.4 * len(objectives)),
    )
    axes = [axes] if len(objectives) == 1 else axes
    for r, o in enumerate(objectives):
        for c, k in enumerate(knobs.columns):
            a = axes[r][c]
            a.scatter(knobs[k], df[o], s=8, c=df["pareto"].map({True: "#1f77b4", False: "#b8c2cf"}))
            a.set_xlabel(k, fontsize=8)
            a.set_ylabel(LABELS.get(o, o) if c == 0 else "", fontsize=8)
            a.tick_params(labelsize=7)
    fig.suptitle("knobs against objectives (blue: the front)", fontsize=10)
    fig.tight_layout()
    atomic_write(paths["knobs"], lambda dest: fig.savefig(dest, format="png"))
    plt.close(fig)

    page = _html(study, df, front, x, y, hv, describe_reference(ref), second)
    atomic_write(paths["html"], page)
    return paths


def _html(study, df, front, x, y, hv, ref_text, second=None) -> str:
    cols = [c for c in ("accuracy", "latency_ms", "speedup", "macs", "params") if c in df]

    def table(rows, first: str, extra: tuple[str, ...] = ()) -> str:
        show = [c for c in (first, *cols, *extra, "fidelity") if c in rows]
        return (
            rows[show]
            .join(knob_summary(rows))
            .to_html(index=False, float_format=lambda v: f"{v:.4g}")
        )

    traces = [
        (df, "trials", "markers", dict(color="#9aa7b8", size=7), None, "trial"),
        (front, "front", "lines+markers", dict(color="#1f77b4", size=9), None, "trial"),
    ]
    table2 = ""
    if second is not None and not second.empty:
        f2 = second[second["pareto"]].sort_values(x)
        marker = dict(color="#2ca02c", size=9, symbol="diamond")
        traces.append((f2, "front re-scored", "lines+markers", marker, "dash", "source trial"))
        table2 = (
            f"<h2>The front re-scored (study {html.escape(study.study_name)}/front)</h2>"
            + table(f2, "source_trial", ("test_accuracy", "shared_accuracy"))
        )
    plot = _plot(study, traces, x, y, cols)
    front_table = table(front, "trial")
    a = study.user_attrs
    model = a.get("model", {}).get("name", "?")
    target = a.get("target") or {}
    hw = target.get("gpu") or target.get("cpu", "?")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vitpareto: {html.escape(study.study_name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ddd;padding:3px 6px}}
th{{background:#f3f5f8}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>{html.escape(model)} on {html.escape(str(a.get("dataset", "?")))}; latency target:
{html.escape(str(hw))}. {len(df)} completed trials, {len(front)} on the front.</p>
<p><b>Hypervolume {hv:.4f}</b> ({html.escape(ref_text)}; the share of the box between the
reference and a perfect, free model that the front dominates).</p>
<p>{html.escape(_full_text(study))}</p>
{plot}
<h2>The front</h2>
<p>Plots as images: <a href="front.png">front.png</a>, <a href="knobs.png">knobs.png</a>.</p>
{front_table}
{table2}
</body></html>
"""


def _full_text(study) -> str:
    full = study.user_attrs.get("full") or {}
    if "accuracy" not in full:
        return "The full model's accuracy was not measured in this study."
    return (
        f"The full model: accuracy {full['accuracy']:.4f}, latency "
        f"{full.get('latency_ms', float('nan')):.4g} ms (the star). A candidate it dominates "
        "(no more accurate, no faster, no cheaper) is never on the front."
    )


def _plot(study, traces, x, y, cols) -> str:
    """The interactive front (plotly, self-contained): the full model as a star, every
    trial, the front and the re-scored front, each point's knobs on hover."""
    import plotly.graph_objects as go  # plotly only where a report is written

    fig = go.Figure()
    full = full_point(study, x, y)
    if full is not None:
        fig.add_trace(go.Scatter(x=[full[0]], y=[full[1]], mode="markers", name="full model",
                                 marker=dict(color="black", size=14, symbol="star")))  # fmt: skip
    for rows, name, mode, marker, dash, label in traces:
        fig.add_trace(
            go.Scatter(
                x=rows[x],
                y=rows[y],
                mode=mode,
                name=name,
                marker=marker,
                line=dict(dash=dash) if dash else None,
                hovertext=_hover(rows, label, cols),
                hoverinfo="text",
            )
        )
    fig.update_layout(
        xaxis_title=LABELS.get(x, x),
        yaxis_title=LABELS.get(y, y),
        template="plotly_white",
        height=520,
    )
    return fig.to_html(full_html=False, include_plotlyjs=True)


def _hover(rows, label: str, cols: list[str]) -> list[str]:
    """Each point's hover text: its trial, figures and knobs."""
    shown = rows[[c for c in cols if c in rows]].join(knob_summary(rows)).round(4)
    return [
        f"{label} {t}<br>" + "<br>".join(f"{k}: {v}" for k, v in r.items())
        for t, (_, r) in zip(rows[label.replace(" ", "_")], shown.iterrows(), strict=True)
    ]
