"""Exported exit policies checked as a user runs them: the files loaded in a fresh process
without vitpareto or timm, on one image, a batch and each image alone, against eager
``forward_dynamic``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from vitpareto.search.outputs import model_files, portable_files, write_model_dir

PORTABLE = """
import sys
sys.modules["vitpareto"] = None  # these files must load without vitpareto (or timm)
sys.modules["timm"] = None
import numpy as np, torch, onnxruntime as ort
d = sys.argv[1]
pt2 = torch.export.load(d + "/model.pt2").module()  # called as a user would: gradients on
onnx = ort.InferenceSession(d + "/model.onnx")
x8 = torch.from_numpy(np.load(f"{d}/x8.npy"))
runs = {"x1": [x8[:1]], "x8": [x8], "alone": [x8[i : i + 1] for i in range(len(x8))]}
for name, batches in runs.items():  # "alone": each image a batch of one, by every route
    outs = [pt2(x) for x in batches]
    np.save(f"{d}/{name}-pt2-logits.npy", torch.cat([o[0] for o in outs]).detach().numpy())
    np.save(f"{d}/{name}-pt2-exit.npy", torch.cat([o[1] for o in outs]).numpy())
    outs = [onnx.run(None, {"images": x.numpy()}) for x in batches]
    np.save(f"{d}/{name}-onnx-logits.npy", np.concatenate([o[0] for o in outs]))
    np.save(f"{d}/{name}-onnx-exit.npy", np.concatenate([o[1] for o in outs]))
"""


def midway(logits: torch.Tensor) -> float:
    """A threshold between the two middle confidences of ``logits``."""
    conf = logits.softmax(-1).amax(-1).sort().values
    half = len(conf) // 2
    assert conf[half] - conf[half - 1] > 1e-5, "two middle confidences tie: pick other images"
    return float(conf[half - 1] + conf[half]) / 2


def exports_equal_eager(net, model, d, x8, static: bool = False) -> torch.Tensor:
    """Export ``model`` into ``d``, run its files without vitpareto on one image, on
    ``x8`` and on each image of ``x8`` alone, and check them against eager
    ``forward_dynamic``; the exits of ``x8``. ``static``: the files for runtimes without
    control flow too (written beside the exit policy's; one test checks them)."""
    files = model_files(model, net.model_name, net.model_kwargs, net.data["classes"], {})
    portable = portable_files(model)
    shipped = {"model.pt2", "model.onnx"}
    if static:
        shipped |= {"model_static.pt2", "model_static.onnx"}
    assert set(portable) == {"model.pt2", "model.onnx", "model_static.pt2", "model_static.onnx"}
    write_model_dir(d, {**files, **{k: v for k, v in portable.items() if k in shipped}})
    assert shipped <= {p.name for p in d.iterdir()}
    np.save(d / "x8.npy", x8.numpy())
    run = subprocess.run([sys.executable, "-c", PORTABLE, str(d)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name, x in (("x1", x8[:1]), ("x8", x8), ("alone", x8)):
        with torch.no_grad():
            logits, where = model.forward_dynamic(x)
        for fmt in ("pt2", "onnx"):
            got = np.load(d / f"{name}-{fmt}-logits.npy")
            assert np.abs(got - logits.numpy()).max() < 1e-4, (name, fmt)
            assert (np.load(d / f"{name}-{fmt}-exit.npy") == where.numpy()).all(), (name, fmt)
    return where
