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

Seeds as a batch dimension (metarl.seed_batch): when the learner is S independent seeds stacked along a
leading dimension of every parameter (``model.seeds`` = S), φ, the accumulator and the warp optimiser's state
are stacked too, and everything that is not elementwise is per seed: each seed's contribution is kept or
dropped on its own finiteness (and only for seeds whose task step was taken — the task optimiser's
``active`` mask), each seed's meta-gradient is the mean over its own finite contributions, and a seed with
none takes no φ step (:class:`~metarl.seed_batch.SeedAdam`, per-seed step counts). The task loop is
:func:`continual_update_seeds`: one backward of the sum of the S seeds' losses gives each seed its own
gradient; non-finite seeds are masked out of the step, clipping is per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import MetaLearner, Update, all_finite
from .seam import Observer, OptimizerWatch
from .seed_batch import SeedAdam, clip_grad_norm_seeds, seed_finite, seed_grad_norms
from .state import Counters, Stacked

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
        return cls(model, cfg.method_config, **common)

    def __init__(self, model: nn.Module, config: ContinualWarpConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.config = config or ContinualWarpConfig()
        self.warp_steps = 0                     # φ steps taken
        self.seeds = int(getattr(model, "seeds", 0) or 0)     # S > 0: S stacked seeds (module docstring)
        if self.seeds:
            mc = self.meta_optimizer_config
            if mc.name != "adam":
                raise ValueError(f"seed-batched warp meta-training supports the adam meta-optimiser, got {mc.name!r}")
            self.meta_optimizer = SeedAdam(self.params, self.seeds, lr=mc.lr, betas=tuple(mc.betas),
                                           weight_decay=mc.weight_decay)
            self.seed_tasks = torch.zeros(self.seeds, dtype=torch.int64)       # finite contributions, per seed
            self.seed_skipped = torch.zeros(self.seeds, dtype=torch.int64)     # dropped contributions
            self.seed_warp_steps = torch.zeros(self.seeds, dtype=torch.int64)  # φ steps taken, per seed

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

    def contribute(self, grads: Sequence[Tensor], active: Tensor | None = None) -> bool | Tensor:
        """One task step's g_φ into the window's sum; False (and counted) if it has a non-finite entry.
        Seed-batched: seed s's slice is added if finite and ``active[s]`` (its task step was taken; None: all),
        and counted as skipped if non-finite; returns the (S,) mask of added seeds."""
        if not self.seeds:
            torch._foreach_copy_(self._task_acc, list(grads))
            tasks = self.tasks
            self._merge_task()
            return self.tasks > tasks
        S = self.seeds
        active = torch.ones(S, dtype=torch.bool) if active is None else active.to("cpu", torch.bool)
        finite = seed_finite(grads, S)
        added = finite & active
        for acc, g in zip(self._acc, grads):
            mask = added.to(g.device).view(-1, *([1] * (g.dim() - 1)))
            acc.add_(torch.where(mask, g, torch.zeros((), dtype=g.dtype, device=g.device)))
        self.seed_tasks += added
        self.seed_skipped += active & ~finite
        return added

    def updates(self, logs: dict[str, float]):
        """φ ← φ − meta-optimiser(mean of the window's finite contributions); no contribution, no step.
        Seed-batched: per seed (module docstring); the logs sum the counts and average the rest over seeds."""
        if self.seeds:
            yield from self._seed_updates(logs)
            return
        update = self.init_update(logs)
        if update is not None:
            self.warp_steps += bool((yield update))
        logs["meta/warp_steps"] = float(self.warp_steps)

    def _seed_updates(self, logs: dict[str, float]):
        S, n = self.seeds, self.seed_tasks
        stepping = n > 0
        logs.update({"meta/tasks": float(n.sum()), "meta/skipped_tasks": float(self.seed_skipped.sum())})
        if bool(stepping.any()):
            grads = [a / n.clamp(min=1).to(a.device, a.dtype).view(-1, *([1] * (a.dim() - 1))) for a in self._acc]
            logs["meta/grad_norm"] = float(seed_grad_norms(grads, S)[stepping].mean())
            self.meta_optimizer.active = stepping
            # per-seed clipping; no undo: restoring every seed for one seed's overflow would couple the seeds
            yield Update(self.meta_optimizer, self.params, grads, self.meta_optimizer_config.clip_grad_norm,
                         clip=lambda params, max_norm: clip_grad_norm_seeds(params, max_norm, S), undo=False)
            self.meta_optimizer.active = None
        self.seed_warp_steps += stepping
        self.warp_steps = int(self.seed_warp_steps.max())
        logs["meta/warp_steps"] = float(self.seed_warp_steps.double().mean())

    def reset_meta_batch(self) -> None:
        super().reset_meta_batch()
        if self.seeds:
            self.seed_tasks.zero_()
            self.seed_skipped.zero_()

    saved = (Counters("warp_steps", attrs=("warp_steps",), scalar=True),
             Stacked("seed_counters", attrs=("seed_tasks", "seed_skipped", "seed_warp_steps"), when="seeds"))


class _WarpContribution(Observer):
    """g_φ of every task step: the task loss's own (``same_loss``) or a fresh batch's at θ' (``meta_batch``)."""

    def __init__(self, meta: ContinualWarpGrad, model: nn.Module, phi: list[nn.Parameter], task: Any,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.meta, self.model, self.phi, self.task, self.optimizer = meta, model, phi, task, optimizer

    def _contribute(self, grads: list[Tensor]) -> None:
        if self.meta.seeds:                     # only seeds whose task step is being taken
            self.meta.contribute(grads, getattr(self.optimizer, "active", None))
        else:
            self.meta.contribute(grads)

    def before_step(self, params: Sequence[Tensor], grads: Sequence[Tensor], loss: Tensor | None) -> None:
        warp_grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.phi]
        for p in self.phi:                      # cleared in both modes: never left for the next backward
            p.grad = None
        if self.meta.config.objective == "same_loss":
            self._contribute(warp_grads)

    def after_step(self, params: Sequence[Tensor]) -> None:
        if self.meta.config.objective == "meta_batch":
            with torch.enable_grad():
                loss = self.task.loss(self.model, self.task.batch("query"))
                if self.meta.seeds:             # one loss per seed: the sum's gradient is each seed's own
                    loss = loss.sum()
                grads = torch.autograd.grad(loss, self.phi, allow_unused=True)
            self._contribute([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.phi)])


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


def continual_update_seeds(loss: Tensor, optimizer: SeedAdam, watch: Any, params: Sequence[nn.Parameter],
                           seeds: int, burning_in: bool = False, clip_grad_norm: float | None = None) -> list[str]:
    """:func:`continual_update` for S stacked seeds: ``loss`` holds one value per seed (S,); returns one
    outcome per seed. One backward of the losses' sum gives each seed its own gradient; a seed whose loss or
    task gradient is non-finite is masked out (its gradients zeroed, ``optimizer.active`` False: no step,
    no warp contribution) while the others step. Clipping is per seed. The watch is told the sum of the
    stepping seeds' losses."""
    for p in params:
        p.grad = None
    if burning_in:
        return ["burn_in"] * seeds
    finite = torch.isfinite(loss.detach()).cpu()
    if not bool(finite.any()):
        return ["non_finite"] * seeds
    loss.sum().backward()
    task = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    active = finite & seed_finite([p.grad for p in task], seeds)
    if not bool(active.any()):
        for p in params:
            p.grad = None
        return ["non_finite"] * seeds
    if not bool(active.all()):
        for p in params:
            if p.grad is not None:
                p.grad.masked_fill_(~active.to(p.device).view(-1, *([1] * (p.dim() - 1))), 0.0)
    if clip_grad_norm:
        clip_grad_norm_seeds(task, clip_grad_norm, seeds)
    watch.report(torch.where(active.to(loss.device), loss.detach(), 0.0).sum())
    optimizer.active = active
    try:
        optimizer.step()
    finally:
        optimizer.active = None
    return ["step" if a else "non_finite" for a in active.tolist()]
