"""Independent seeds as a batch dimension: S learners whose every parameter is stacked along a leading
dimension ([S, ...]) and trained in one process, each ending exactly where it would alone.

Adam is elementwise, so one update of the stacked tensors applies S separate Adams — provided everything
that is *not* elementwise is done per seed. This module holds those per-seed pieces:

- :class:`SeedAdam` — Adam over stacked parameters with a step count per seed and an ``active`` mask:
  a seed that skips an update (non-finite loss or gradient, no warp contribution in a window) keeps its
  parameters, moments and step count, as its own Adam would. The update is torch's single-tensor Adam
  (``torch.optim.Adam`` on CPU) operation for operation, so each seed's slice is updated bit for bit as
  ``torch.optim.Adam`` would update that seed's tensor given the same gradient.
- :func:`seed_grad_norms` / :func:`clip_grad_norm_seeds` — ``clip_grad_norm_`` with one norm per seed.
- :func:`seed_finite` — a per-seed finiteness mask.

Imports torch only (metarl's rule).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor


def _mask_shape(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def seed_finite(tensors: Sequence[Tensor], seeds: int) -> Tensor:
    """(S,) bool: True where seed s's slice of every tensor is finite (an empty list is finite)."""
    ok = torch.ones(seeds, dtype=torch.bool)
    for t in tensors:
        ok &= t.detach().reshape(seeds, -1).isfinite().all(1).cpu()
    return ok


def seed_grad_norms(grads: Sequence[Tensor], seeds: int) -> Tensor:
    """(S,) the global 2-norm of each seed's gradient over all tensors, as ``clip_grad_norm_`` computes it
    for one seed (norm of the per-tensor norms)."""
    if not grads:
        return torch.zeros(seeds)
    return torch.stack([g.detach().reshape(seeds, -1).norm(dim=1) for g in grads]).norm(dim=0).cpu()


@torch.no_grad()
def clip_grad_norm_seeds(params: Iterable[Tensor], max_norm: float, seeds: int) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` per seed: each seed's gradient (its slice of every ``.grad``) is
    scaled by min(1, max_norm / (‖g_s‖ + 1e-6)). Returns the (S,) norms before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = seed_grad_norms(grads, seeds)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(_mask_shape(coef.to(g.device), g))
    return norms


class SeedAdam(torch.optim.Optimizer):
    """Adam over parameters stacked along a leading seed dimension, with a step count per seed.

    ``step()`` updates the seeds in ``self.active`` ((S,) bool, set before the step; None: all seeds) and
    leaves the others untouched. Seeds that share a step count are updated together with the very
    operations and Python-scalar coefficients of torch's single-tensor Adam; the usual case (all seeds
    active, equal counts) runs in place on the whole stacked tensors.
    """

    def __init__(self, params: Iterable[Tensor], seeds: int, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.seeds = seeds
        self.active: Tensor | None = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 0 or p.shape[0] != seeds:
                    raise ValueError(f"SeedAdam: every parameter needs a leading dimension of {seeds} seeds, "
                                     f"got shape {tuple(p.shape)}")

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros(self.seeds)           # float32, as torch's Adam keeps its count
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("SeedAdam does not take a closure")
        active = torch.ones(self.seeds, dtype=torch.bool) if self.active is None else self.active.to("cpu", torch.bool)
        if not bool(active.any()):
            return None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._init_state(p)
                steps = state["step"]                     # on the CPU: read as Python numbers
                new = steps + active.to(steps.dtype)
                counts = torch.unique(new[active]).tolist()
                whole = len(counts) == 1 and bool(active.all())
                for count in counts:
                    idx = None if whole else torch.nonzero(active & (new == count)).squeeze(1).to(p.device)
                    _adam_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], idx, count,
                                 lr, beta1, beta2, eps, wd)
                steps.copy_(new)
        return None


def _adam_update(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, idx: Tensor | None,
                 step: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """torch's ``_single_tensor_adam`` (no amsgrad, not maximised) for the seeds ``idx`` (None: all, in
    place) at their common step count ``step``."""
    if idx is None:
        param, m, v = p, exp_avg, exp_avg_sq
    else:
        param, grad, m, v = p[idx], grad[idx], exp_avg[idx], exp_avg_sq[idx]
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(m, denom, value=-step_size)
    if idx is not None:
        p.index_copy_(0, idx, param)
        exp_avg.index_copy_(0, idx, m)
        exp_avg_sq.index_copy_(0, idx, v)
