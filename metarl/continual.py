"""WarpGrad Algorithm 3 (continual meta-training) for a never-reset task learner — the one place it lives.

One task learner is trained on a stream of losses and is never reset; its parameters are split into

    θ  task parameters — stepped at *every* iteration by the task optimiser (the maze: Adam, lr 1e-3);
    φ  warp parameters (``meta.include``) — meta-learned: a warp gradient g_φ is accumulated at every task
       step and φ steps every η task steps (``meta.every``, default 30) with the meta-optimiser (Adam,
       lr 1e-3); then g_φ resets.

:class:`ContinualWarpGrad` is a :class:`~metarl.base.MetaLearner` whose observer on the optimiser-step seam
(``metarl.seam``) adds one contribution per task step; the trainer's continual mode runs the task loop
(``loss.backward(); watch.report(loss); optimizer.step()``) η steps at a time and calls ``meta_step()``
after each window. The running model's φ *is* the meta-parameter tensor, so a meta-step moves the learner.
(Algorithm 3 also lets θ follow a multi-task objective C; here the task loss *is* that objective, so the
task optimiser alone steps θ.)

Warp objectives (``objective``)
-------------------------------
Write θ_i for the task parameters before task step i, L(θ; φ, B) for the task loss on batch B, and
θ_{i+1} = θ_i − u_i for the task step (u_i: whatever the task optimiser does — an Adam update here).

``same_loss`` — the original maze code's scheme. The warp gradient at step i is the φ-gradient of the very
loss that produced task step i, from the same backward pass:

    g_φ += ∇_φ L(θ_i; φ, B_i)

No extra computation: the loop's ``loss.backward()`` fills φ.grad along with θ.grad, and the observer
moves it into the accumulator just before the task step (and clears φ.grad). Reading (docs/warpgrad.md §9):
θ_i = sg[θ_{i−1} − u_{i−1}] is the previous step's post-update point, so this is arXiv Eq. 8's first-order
objective L_meta(sg[θ − update]; φ) with Adam as the update rule — except that L_meta is evaluated on the
batch the *next* task step then trains on, not on a batch of its own (and step 0's loss, at the initial
θ_0, is included).

``meta_batch`` — arXiv Eq. 8 with a separate batch. After task step i has been taken, θ' = sg[θ_i − u_i]
is the live, updated parameter value; a second, fresh batch B'_i (for the maze: one more rollout of new
episodes, with the updated θ') gives

    g_φ += ∇_φ L(sg[θ_i − u_i]; φ, B'_i)

via the task's ``loss(model, batch("query"))``, a graph-carrying loss on a fresh batch. Only ∇_φ is
taken (``torch.autograd.grad``), so θ.grad is left alone; the task loss's own φ-gradient is discarded.
Cost: one extra forward + backward (a rollout) per iteration.

Meta-step: every η task steps, φ steps with the *mean* of the window's finite contributions (the original
code sums them in φ.grad; with Adam the two differ only through Adam's ε). A contribution with a non-finite
entry is skipped and counted (``skipped``); a window with no finite contribution takes no φ step.

Burn-in: the original code makes no update at all for its first 100 iterations, and (a quirk) does not zero
the gradients meanwhile, so its first update uses ~100 iterations of summed gradient. :func:`continual_update`
offers ``burning_in`` for such iterations with correct zeroing: no backward, no step, nothing accumulates
(the maze's ``burn_in``, default 0). Burn-in iterations count towards the trainer's windows of η
(``meta.every``) iterations but add no contribution, so a window of burn-in only takes no φ step.

Checkpoints: ``state_dict()`` holds φ (as the initialisation), the warp optimiser's state, the accumulator
and the counters — tensors and plain containers only.

Seeds as a batch dimension: a model of S independent seeds stacked along a leading dimension of every
parameter (``model.seeds`` = S, agents.seed_batched) gets the subclass in metarl/continual_seeds.py
(:meth:`ContinualWarpGrad.build` picks it), which overrides the hooks below (:meth:`~ContinualWarpGrad.contribute`,
:meth:`~ContinualWarpGrad.query_objective`, :meth:`~ContinualWarpGrad.updates`) with their per-seed forms; its
task loop is ``continual_update_seeds``. This module is the single learner's path: past ``build`` nothing
here asks whether the model is stacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import MetaLearner, all_finite
from .seam import Observer, OptimizerWatch
from .state import Counters

WARP_OBJECTIVES = ("same_loss", "meta_batch")


@dataclass
class ContinualWarpConfig:
    objective: str = "same_loss"        # same_loss (original code) | meta_batch (Eq. 8, separate batch)

    def __post_init__(self) -> None:
        if self.objective not in WARP_OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(WARP_OBJECTIVES)}, got {self.objective!r}")


class ContinualWarpGrad(MetaLearner):
    """Algorithm 3 over φ = the selected parameters (``include``); θ = every other trainable parameter."""

    name = "warpgrad_continual"
    continual = True

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head=(), **common: Any) -> "ContinualWarpGrad":
        """The learner for ``model``: a model of stacked seeds (``model.seeds``) gets the seed-batched subclass,
        whose every per-seed rule is an override of this class's hooks (module docstring)."""
        if getattr(model, "seeds", 0):
            from .continual_seeds import SeedBatchedContinualWarpGrad
            return SeedBatchedContinualWarpGrad(model, cfg.method_config, **common)
        return cls(model, cfg.method_config, **common)

    def __init__(self, model: nn.Module, config: ContinualWarpConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.config = config or ContinualWarpConfig()
        self.warp_steps = 0                     # φ steps taken

    def task_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        phi = set(self.names)
        return [p for n, p in model.named_parameters() if p.requires_grad and n not in phi]

    def prepare(self, model: nn.Module, task: Any = None) -> None:
        """Tie the running model's φ to the meta-parameters: a meta-step moves the learner's warps."""
        named = dict(model.named_parameters())
        for n, p in zip(self.names, self.params):
            named[n].data = p.data

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Any = None) -> OptimizerWatch:
        phi = self.watched(model)
        stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) in stepped for p in phi):
            raise ValueError("the task optimiser must not step warp parameters: give it meta.task_parameters(model)")
        return OptimizerWatch(optimizer, self.task_parameters(model),
                              [_WarpContribution(self, model, phi, task, optimizer)])

    def contribute(self, grads: Sequence[Tensor], optimizer: torch.optim.Optimizer | None = None) -> bool:
        """One task step's g_φ into the window's sum; False (and counted) if it has a non-finite entry.
        ``optimizer``: the task optimiser whose step the contribution belongs to (not read here; the
        seed-batched learner keeps only the seeds it steps)."""
        torch._foreach_copy_(self._task_acc, list(grads))
        tasks = self.tasks
        self._merge_task()
        return self.tasks > tasks

    def query_objective(self, loss: Tensor) -> Tensor:
        """The scalar whose φ-gradient is a ``meta_batch`` contribution: the query batch's loss."""
        return loss

    def updates(self, logs: dict[str, float]):
        """φ ← φ − meta-optimiser(mean of the window's finite contributions); no contribution, no step."""
        update = self.init_update(logs)
        if update is not None:
            self.warp_steps += bool((yield update))
        logs["meta/warp_steps"] = float(self.warp_steps)

    saved = (Counters("warp_steps", attrs=("warp_steps",), scalar=True),)


class _WarpContribution(Observer):
    """g_φ of every task step: the task loss's own (``same_loss``) or a fresh batch's at θ' (``meta_batch``)."""

    def __init__(self, meta: ContinualWarpGrad, model: nn.Module, phi: list[nn.Parameter], task: Any,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.meta, self.model, self.phi, self.task, self.optimizer = meta, model, phi, task, optimizer

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        warp_grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.phi]
        for p in self.phi:                      # cleared in both modes: never left for the next backward
            p.grad = None
        if self.meta.config.objective == "same_loss":
            self.meta.contribute(warp_grads, self.optimizer)

    def after_step(self, params: Sequence[Tensor]) -> None:
        if self.meta.config.objective == "meta_batch":
            with torch.enable_grad():
                loss = self.meta.query_objective(self.task.loss(self.model, self.task.batch("query")))
                grads = torch.autograd.grad(loss, self.phi, allow_unused=True)
            self.meta.contribute([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.phi)],
                                 self.optimizer)


def continual_update(loss: Tensor, optimizer: torch.optim.Optimizer, watch: Any,
                     params: Sequence[nn.Parameter], burning_in: bool = False,
                     clip_grad_norm: float | None = None) -> str:
    """One iteration of the never-reset task loop; returns ``"step"``, ``"burn_in"`` or ``"non_finite"``.

    ``params``: every parameter of the model (task and warp), whose gradients are cleared first. During
    burn-in nothing is computed or kept (the original code's gradient build-up is not reproduced). A loss
    or task gradient with a non-finite entry skips the task step (so the observer sees nothing either).
    ``clip_grad_norm`` > 0 clips the task gradient's global norm before the step (Backpropamine: 4.0).
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
    if clip_grad_norm:
        nn.utils.clip_grad_norm_(task, clip_grad_norm)
    watch.report(loss)
    optimizer.step()
    return "step"
