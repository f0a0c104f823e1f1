"""Adapters: each maps one timm architecture onto the model vitpareto cuts, a timm
``VisionTransformer`` of pre-norm ``Block``s, and is the only place that knows that
architecture's names. A ``VisionTransformer`` is that model already (its adapter is the
identity); the Eva family has one of its own (``_eva``)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from vitpareto.spaces._eva import canonical as canonical_eva

# by timm class name: the function that builds the equivalent VisionTransformer
ADAPTERS: dict[str, Callable[[nn.Module], nn.Module]] = {"Eva": canonical_eva}


def adapted(model: nn.Module) -> bool:
    """Whether ``model`` is of an architecture an adapter maps (not yet mapped)."""
    return type(model).__name__ in ADAPTERS


def adapt(model: nn.Module) -> nn.Module:
    """``model`` as the VisionTransformer vitpareto cuts (itself when it is one)."""
    fn = ADAPTERS.get(type(model).__name__)
    return model if fn is None else fn(model)
