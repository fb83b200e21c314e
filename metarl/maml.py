"""MAML (Finn et al., 2017): second-order meta-gradient through a few differentiable inner SGD steps.

    θ_{k+1} = θ_k − α ∇L_train(θ_k),  k < K;     meta-gradient = ∇_θ⁰ L_query(θ_K)

The inner loop is written with ``torch.func.functional_call`` so the graph runs from θ⁰ through every
step (``create_graph=True``). Memory grows with K, which is why MAML uses few steps (5 in the Leap
experiments) while the other methods observe long loops through the optimiser-step seam.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import MetaLearner


class _Functional(nn.Module):
    """Calls ``model`` with substituted parameters, so task code can keep calling ``model(x)``."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return functional_call(self.model, self.params, args, kwargs)


class MAML(MetaLearner):
    name = "maml"

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head=(), **common: Any) -> "MAML":
        return cls(model, inner_lr=cfg.maml.inner_lr, inner_steps=cfg.maml.steps,
                   first_order=cfg.maml.first_order, **common)

    def __init__(self, model: nn.Module, inner_lr: float = 0.1, inner_steps: int = 5,
                 first_order: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order

    def observers(self, task=None) -> list:
        return []

    def run_task(self, adapter: Any, task: Any, model: nn.Module, optimizer: Any, steps: int,
                 clip_grad_norm: float | None = None) -> list[float]:
        """Backpropagates through its own ``inner_steps`` instead of watching ``optimizer``."""
        return self.accumulate(model, lambda m, split: task.loss(m, task.batch(split)))

    def accumulate(self, model: nn.Module, loss_fn: Callable[[nn.Module, str], Tensor]) -> list[float]:
        """Add one task's meta-gradient. ``loss_fn(model, split)`` draws a batch of ``split``
        ("train" for inner steps, "query" for the outer loss) and returns the loss of ``model`` on it.
        ``model`` must hold θ⁰ (``load_init``). Returns the inner-loop loss curve."""
        named = dict(model.named_parameters())
        start = {n: p.detach().clone().requires_grad_(True) for n, p in named.items()}
        params = dict(start)
        curve = []
        for _ in range(self.inner_steps):
            loss = loss_fn(_Functional(model, params), "train")
            curve.append(float(loss.detach()))
            keys = [n for n in params if params[n].requires_grad]
            grads = torch.autograd.grad(loss, [params[n] for n in keys],
                                        create_graph=not self.first_order, allow_unused=True)
            params = dict(params)
            for n, g in zip(keys, grads):
                if g is not None:
                    params[n] = params[n] - self.inner_lr * g
        query = loss_fn(_Functional(model, params), "query")
        meta_grads = torch.autograd.grad(query, [start[n] for n in self.names], allow_unused=True)
        with torch.no_grad():
            for acc, g in zip(self._task_acc, meta_grads):
                acc.copy_(g if g is not None else torch.zeros_like(acc))
        self._merge_task()
        curve.append(float(query.detach()))
        return curve
