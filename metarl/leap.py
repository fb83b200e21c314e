"""Leap: the pull-forward meta-gradient of the gradient-path length (Flennerhag et al., ICLR 2019).

The task path is γ^i = (θ^i, f(θ^i)) on the loss manifold. We minimise the frozen-forward surrogate

    F̄(θ⁰) = (1/p) Σ_i ‖γ̄^{i+1} − γ^i‖^p,            p = 1 (length) or p = 2 (energy)

with Jacobians ∂θ^i/∂θ⁰ ≈ I. The 1/p scaling makes p = 2 with the loss term off equal Reptile's
θ⁰ − θ^K exactly (the original code drops the constant p for the same reason). Per segment (docs/leap.md §2):

    δ_i = −(Δθ_i + Δf̃_i g_i) / ℓ_i^{2−p},     ℓ_i = sqrt(‖Δθ_i‖² + Δf_i² + ε²)

where Δf̃_i = −|Δf_i| with the stabilizer, ℓ_i is one global norm over all watched tensors, and the Δf
terms vanish when the loss is off the manifold. ε keeps a zero step finite (docs/leap.md §7, defect #2).
Nothing is stored beyond the previous point: memory is O(#parameters), independent of K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import MetaLearner
from .seam import Observer


@dataclass
class LeapConfig:
    p: int = 1                 # 1: length metric d₁; 2: energy metric d₂
    loss: bool = True          # include f(θ) as the (n+1)-th coordinate of the manifold (false: the WarpGrad
    #                            code's Warp-Leap objective)
    stabilizer: bool = True    # Δf → −|Δf|: the loss term always points downhill (minibatch noise)
    eps: float = 1e-9          # inside the segment norm

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"leap.p must be 1 (length) or 2 (energy), got {self.p}")
        if self.eps < 0:
            raise ValueError(f"leap.eps must be >= 0, got {self.eps}")


class LeapObjective:
    """Step observer that adds Σ_i δ_i of one task into ``acc`` (aligned with the watched params).

    The maths of one segment is :meth:`_segment`; everything else here is streaming machinery. It runs
    inside every inner step, so the per-step work is what the metric needs and no more:

    * p = 2: the parameter part of δ_i has coefficient 1, so Σ_i (θ_i − θ_{i+1}) telescopes to θ_0 − θ_K
      and is added once per task (:meth:`flush`); only the loss term −Δf̃_i·g_i is per-step work.
    * p = 1: each segment is divided by its own length. Right after step i, while the optimiser has just
      touched θ_{i+1}, one copy keeps θ_{i+1} and one flat subtraction turns the kept θ_i into
      θ_i − θ_{i+1} (and its norm); Δf_i, and with it ℓ_i, is known only at the next step, which adds the
      segment. Two flat θ buffers alternate, so nothing else is copied.
    * g_i is held by reference, not copied, while the optimiser frees gradients between steps
      (``zero_grad(set_to_none=True)``, torch's default): version counters prove a held gradient unchanged
      when it is used. The first step copies; an optimiser that hands back the same gradient tensors on
      the second step (zeroing in place) keeps getting copies.
    * On CPU the scalar maths (Δf, ℓ_i, coefficients) is done in Python floats (float64); a handful of
      0-d tensor ops per step would cost more than the vector work. On accelerators it stays on device.
    """

    def __init__(self, config: LeapConfig, acc: Sequence[Tensor]) -> None:
        self.config = config
        self.acc = list(acc)
        self._flat: dict[str, Tensor] = {}         # flat buffers: "a", "b" (θ, alternating), "grad", "sum"
        self._views: dict[str, list[Tensor]] = {}  # the same, viewed with each parameter's shape and strides
        self._prev = "a"                           # p = 1: θ_i, then θ_i − θ_{i+1}; p = 2: the anchor θ_0
        self._next = "b"                           # p = 1: θ_{i+1}, kept after the step
        self._sq = None                            # ‖θ_i − θ_{i+1}‖² of the open segment
        self._live: list[Tensor] = []              # the watched tensors of the running task
        self._grad: list[Tensor] = []              # g_i: held references, or views of the "grad" buffer
        self._versions: list[int] = []             # version counters of held references when they were taken
        self._first: list[Tensor] = []             # the task's first gradient tensors, to tell the modes apart
        self._grad_mode: str | None = None         # "hold" | "copy"; None until the task's second step
        self._loss = None                          # f(θ_i)
        self._open = False                         # a segment θ_i → θ_{i+1} awaits f(θ_{i+1})
        self._on_cpu = True
        # path statistics summed over the tasks of the meta-batch, for logging (p = 1: length of the path
        # on the manifold; p = 2 counts only segments, since lengths would cost a pass per step)
        self.path_length: float | Tensor = 0.0
        self.segments = 0

    # -- the maths: one segment θ_i → θ_{i+1} (docs/leap.md §2–3) ----------------------------------------
    def _segment(self, next_loss) -> None:
        """Add δ_i = −(Δθ_i + Δf̃_i·g_i) / ℓ_i^{2−p} to the task's sum, now that f(θ_{i+1}) is known.

        On entry: ``self._loss`` = f(θ_i); ``_held_grad()`` = g_i; under p = 1 the ``_prev`` buffer holds
        θ_i − θ_{i+1} = −Δθ_i and ``self._sq`` = ‖Δθ_i‖² (both formed by :meth:`after_step`). Under p = 2
        the parameter part −Δθ_i telescopes and is added by :meth:`flush`, so only the loss term is here.
        """
        cfg = self.config
        self.segments += 1
        if cfg.loss:
            d_loss = next_loss - self._loss                                  # Δf_i = f(θ_{i+1}) − f(θ_i)
            d_loss_t = -abs(d_loss) if cfg.stabilizer else d_loss            # Δf̃_i (stabilizer: −|Δf_i|)
        if cfg.p == 2:                                                       # δ_i = −Δθ_i − Δf̃_i·g_i
            if cfg.loss:
                self._add(self._views["sum"], self._held_grad(), -d_loss_t)  # −Δf̃_i·g_i
            return
        sq = self._sq + d_loss ** 2 if cfg.loss else self._sq    # the stabilizer keeps Δf² (docs/leap.md §3)
        length = (sq + cfg.eps ** 2) ** 0.5                          # ℓ_i = sqrt(‖Δθ_i‖² + Δf_i² + ε²)
        self.path_length = self.path_length + length
        # δ_i = (θ_i − θ_{i+1})/ℓ_i − (Δf̃_i/ℓ_i)·g_i
        self._add(self._flat["sum"], self._flat[self._prev], 1.0 / length)
        if cfg.loss:
            self._add(self._views["sum"], self._held_grad(), -d_loss_t / length)
        self._prev, self._next = self._next, self._prev                      # θ_{i+1} is the next segment's start

    # -- seam events -------------------------------------------------------------------------------------
    def task_start(self, params: Sequence[Tensor]) -> None:
        if not self._flat:
            self._allocate(params)
        self._live = [p.detach() for p in params]
        with torch.no_grad():
            self._flat["sum"].zero_()
            if self.config.p == 2:
                torch._foreach_copy_(self._views[self._prev], self._live)
        self._grad, self._versions, self._first, self._grad_mode = [], [], [], None
        self._open = False

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        cfg = self.config
        if cfg.loss and loss is None:
            raise RuntimeError("Leap with the loss term needs watch.report(loss) before optimizer.step()")
        loss = None if loss is None else self._scalar(loss)
        with torch.no_grad():
            if self._open:
                self._segment(loss)
            elif cfg.p == 1:                                                 # the task's first point θ_0
                torch._foreach_copy_(self._views[self._prev], self._live)
            if cfg.loss:
                self._hold(grads if isinstance(grads, list) else list(grads))
        self._loss = loss
        self._open = True

    @torch.no_grad()
    def after_step(self, params: Sequence[Tensor]) -> None:
        if self.config.p == 1:
            prev, nxt = self._flat[self._prev], self._flat[self._next]
            torch._foreach_copy_(self._views[self._next], self._live)         # θ_{i+1}
            prev.sub_(nxt)                                                   # θ_i − θ_{i+1} = −Δθ_i
            self._sq = self._scalar(torch.linalg.vector_norm(prev)) ** 2

    def task_end(self, params: Sequence[Tensor], final_loss: Tensor | None) -> None:
        # The final segment θ^{K−1} → θ^K is counted (docs/leap.md §7, defect #1).
        if self._open:
            if self.config.loss and final_loss is None:
                raise RuntimeError("Leap with the loss term needs watch.finish(final_loss) to close the last segment")
            with torch.no_grad():
                self._segment(self._scalar(final_loss) if final_loss is not None else None)
        self.flush()
        self._open = False
        self._grad, self._versions, self._first = [], [], []

    @torch.no_grad()
    def flush(self) -> None:
        """Move the running task's Σ δ_i into ``acc`` (plus, under p = 2, the telescoped parameter part up to
        the current point)."""
        if not self._live:
            return
        total = self._flat["sum"]
        if self.config.p == 2:                                               # Σ_i (θ_i − θ_{i+1}) = θ_0 − θ_now
            total += self._flat[self._prev]
            torch._foreach_sub_(self._views["sum"], self._live)
            torch._foreach_copy_(self._views[self._prev], self._live)
        torch._foreach_add_(self.acc, self._views["sum"])
        total.zero_()

    def reset_stats(self) -> tuple[float, int]:
        """(path length, segments) summed since the last reset, for logging; then zero them."""
        stats = float(self.path_length), self.segments
        self.path_length, self.segments = 0.0, 0
        return stats

    # -- flat buffers and scalars ------------------------------------------------------------------------
    def _allocate(self, params: Sequence[Tensor]) -> None:
        """The buffers the metric needs, once: θ_i and θ_{i+1} (p = 1; p = 2 keeps only the anchor θ_0),
        a copy of g_i (loss term on), and the task's running Σ δ_i."""
        cfg = self.config
        for name in ("a", "b" if cfg.p == 1 else None, "grad" if cfg.loss else None, "sum"):
            if name is not None:
                self._buffer(name, params)
        self._on_cpu = params[0].device.type == "cpu"

    def _buffer(self, name: str, params: Sequence[Tensor]) -> None:
        ref = params[0]
        flat = torch.zeros(sum(p.numel() for p in params), dtype=ref.dtype, device=ref.device)
        views, offset = [], 0
        for p in params:
            chunk = flat[offset:offset + p.numel()]
            # Same strides as the parameter (e.g. channels_last), so copies in and out need no transpose.
            dense = p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))
            views.append(chunk.as_strided(p.shape, p.stride()) if dense else chunk.view(p.shape))
            offset += p.numel()
        self._flat[name], self._views[name] = flat, views

    def _scalar(self, x: Tensor):
        return float(x) if self._on_cpu else x.detach().double()

    def _add(self, target: list[Tensor] | Tensor, source: list[Tensor] | Tensor, coef) -> None:
        """target += coef·source, coef a float (CPU) or a 0-d device tensor (no host sync)."""
        if isinstance(target, Tensor):
            target.add_(source, alpha=coef) if isinstance(coef, float) else target.add_(source * coef.to(source.dtype))
        elif isinstance(coef, float):
            torch._foreach_add_(target, source, alpha=coef)
        else:
            torch._foreach_add_(target, torch._foreach_mul(source, coef.to(source[0].dtype)))

    # -- the held gradient g_i ---------------------------------------------------------------------------
    def _hold(self, grads: list[Tensor]) -> None:
        """Keep g_i until the segment closes: by reference when the optimiser frees gradients, else a copy."""
        if self._grad_mode is None and self._first:      # second step: did the optimiser free or reuse g_0?
            self._grad_mode = "copy" if any(g is h for g, h in zip(grads, self._first)) else "hold"
            self._first = []
        if self._grad_mode == "hold":
            self._grad, self._versions = grads, [g._version for g in grads]
            return
        if self._grad_mode is None:                      # first step: copy, and remember which tensors they were
            self._first = grads
        torch._foreach_copy_(self._views["grad"], grads)
        self._grad = self._views["grad"]

    def _held_grad(self) -> list[Tensor]:
        if self._grad_mode == "hold" and [g._version for g in self._grad] != self._versions:
            raise RuntimeError("a gradient Leap holds from the previous step was changed in place before the "
                               "next step; zero gradients with set_to_none=True, or in place on every step")
        return self._grad


class _PathStats(Observer):
    """After a task watched on its own objective (``watch_stacked``), its path statistics go to the method's."""

    def __init__(self, source: LeapObjective, target: LeapObjective) -> None:
        self.source, self.target = source, target

    def task_end(self, params, final_loss) -> None:
        length, segments = self.source.reset_stats()
        self.target.path_length = self.target.path_length + length
        self.target.segments += segments


class Leap(MetaLearner):
    """Leap over the selected parameters; meta-gradient = mean over tasks of Σ_i δ_i (Algorithm 1)."""

    name = "leap"
    measures_displacement = True

    @classmethod
    def sections(cls, cfg) -> tuple[str, ...]:
        return ("leap",)

    @classmethod
    def build(cls, model: nn.Module, cfg, head=(), **common) -> "Leap":
        return cls(model, cfg.leap, **common)

    def __init__(self, model: nn.Module, config: LeapConfig | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.config = config or LeapConfig()
        self.objective = LeapObjective(self.config, self._task_acc)

    def observers(self, task=None) -> list:
        return [self.objective]

    def task_observers(self, acc, task=None) -> list:
        objective = LeapObjective(self.config, acc)
        return [objective, _PathStats(objective, self.objective)]

    def all_reduce(self, reduce) -> None:
        stats = torch.tensor(self.objective.reset_stats(), dtype=torch.float64)
        super().all_reduce(lambda tensors: reduce([*tensors, stats]))
        self.objective.path_length, self.objective.segments = float(stats[0]), int(stats[1])

    def updates(self, logs: dict[str, float]):
        tasks = max(self.tasks + self.skipped, 1)
        path_length, segments = self.objective.reset_stats()
        logs["meta/segments"] = segments / tasks
        if self.config.p == 1:
            logs["meta/path_length"] = path_length / tasks
        return super().updates(logs)
