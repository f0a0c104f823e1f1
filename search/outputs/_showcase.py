"""The compression showcase: one real architecture cut by each knob, measured side by side."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from vitpareto.evaluators import (
    ExitPath,
    analytic_macs,
    check_runtime,
    count_params,
    exit_macs,
    prepare,
    speedup,
    summarize,
    time_interleaved,
)
from vitpareto.spaces import Candidate, ElasticViT, describe


def showcase(model: nn.Module) -> dict[str, Candidate]:
    """One candidate per knob (and two joint ones), scaled to the model's shape."""
    s = describe(model)
    d = s.depth
    evit = {round(d / 4): 0.7, round(d / 2): 0.7, round(3 * d / 4): 0.7}
    bigger = [p for p in s.valid_patch_sizes() if p > s.patch_size]
    half_mlp = [m // 2 for m in s.mlp_hidden]
    cands = {
        "full": Candidate.full(s),
        "tokens: EViT keep 0.7 x3": Candidate.make(s, keep=evit, fuse=True),
        "tokens: ToMe merge 0.7 x3": Candidate.make(s, keep=evit, token_mode="merge"),
        "heads: half": Candidate.make(s, heads=max(1, s.num_heads // 2)),
        "q/k dim: half": Candidate.make(s, qk_dim=max(1, s.head_dim // 2)),
        "mlp: half": Candidate.make(s, mlp=half_mlp),
        "depth: last quarter off": Candidate.make(
            s, heads={b: 0 for b in range(d - d // 4, d)}, mlp={b: 0 for b in range(d - d // 4, d)}
        ),
        f"exit after block {d // 2 - 1} (all leave)": Candidate.make(
            s, exits=(d // 2 - 1,), exit_threshold=0.9
        ),
        "joint: heads 3/4, mlp 3/4, keep 0.7": Candidate.make(
            s,
            heads=max(1, (3 * s.num_heads) // 4),
            mlp=[3 * m // 4 for m in s.mlp_hidden],
            keep=evit,
        ),
    }
    if bigger:
        cands[f"patch: {min(bigger)} px"] = Candidate.make(s, patch_size=min(bigger))
    return cands


@dataclass
class Row:
    name: str
    params: int
    macs: int
    mac_ratio: float
    median_ms: float
    iqr_ms: float
    speedup: float


def measure(
    model: nn.Module,
    batch: int = 8,
    repeats: int = 15,
    device: str = "cpu",
    candidates: dict[str, Candidate] | None = None,
    progress: bool = True,
    runtime: str = "eager",
) -> list[Row]:
    """Compress ``model`` with each candidate and time all of them interleaved on ``device``
    under ``runtime`` (each in the form export writes for it)."""
    check_runtime(runtime, device)
    model = model.eval()
    s = describe(model)
    cands = candidates or showcase(model)
    full_macs = analytic_macs(s)
    # the untouched timm model is the reference every speedup is measured against
    fns = {"original (timm)": model.to(device)}
    macs, params = {"original (timm)": full_macs}, {"original (timm)": count_params(model)}
    elastic = ElasticViT(copy.deepcopy(model)).eval()
    for name, c in cands.items():
        m = elastic.extract(c).eval().to(device)
        if c.exits:  # a sample that leaves at the first exit runs only the blocks before it
            fns[name] = ExitPath(m, 0)
            macs[name] = exit_macs(s, c)[0]
        else:
            fns[name] = m
            macs[name] = analytic_macs(s, c)
        params[name] = count_params(m)
    x = torch.randn(batch, *s.image_shape, device=device)
    fns = {name: prepare(fn, x, runtime) for name, fn in fns.items()}
    bar = tqdm(
        total=repeats,
        desc="timing rounds",
        disable=None if progress else True,
        file=sys.stderr,
        leave=False,
    )
    times = time_interleaved(fns, x, repeats=repeats, progress=lambda r: bar.update(1))
    bar.close()
    ref = times["original (timm)"]
    rows = []
    for name in fns:
        t = summarize(times[name])
        rows.append(
            Row(
                name,
                params[name],
                macs[name],
                full_macs / macs[name],
                t.median_ms,
                t.iqr_ms,
                speedup(ref, times[name]),
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("candidate", "params (M)", "GMACs", "MAC ratio", "median ms", "IQR ms", "speedup")
    body = [
        (
            r.name,
            f"{r.params / 1e6:.2f}",
            f"{r.macs / 1e9:.3f}",
            f"{r.mac_ratio:.2f}x",
            f"{r.median_ms:.1f}",
            f"{r.iqr_ms:.1f}",
            f"{r.speedup:.2f}x",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])
