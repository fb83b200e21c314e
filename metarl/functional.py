"""Functional calls of a task model at substituted parameters: what methods that differentiate through an
inner loop (MAML, Lazy, WarpGrad's meta-objectives) share. A task's loss keeps calling ``model(x)``; the
parameters are whatever tensors the loop holds (θ_k as a function of θ⁰)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


class Functional(nn.Module):
    """Calls ``model`` with substituted parameters, so task code can keep calling ``model(x)``."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return functional_call(self.model, self.params, args, kwargs)


def laid_out(t: Tensor, stride: tuple[int, ...]) -> Tensor:
    """``t`` (differentiably) in the memory layout ``stride`` of the parameter it stands for. A step's gradient
    may come back in another layout than its parameter (and a point stored flat comes back contiguous); a
    channels_last model's convolutions would then run and return NCHW, where this CPU build's max-pooling is
    many times slower (docs/RESULTS.md, omniglot-meta-step)."""
    if t.stride() == stride:
        return t
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)
