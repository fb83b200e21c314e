"""The inner SGD step as the warp objective replays it: torch's SGD rule per parameter and the watched
inner optimiser's rules and momentum buffers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .config import WarpGradConfig


@dataclass(frozen=True)
class SGDRule:
    """torch.optim.SGD's update for one parameter (``maximize`` is not supported)."""
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


def sgd_step(theta: Sequence[Tensor], grads: Sequence[Tensor], rules: Sequence[SGDRule],
             momentum: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """θ − lr·d with torch's SGD direction d (no in-place ops, so it is differentiable in all inputs).

    ``momentum[i]`` is the buffer *before* this step (None: the first step, where torch sets b = g)."""
    out = []
    for i, (t, g, r) in enumerate(zip(theta, grads, rules)):
        if r.weight_decay:
            g = g + r.weight_decay * t
        if r.momentum:
            b = momentum[i] if momentum is not None else None
            buf = g if b is None else r.momentum * b + (1.0 - r.dampening) * g
            d = g + r.momentum * buf if r.nesterov else buf
        else:
            d = g
        out.append(t - r.lr * d)
    return out


class InnerSGD:
    """The watched inner optimiser as the warp objective replays it: per-parameter SGD rules (read at
    every point, so lr schedules are followed) and the momentum buffers before the next step."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor], config: WarpGradConfig) -> None:
        self.optimizer, self.params, self.config = optimizer, list(params), config
        if not isinstance(optimizer, torch.optim.SGD):
            if config.inner_lr is None:
                raise ValueError(f"the inner optimiser is {type(optimizer).__name__}: WarpGrad replays SGD steps; "
                                 f"use SGD or set warpgrad.inner_lr to replay it as SGD with that rate")
            return
        for group in optimizer.param_groups:
            if group.get("maximize", False):
                raise ValueError("WarpGrad cannot replay an SGD optimiser with maximize=True")
            for key, want in (("lr", config.inner_lr), ("momentum", config.inner_momentum)):
                have = float(group[key])
                if want is not None and not math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12):
                    raise ValueError(f"warpgrad.inner_{key}={want} but the inner SGD has {key}={have}")

    def rules(self) -> list[SGDRule]:
        opt, cfg = self.optimizer, self.config
        if not isinstance(opt, torch.optim.SGD):
            return [SGDRule(float(cfg.inner_lr), float(cfg.inner_momentum or 0.0))] * len(self.params)
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        cache: dict[int, SGDRule] = {}
        out = []
        for p in self.params:
            g = group_of[id(p)]
            if id(g) not in cache:
                cache[id(g)] = SGDRule(float(g["lr"]), float(g["momentum"]), float(g["dampening"]),
                                       bool(g["nesterov"]), float(g["weight_decay"]))
            out.append(cache[id(g)])
        return out

    def momentum(self) -> list[Tensor | None]:
        """In a pre-step hook: b_{k−1}, the buffers step k will use (None before the first step)."""
        state = self.optimizer.state
        out = []
        for p in self.params:
            b = state[p].get("momentum_buffer") if p in state else None
            out.append(None if b is None else b.detach())
        return out
