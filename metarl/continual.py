"""WarpGrad Algorithm 3 (continual meta-training) for a never-reset task learner.

One task learner is trained on a stream of losses and is never reset; its parameters are split into

    θ  task parameters — stepped at *every* iteration by the task optimiser (the maze: Adam, lr 1e-3);
    φ  warp parameters — meta-learned: a warp gradient g_φ is accumulated at every task step and φ steps
       every η task steps (default η = 30) with its own optimiser (Adam, lr 1e-3); then g_φ resets.

:class:`ContinualWarp` is a step observer on the optimiser-step seam (``metarl.seam``): the task loop runs
``loss.backward(); watch.report(loss); optimizer.step()`` inside ``ContinualWarp.watch(optimizer, θ)``, and
the observer does everything else. (Algorithm 3 also lets θ follow a multi-task objective C; here the task
loss *is* that objective, so the task optimiser alone steps θ.)

Warp objectives (``objective``)
-------------------------------
Write θ_i for the task parameters before task step i, L(θ; φ, B) for the task loss on batch B, and
θ_{i+1} = θ_i − u_i for the task step (u_i: whatever the task optimiser does — an Adam update here).

``same_loss`` — the original maze code's scheme. The warp gradient at step i is the φ-gradient of the very
loss that produced task step i, from the same backward pass:

    g_φ += ∇_φ L(θ_i; φ, B_i)

No extra computation: the loop's ``loss.backward()`` fills φ.grad along with θ.grad, and the observer
moves it into the accumulator just before the task step (and clears φ.grad). Reading (warpgrad.md §9):
θ_i = sg[θ_{i−1} − u_{i−1}] is the previous step's post-update point, so this is arXiv Eq. 8's first-order
objective L_meta(sg[θ − update]; φ) with Adam as the update rule — except that L_meta is evaluated on the
batch the *next* task step then trains on, not on a batch of its own (and step 0's loss, at the initial
θ_0, is included).

``meta_batch`` — arXiv Eq. 8 with a separate batch. After task step i has been taken, θ' = sg[θ_i − u_i]
is the live, updated parameter value; a second, fresh batch B'_i (for the maze: one more rollout of new
episodes, with the updated θ') gives

    g_φ += ∇_φ L(sg[θ_i − u_i]; φ, B'_i)

via ``meta_loss()``, a callable supplied by the task loop that returns that loss as a graph-carrying
tensor. Only ∇_φ is taken (``torch.autograd.grad``), so θ.grad is left alone; the task loss's own φ-gradient
is discarded. Cost: one extra forward + backward (a rollout) per iteration.

Meta-step: every η task steps, φ steps with the *mean* of the window's finite contributions (the original
code sums them in φ.grad; with Adam the two differ only through Adam's ε). A contribution with a non-finite
entry is skipped and counted (``skipped``); a window with no finite contribution takes no φ step.

Burn-in: the original code makes no update at all for its first 100 iterations, and (a quirk) does not zero
the gradients meanwhile, so its first update uses ~100 iterations of summed gradient. :func:`continual_update`
offers ``burning_in`` for such iterations with correct zeroing: no backward, no step, nothing accumulates
(the maze runner's ``burn_in``, default 0). Burn-in iterations are not task steps and do not count towards η.

Checkpoints: ``state_dict()`` holds the warp optimiser's state, the accumulator and the counters —
tensors and plain containers only. φ itself belongs to the model and is saved with the model's state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .base import MetaOptimizerConfig, all_finite, global_norm, make_optimizer
from .seam import Observer, OptimizerWatch

WARP_OBJECTIVES = ("same_loss", "meta_batch")


@dataclass
class ContinualWarpConfig:
    objective: str = "same_loss"        # same_loss (original code) | meta_batch (Eq. 8, separate batch)
    warp_every: int = 30                # η: task steps per φ step
    warp_optimizer: MetaOptimizerConfig = field(
        default_factory=lambda: MetaOptimizerConfig(name="adam", lr=1e-3))

    def __post_init__(self) -> None:
        if self.objective not in WARP_OBJECTIVES:
            raise ValueError(f"warp objective must be one of {', '.join(WARP_OBJECTIVES)}, got {self.objective!r}")
        if self.warp_every < 1:
            raise ValueError(f"warp_every must be >= 1, got {self.warp_every}")


class ContinualWarp(Observer):
    """Algorithm 3's warp side, observing the task optimiser's steps (module docstring).

    ``warp_params``: φ (must not be stepped by the task optimiser). ``meta_loss``: for ``meta_batch``, a
    callable returning the loss of a fresh batch at the current (just updated) parameters.
    ``on_meta_step``: called with the logs of every φ step (also kept in ``last_logs``).
    """

    def __init__(self, warp_params: Sequence[nn.Parameter], config: ContinualWarpConfig | None = None,
                 meta_loss: Callable[[], Tensor] | None = None,
                 on_meta_step: Callable[[dict[str, float]], None] | None = None) -> None:
        self.config = config or ContinualWarpConfig()
        self.params = list(warp_params)
        if not self.params:
            raise ValueError("ContinualWarp needs warp parameters (the model has none)")
        if self.config.objective == "meta_batch" and meta_loss is None:
            raise ValueError("the meta_batch warp objective needs a meta_loss callable (a fresh batch's loss)")
        self.meta_loss = meta_loss
        self.on_meta_step = on_meta_step
        self.optimizer = make_optimizer(self.params, self.config.warp_optimizer)
        self._acc = [torch.zeros_like(p) for p in self.params]
        self.task_steps = 0         # task-parameter steps observed (burn-in excluded)
        self.warp_steps = 0         # φ steps taken
        self.window = 0             # finite contributions in the current accumulator
        self.skipped = 0            # non-finite contributions skipped, over the whole run
        self.last_logs: dict[str, float] = {}

    # -- wiring ------------------------------------------------------------------------------------------
    def watch(self, optimizer: torch.optim.Optimizer, task_params: Sequence[Tensor]) -> OptimizerWatch:
        """The seam for the task loop: ``with cw.watch(task_optimizer, θ) as watch: ...``."""
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) in ids for p in self.params):
            raise ValueError("the task optimiser must not step warp parameters")
        return OptimizerWatch(optimizer, task_params, [self])

    # -- contributions -----------------------------------------------------------------------------------
    def _take_warp_grads(self) -> list[Tensor]:
        """φ.grad as left by the task loss's backward, then cleared."""
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p in self.params:
            p.grad = None
        return grads

    def _meta_batch_grads(self) -> list[Tensor]:
        with torch.enable_grad():
            loss = self.meta_loss()
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]

    def add(self, grads: Sequence[Tensor]) -> bool:
        """Accumulate one contribution; False (and counted) if it has a non-finite entry."""
        if not all_finite(grads):
            self.skipped += 1
            return False
        torch._foreach_add_(self._acc, list(grads))
        self.window += 1
        return True

    def accumulated(self) -> list[Tensor]:
        """The current window's summed warp gradient (copies) and, in ``window``, how many contributions."""
        return [a.clone() for a in self._acc]

    # -- StepObserver --------------------------------------------------------------------------------------
    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        warp_grads = self._take_warp_grads()        # cleared in both modes: never left for the next backward
        if self.config.objective == "same_loss":
            self.add(warp_grads)

    def after_step(self, params: Sequence[Tensor]) -> None:
        if self.config.objective == "meta_batch":
            self.add(self._meta_batch_grads())
        self.task_steps += 1
        if self.task_steps % self.config.warp_every == 0:
            self.meta_step()

    # -- meta-step -------------------------------------------------------------------------------------
    def meta_step(self) -> dict[str, float]:
        """Step φ with the mean of the window's finite contributions; reset the accumulator."""
        logs = {"meta/warp_contributions": float(self.window), "meta/skipped_contributions": float(self.skipped)}
        if self.window > 0:
            grads = [a / self.window for a in self._acc]
            logs["meta/warp_grad_norm"] = global_norm(grads)
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            for p in self.params:
                p.grad = None
            self.warp_steps += 1
        logs["meta/warp_steps"] = float(self.warp_steps)
        torch._foreach_zero_(self._acc)
        self.window = 0
        self.last_logs = logs
        if self.on_meta_step is not None:
            self.on_meta_step(logs)
        return logs

    # -- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"warp_optimizer": self.optimizer.state_dict(),
                "acc": [a.clone() for a in self._acc],
                "counters": torch.tensor([self.task_steps, self.warp_steps, self.window, self.skipped])}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["warp_optimizer"])
        torch._foreach_copy_(self._acc, list(state["acc"]))
        self.task_steps, self.warp_steps, self.window, self.skipped = (int(x) for x in state["counters"])


def continual_update(loss: Tensor, optimizer: torch.optim.Optimizer, watch: Any,
                     params: Sequence[nn.Parameter], burning_in: bool = False) -> str:
    """One iteration of the never-reset task loop; returns ``"step"``, ``"burn_in"`` or ``"non_finite"``.

    ``params``: every parameter of the model (task and warp), whose gradients are cleared first. During
    burn-in nothing is computed or kept (the original code's gradient build-up is not reproduced). A loss
    or task gradient with a non-finite entry skips the task step (so the observer sees nothing either).
    """
    for p in params:
        p.grad = None
    if burning_in:
        return "burn_in"
    if not bool(torch.isfinite(loss.detach()).all()):
        return "non_finite"
    loss.backward()
    task = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not all_finite([p.grad for p in task]):
        for p in params:
            p.grad = None
        return "non_finite"
    watch.report(loss)
    optimizer.step()
    return "step"
