"""The warp objective at one trajectory point: ``full`` (arXiv Eq. 7) or ``first_order`` (Eq. 8)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..functional import Functional, laid_out
from .config import OBJECTIVES
from .inner import SGDRule, sgd_step


class WarpValue(NamedTuple):
    grads: list[Tensor]        # ∇_φ, aligned with the φ mapping given
    task_loss: Tensor          # L_task(θ; φ) on batch 1 (detached)
    meta_loss: Tensor          # L_meta(θ'; φ) on batch 2 (detached)


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in train mode (batch statistics in BatchNorm), restoring every module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class WarpObjective:
    """The warp meta-gradient at one trajectory point: ``full`` (Eq. 7) or ``first_order`` (Eq. 8).

    Call with the task model (used only as a functional template: ``torch.func.functional_call``
    substitutes θ, φ and the buffers), θ and φ by parameter name, the loss ``loss_fn(model, batch)``, the two
    batches, the SGD rule(s) of the replayed step and optionally the momentum buffers before the step
    and the model buffers at θ (cloned here: the stored values are never modified). Parameters in
    neither mapping keep the module's own values (constants)."""

    def __init__(self, kind: str = "full") -> None:
        if kind not in OBJECTIVES:
            raise ValueError(f"warp objective must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
        self.kind = kind

    @property
    def full(self) -> bool:
        return self.kind == "full"

    def __repr__(self) -> str:
        return f"WarpObjective({self.kind!r})"

    def __call__(self, model: nn.Module, theta: Mapping[str, Tensor], phi: Mapping[str, Tensor],
                 loss_fn: Callable[[nn.Module, Any], Tensor], batch_task: Any, batch_meta: Any,
                 rules: SGDRule | Sequence[SGDRule], momentum: Sequence[Tensor | None] | None = None,
                 buffers: Mapping[str, Tensor] | None = None) -> WarpValue:
        names = list(theta)
        if isinstance(rules, SGDRule):
            rules = [rules] * len(names)
        phi_names = list(phi)
        phi_values = [p if p.requires_grad else p.detach().requires_grad_(True) for p in phi.values()]
        with torch.enable_grad(), train_mode(model):
            th = [theta[n].detach().requires_grad_(True) for n in names]
            bufs = {k: v.detach().clone() for k, v in (buffers or {}).items()}
            fixed = {**dict(zip(phi_names, phi_values)), **bufs}
            task_loss = loss_fn(Functional(model, {**fixed, **dict(zip(names, th))}), batch_task)
            g = torch.autograd.grad(task_loss, th, create_graph=self.full, allow_unused=True)
            g = [torch.zeros_like(t) if gi is None else gi for t, gi in zip(th, g)]
            if self.full:
                new = sgd_step(th, g, rules, momentum)
            else:
                with torch.no_grad():      # sg[θ − α d]: the step is kept, its dependence on φ is not
                    new = sgd_step([t.detach() for t in th], [gi.detach() for gi in g], rules, momentum)
            new = [laid_out(n, t.stride()) for n, t in zip(new, th)]   # θ's layout (e.g. channels_last)
            meta_loss = loss_fn(Functional(model, {**fixed, **dict(zip(names, new))}), batch_meta)
            grads = torch.autograd.grad(meta_loss, phi_values, allow_unused=True)
        grads = [torch.zeros_like(p) if gp is None else gp.detach() for p, gp in zip(phi_values, grads)]
        return WarpValue(grads, task_loss.detach(), meta_loss.detach())
