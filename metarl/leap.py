"""Leap: the pull-forward meta-gradient of the gradient-path length (Flennerhag et al., ICLR 2019).

The task path is γ^i = (θ^i, f(θ^i)) on the loss manifold. We minimise the frozen-forward surrogate

    F̄(θ⁰) = (1/p) Σ_i ‖γ̄^{i+1} − γ^i‖^p,            p = 1 (length) or p = 2 (energy)

with Jacobians ∂θ^i/∂θ⁰ ≈ I. The 1/p scaling makes p = 2 with the loss term off equal Reptile's
θ⁰ − θ^K exactly (the original code drops the constant p for the same reason). Per segment (leap.md §2):

    δ_i = −(Δθ_i + Δf̃_i g_i) / ℓ_i^{2−p},     ℓ_i = sqrt(‖Δθ_i‖² + Δf_i² + ε²)

where Δf̃_i = −|Δf_i| with the stabilizer, ℓ_i is one global norm over all watched tensors, and the Δf
terms vanish when the loss is off the manifold. ε keeps a zero step finite (original-code defect #2).
Nothing is stored beyond the previous point: memory is O(#parameters), independent of K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import MetaLearner


@dataclass
class LeapConfig:
    p: int = 1                 # 1: length metric d₁; 2: energy metric d₂
    loss: bool = True          # include f(θ) as the (n+1)-th coordinate of the manifold
    stabilizer: bool = True    # Δf → −|Δf|: the loss term always points downhill (minibatch noise)
    eps: float = 1e-9          # inside the segment norm

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"leap.p must be 1 (length) or 2 (energy), got {self.p}")
        if self.eps < 0:
            raise ValueError(f"leap.eps must be >= 0, got {self.eps}")


class LeapObjective:
    """Step observer that adds Σ_i δ_i of one task into ``acc`` (aligned with the watched params)."""

    def __init__(self, config: LeapConfig, acc: Sequence[Tensor]) -> None:
        self.config = config
        self.acc = list(acc)
        self._theta: list[Tensor] | None = None   # θ_i, later overwritten by θ_i − θ_{i+1}
        self._grad: list[Tensor] | None = None    # g_i
        self._loss: Tensor | None = None          # f(θ_i)
        self._open = False
        # path statistics summed over the tasks of the meta-batch, for logging
        self.path_length = torch.zeros(())
        self.segments = 0

    def task_start(self, params: Sequence[Tensor]) -> None:
        if self._theta is None:
            self._theta = [p.detach().clone() for p in params]
            self._grad = [torch.zeros_like(p) for p in params]
        self._open = False

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        if self.config.loss and loss is None:
            raise RuntimeError("Leap with the loss term needs watch.report(loss) before optimizer.step()")
        if self._open:  # θ_i is the forward point of the previous segment
            self._close(params, loss)
        with torch.no_grad():
            torch._foreach_copy_(self._theta, [p.detach() for p in params])
            if self.config.loss:
                torch._foreach_copy_(self._grad, list(grads))
        self._loss = loss
        self._open = True

    def after_step(self, params: Sequence[Tensor]) -> None:
        pass

    def task_end(self, params: Sequence[Tensor], final_loss: Tensor | None) -> None:
        # The final segment θ^{K−1} → θ^K is counted (original-code defect #1).
        if self._open:
            if self.config.loss and final_loss is None:
                raise RuntimeError("Leap with the loss term needs watch.finish(final_loss) to close the last segment")
            self._close(params, final_loss)
        self._open = False

    @torch.no_grad()
    def _close(self, params: Sequence[Tensor], next_loss: Tensor | None) -> None:
        cfg = self.config
        neg_step = self._theta
        torch._foreach_sub_(neg_step, [p.detach() for p in params])          # θ_i − θ_{i+1} = −Δθ_i
        sq = torch.stack(torch._foreach_norm(neg_step)).square().sum() if neg_step else torch.zeros(())
        if cfg.loss:
            d_loss = next_loss.to(sq.dtype) - self._loss.to(sq.dtype)        # Δf_i
            sq = sq + d_loss.square()                                       # the stabilizer keeps Δf² (leap.md §3)
            d_loss_t = -d_loss.abs() if cfg.stabilizer else d_loss            # Δf̃_i
        length = (sq + cfg.eps ** 2).sqrt()
        self.path_length = self.path_length + length
        self.segments += 1
        scale = 1.0 / length if cfg.p == 1 else torch.ones_like(length)     # ℓ_i^{p−2}
        # δ_i = scale·(θ_i − θ_{i+1}) − scale·Δf̃_i·g_i ; `scale` stays a tensor: no host sync on GPU.
        if cfg.p == 1:
            torch._foreach_mul_(neg_step, scale)
        torch._foreach_add_(self.acc, neg_step)
        if cfg.loss:
            torch._foreach_mul_(self._grad, -scale * d_loss_t)
            torch._foreach_add_(self.acc, self._grad)


class Leap(MetaLearner):
    """Leap over the selected parameters; meta-gradient = mean over tasks of Σ_i δ_i (Algorithm 1)."""

    name = "leap"

    def __init__(self, model: nn.Module, config: LeapConfig | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.config = config or LeapConfig()
        self.objective = LeapObjective(self.config, self._task_acc)

    def observers(self, task=None) -> list:
        return [self.objective]

    def all_reduce(self, reduce) -> None:
        stats = torch.stack([self.objective.path_length.double(), torch.tensor(float(self.objective.segments))])
        super().all_reduce(lambda tensors: reduce([*tensors, stats]))
        self.objective.path_length, self.objective.segments = stats[0].clone(), int(stats[1])

    def meta_step(self) -> dict[str, float]:
        tasks = max(self.tasks + self.skipped, 1)
        logs = {"meta/path_length": float(self.objective.path_length) / tasks,
                "meta/segments": self.objective.segments / tasks}
        self.objective.path_length = torch.zeros(())
        self.objective.segments = 0
        return {**super().meta_step(), **logs}
