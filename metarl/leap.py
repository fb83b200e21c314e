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
    """Step observer that adds Σ_i δ_i of one task into ``acc`` (aligned with the watched params).

    Work per step is kept to what the metric needs. Under p = 2 the parameter part of δ_i has
    coefficient 1, so Σ_i (θ_i − θ_{i+1}) telescopes to θ_0 − θ_K and is added once per task; only the
    loss term −Δf̃_i g_i is per-step work (one copy and one add). Under p = 1 every segment is divided by
    its own length, so θ_i is kept for the norm of Δθ_i."""

    def __init__(self, config: LeapConfig, acc: Sequence[Tensor]) -> None:
        self.config = config
        self.acc = list(acc)
        # Flat buffers (one tensor each), viewed per parameter: after the copies in, every per-step op is a
        # single-tensor op instead of one op per parameter tensor.
        self._theta: Tensor | None = None         # p = 1: θ_i; p = 2: the telescoping anchor θ_0
        self._grad: Tensor | None = None          # g_i
        self._sum: Tensor | None = None           # Σ δ_i of the running task, added to ``acc`` at flush
        self._views: dict[str, list[Tensor]] = {}
        self._loss: Tensor | None = None          # f(θ_i)
        self._live: list[Tensor] = []             # the watched tensors of the running task
        self._open = False
        # path statistics summed over the tasks of the meta-batch, for logging (p = 1: length of the path
        # on the manifold; p = 2 tracks only the segment count, since lengths would cost a copy per step)
        self.path_length = torch.zeros(())
        self.segments = 0

    def _buffers(self, params: Sequence[Tensor]) -> None:
        n = sum(p.numel() for p in params)
        ref = params[0]
        for name in ("_theta", "_grad", "_sum"):
            flat = torch.zeros(n, dtype=ref.dtype, device=ref.device)
            setattr(self, name, flat)
            views, offset = [], 0
            for p in params:
                chunk = flat[offset:offset + p.numel()]
                # Same strides as the parameter (e.g. channels_last), so copies in and out need no transpose.
                dense = p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))
                views.append(chunk.as_strided(p.shape, p.stride()) if dense else chunk.view(p.shape))
                offset += p.numel()
            self._views[name] = views

    def task_start(self, params: Sequence[Tensor]) -> None:
        if self._theta is None:
            self._buffers(params)
        self._live = [p.detach() for p in params]
        with torch.no_grad():
            self._sum.zero_()
            if self.config.p == 2:
                torch._foreach_copy_(self._views["_theta"], self._live)
        self._open = False

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        if self.config.loss and loss is None:
            raise RuntimeError("Leap with the loss term needs watch.report(loss) before optimizer.step()")
        with torch.no_grad():
            if self._open:  # θ_i is the forward point of the previous segment
                self._close(loss)
            if self.config.p == 1:
                torch._foreach_copy_(self._views["_theta"], self._live)
            if self.config.loss:
                torch._foreach_copy_(self._views["_grad"], list(grads))
        self._loss = loss
        self._open = True

    def after_step(self, params: Sequence[Tensor]) -> None:
        pass

    def task_end(self, params: Sequence[Tensor], final_loss: Tensor | None) -> None:
        # The final segment θ^{K−1} → θ^K is counted (original-code defect #1).
        if self._open:
            if self.config.loss and final_loss is None:
                raise RuntimeError("Leap with the loss term needs watch.finish(final_loss) to close the last segment")
            with torch.no_grad():
                self._close(final_loss)
        self.flush()
        self._open = False

    @torch.no_grad()
    def flush(self) -> None:
        """Move the running task's Σ δ_i into ``acc`` (plus, under p = 2, the telescoped parameter part up to
        the current point); continual meta-steps call this inside a task."""
        if not self._live:
            return
        if self.config.p == 2:                                               # Σ_i (θ_i − θ_{i+1}) = θ_0 − θ_now
            self._sum += self._theta
            torch._foreach_sub_(self._views["_sum"], self._live)
            torch._foreach_copy_(self._views["_theta"], self._live)
        torch._foreach_add_(self.acc, self._views["_sum"])
        self._sum.zero_()

    def _close(self, next_loss: Tensor | None) -> None:
        cfg = self.config
        self.segments += 1
        if cfg.loss:
            d_loss = (next_loss - self._loss).double()                       # Δf_i
            d_loss_t = -d_loss.abs() if cfg.stabilizer else d_loss           # Δf̃_i
        if cfg.p == 2:
            if cfg.loss:
                self._sum.add_(self._grad, alpha=float(-d_loss_t)) if self._sum.device.type == "cpu" \
                    else self._sum.add_(self._grad * -d_loss_t)              # −Δf̃_i·g_i
            return
        neg_step = self._theta
        torch._foreach_sub_(self._views["_theta"], self._live)               # θ_i − θ_{i+1} = −Δθ_i
        sq = neg_step.norm().double().square()
        if cfg.loss:
            sq = sq + d_loss.square()                                        # the stabilizer keeps Δf² (leap.md §3)
        length = (sq + cfg.eps ** 2).sqrt()                                  # ℓ_i
        self.path_length = self.path_length + length
        # δ_i = (θ_i − θ_{i+1})/ℓ_i − (Δf̃_i/ℓ_i)·g_i
        if self._sum.device.type == "cpu":
            self._sum.add_(neg_step, alpha=float(1.0 / length))
            if cfg.loss:
                self._sum.add_(self._grad, alpha=float(-d_loss_t / length))
        else:
            self._sum.add_(neg_step * (1.0 / length).to(neg_step.dtype))
            if cfg.loss:
                self._sum.add_(self._grad * (-d_loss_t / length).to(neg_step.dtype))


class Leap(MetaLearner):
    """Leap over the selected parameters; meta-gradient = mean over tasks of Σ_i δ_i (Algorithm 1)."""

    name = "leap"

    def __init__(self, model: nn.Module, config: LeapConfig | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.config = config or LeapConfig()
        self.objective = LeapObjective(self.config, self._task_acc)

    def observers(self, task=None) -> list:
        return [self.objective]

    def flush(self) -> None:
        self.objective.flush()
        super().flush()

    def all_reduce(self, reduce) -> None:
        stats = torch.stack([self.objective.path_length.double(), torch.tensor(float(self.objective.segments))])
        super().all_reduce(lambda tensors: reduce([*tensors, stats]))
        self.objective.path_length, self.objective.segments = stats[0].clone(), int(stats[1])

    def meta_step(self) -> dict[str, float]:
        tasks = max(self.tasks + self.skipped, 1)
        logs = {"meta/segments": self.objective.segments / tasks}
        if self.config.p == 1:
            logs["meta/path_length"] = float(self.objective.path_length) / tasks
        self.objective.path_length = torch.zeros(())
        self.objective.segments = 0
        return {**super().meta_step(), **logs}
