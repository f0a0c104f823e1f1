"""Early-exit branches for a model trained without them (``search --model``).

A normally trained model has no exit heads, and exits are what buy time at batch 1. Each
branch (every design, after every searched exit block) is trained on the user's model as
it is: the backbone frozen, each branch distilled from the model's own final head on
training images, never validation ones. The backbone is untouched, so the full model and
every static cut stay exactly as ranked; the front's fine-tune later trains backbone and
exits together, distilled from the same model.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from vitpareto.search.supernet._recipe import distill_loss
from vitpareto.spaces import Candidate, exit_key

LR = 1e-3  # AdamW on the branches alone: they start from the final norm and head


def train_exits(
    elastic, data, blocks, images: int, device="cpu", lr: float = LR, progress: bool = True
) -> dict[str, Any]:
    """Distil every exit head ``elastic`` holds after ``blocks`` from its final head, on
    ``images`` training images (the backbone frozen); returns what it cost (images,
    seconds) and each branch's validation accuracy, by head (``"5_mlp"``: block 5, mlp)."""
    blocks = tuple(sorted(blocks))
    route = Candidate.full(elastic.spec).replace(exits=blocks, exit_threshold=1.0)
    keys = [exit_key(b, t) for b in blocks for t in elastic.exit_types]
    keys = [k for k in keys if k in elastic.exit_heads]
    heads = [elastic.exit_heads[k] for k in keys]
    wanted = {id(p) for h in heads for p in h.parameters()}
    for p in elastic.parameters():
        p.requires_grad_(id(p) in wanted)
    elastic.to(device).eval()
    for h in heads:
        h.train()
    opt = torch.optim.AdamW([p for h in heads for p in h.parameters()], lr=lr)
    seen, start = 0, time.perf_counter()
    bar = tqdm(total=images, desc="exit branches", unit="img", disable=None if progress else True,
               file=sys.stderr)  # fmt: skip
    try:
        while seen < images:
            for x, _ in data.train:
                x = x[: images - seen].to(device)
                outs = elastic.forward_exits(x, route, every_design=True)
                target = outs[-1].detach()  # the model's own final head teaches
                loss = sum(distill_loss(o, target, 1.0) for o in outs[:-1]) / len(heads)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(x)
                bar.update(len(x))
                if seen >= images:
                    break
    finally:
        bar.close()
        for p in elastic.parameters():
            p.requires_grad_(True)
        elastic.eval()
    seconds = time.perf_counter() - start
    return {
        "images": seen,
        "seconds": seconds,
        "accuracy": branch_accuracy(elastic, data, route, keys),
    }


@torch.no_grad()
def branch_accuracy(elastic, data, route: Candidate, keys: list[str]) -> dict[str, float]:
    """Each exit head's top-1 accuracy on the validation images (every sample through it),
    and the final head's (``"final"``)."""
    device = next(elastic.parameters()).device
    hits, n = torch.zeros(len(keys) + 1), 0
    for x, y in data.val:
        outs = elastic.forward_exits(x.to(device), route, every_design=True)
        y = torch.as_tensor(y).to(device)
        hits += torch.stack([(o.argmax(-1) == y).sum().float().cpu() for o in outs])
        n += len(y)
    return dict(zip([*keys, "final"], (hits / max(n, 1)).tolist(), strict=True))
