"""MAML (Finn et al., 2017): second-order meta-gradient through a few differentiable inner SGD steps.

    θ_{k+1} = θ_k − α ∇L_train(θ_k),  k < K;     meta-gradient = ∇_θ⁰ L_outer

The outer loss (``outer_loss``) is one of two readings:

- ``query_batch``: L_outer = L_query(θ_K), one batch of held-out data (the usual MAML).
- ``held_out``: the original Leap / WarpGrad Omniglot code's. The task's held-out images come in B
  batches (the task's ``held_out_batches()``: every image once) and the last inner loss is added in:
  L_outer = (L_train(θ_{K−1}; batch K) + Σ_b L_b(θ_K)) / B — the loss of the last inner step, at the
  parameters before that step, on its batch, differentiated through θ_{K−1} as well (docs/protocols.md §1).

The inner loop is written with ``torch.func.functional_call`` (metarl/functional.py) so the graph runs from θ⁰
through every step (``create_graph=True``). Memory grows with K, which is why MAML uses few steps (5 in the Leap
experiments) while the other methods observe long loops through the optimiser-step seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .base import MetaLearner
from .functional import Functional


def clip_by_global_norm(grads: list[Tensor | None], max_norm: float) -> list[Tensor | None]:
    """``grads`` scaled as torch.nn.utils.clip_grad_norm_ scales them — by min(1, max_norm / (‖g‖ + 1e-6)),
    ‖g‖ the global norm — but out of place, so a second-order inner loop differentiates through the scale."""
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [None if g is None else g * scale for g in grads]


OUTER_LOSSES = ("query_batch", "held_out")


@dataclass
class MAMLConfig:
    """The ``maml:`` section."""
    inner_lr: float = 0.01
    steps: int = 5
    first_order: bool = False
    # The outer loss. query_batch: one batch of held-out data at θ_K (the usual MAML); held_out: the
    # original Leap / WarpGrad Omniglot code's, every held-out image (in the task's batches) plus the last
    # inner loss, averaged over the held-out batches (module docstring; docs/protocols.md §1).
    outer_loss: str = "query_batch"

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"'maml.steps' must be positive, got {self.steps}")
        if self.inner_lr < 0:
            raise ValueError(f"'maml.inner_lr' must be >= 0, got {self.inner_lr}")
        if self.outer_loss not in OUTER_LOSSES:
            raise ValueError(f"'maml.outer_loss' must be {' or '.join(OUTER_LOSSES)}, got {self.outer_loss!r}")


class MAML(MetaLearner):
    name = "maml"

    @classmethod
    def sections(cls, cfg: Any) -> tuple[str, ...]:
        return ("maml",)

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        # inner.clip_grad_norm is honoured (clipped inside the differentiable loop); the loop's rule is SGD
        why = "MAML's differentiable inner loop is plain SGD (maml.inner_lr); held-out adaptation keeps that rule"
        return {**super().unused_keys(cfg), "inner.optimizer": why, "inner.momentum": why}

    @classmethod
    def check_config(cls, cfg: Any, task: Any) -> None:
        if cfg.maml.outer_loss == "held_out" and not task.held_out_batches:
            raise ValueError(f"config key 'maml.outer_loss' held_out needs tasks with held-out batches "
                             f"(held_out_batches), which task {cfg.task} does not have")

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head=(), **common: Any) -> "MAML":
        return cls(model, inner_lr=cfg.maml.inner_lr, inner_steps=cfg.maml.steps,
                   first_order=cfg.maml.first_order, outer_loss=cfg.maml.outer_loss, **common)

    def __init__(self, model: nn.Module, inner_lr: float = 0.1, inner_steps: int = 5,
                 first_order: bool = False, outer_loss: str = "query_batch", **kwargs: Any) -> None:
        if outer_loss not in OUTER_LOSSES:
            raise ValueError(f"outer_loss must be one of {', '.join(OUTER_LOSSES)}, got {outer_loss!r}")
        super().__init__(model, **kwargs)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.outer_loss = outer_loss

    def observers(self, task=None) -> list:
        return []

    def run_task(self, adapter: Any, task: Any, model: nn.Module, optimizer: Any, steps: int,
                 clip_grad_norm: float | None = None) -> list[float]:
        """Backpropagates through its own ``inner_steps`` instead of watching ``optimizer``."""
        held_out = None
        if self.outer_loss == "held_out":
            if not hasattr(task, "held_out_batches"):
                raise ValueError(f"outer_loss held_out needs a task with held_out_batches(); "
                                 f"{type(task).__name__} has none")
            held_out = lambda m: [task.loss(m, b) for b in task.held_out_batches()]     # noqa: E731
        return self.accumulate(model, lambda m, split: task.loss(m, task.batch(split)), held_out, clip_grad_norm)

    def accumulate(self, model: nn.Module, loss_fn: Callable[[nn.Module, str], Tensor],
                   held_out: Callable[[nn.Module], list[Tensor]] | None = None,
                   clip_grad_norm: float | None = None) -> list[float]:
        """Add one task's meta-gradient. ``loss_fn(model, split)`` draws a batch of ``split``
        ("train" for inner steps, "query" for the ``query_batch`` outer loss) and returns the loss of
        ``model`` on it; ``held_out(model)`` (needed by ``outer_loss: held_out``) returns the losses of
        ``model`` on each batch of the task's held-out images. ``model`` must hold θ⁰ (``load_init``).
        ``clip_grad_norm`` > 0 (the trainer's ``inner.clip_grad_norm``) clips each inner step's gradient to
        that global norm, as the other methods' inner loops do, and the meta-gradient differentiates through
        the clip (:func:`clip_by_global_norm`). Returns the inner-loop loss curve, closed by the held-out
        loss at θ_K."""
        if self.outer_loss == "held_out" and held_out is None:
            raise ValueError("outer_loss held_out needs held_out(model): the losses on the held-out batches")
        named = dict(model.named_parameters())
        start = {n: p.detach().clone().requires_grad_(True) for n, p in named.items()}
        params = dict(start)
        curve = []
        keep_last = self.outer_loss == "held_out"      # the last inner loss is part of the outer loss
        for k in range(self.inner_steps):
            loss = loss_fn(Functional(model, params), "train")
            curve.append(float(loss.detach()))
            keys = [n for n in params if params[n].requires_grad]
            retain = not self.first_order or (keep_last and k == self.inner_steps - 1)
            grads = torch.autograd.grad(loss, [params[n] for n in keys], create_graph=not self.first_order,
                                        retain_graph=retain, allow_unused=True)
            if clip_grad_norm:
                grads = clip_by_global_norm(list(grads), clip_grad_norm)
            params = dict(params)
            for n, g in zip(keys, grads):
                if g is not None:
                    params[n] = params[n] - self.inner_lr * g
        if self.outer_loss == "held_out":
            # `loss` is still the last inner step's: at θ_{K−1}, on batch K (the original adds it in)
            batches = torch.stack(held_out(Functional(model, params)))
            query = batches.mean()
            outer = (loss + batches.sum()) / len(batches)
        else:
            query = outer = loss_fn(Functional(model, params), "query")
        meta_grads = torch.autograd.grad(outer, [start[n] for n in self.names], allow_unused=True)
        with torch.no_grad():
            for acc, g in zip(self._task_acc, meta_grads):
                acc.copy_(g if g is not None else torch.zeros_like(acc))
        self._merge_task()
        curve.append(float(query.detach()))
        return curve
