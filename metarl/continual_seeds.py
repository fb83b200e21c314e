"""WarpGrad Algorithm 3 (metarl.continual) for S independent seeds stacked along a leading dimension of every
parameter (``model.seeds`` = S, agents.seed_batched), trained in one process: the seed-batched learner and its
task loop.

φ, the accumulator and the warp optimiser's state are stacked too, and everything that is not elementwise is
per seed (metarl.seed_batch): each seed's contribution is kept or dropped on its own finiteness (and only for
seeds whose task step was taken — the task optimiser's ``active`` mask), each seed's meta-gradient is the mean
over its own finite contributions, and a seed with none takes no φ step (:class:`~metarl.seed_batch.SeedAdam`,
per-seed step counts). The task loop is :func:`continual_update_seeds`: one backward of the sum of the S seeds'
losses gives each seed its own gradient; non-finite seeds are masked out of the step, clipping is per seed.

Why a subclass and not the single learner as the S = 1 case: a batch of one seed sums in another order than
the single learner (batched kernels, per-seed norms, SeedAdam): ≈ 3e-8 apart after 9 maze iterations
(train/tasks/maze.py), and the single-seed runs are reference results kept bit for bit. So the single path
(metarl.continual) stays as it is and this class overrides its hooks — ``contribute``, ``query_objective``,
``updates``, ``reset_meta_batch`` — with their per-seed forms; :meth:`ContinualWarpGrad.build` picks it for a
stacked model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import Update
from .continual import ContinualWarpConfig, ContinualWarpGrad
from .seed_batch import SeedAdam, clip_grad_norm_seeds, seed_finite, seed_grad_norms
from .state import Stacked


def _per_seed(mask: Tensor, like: Tensor) -> Tensor:
    """An (S,) mask or count shaped to broadcast against a stacked [S, ...] tensor, on its device."""
    return mask.to(like.device).view(-1, *([1] * (like.dim() - 1)))


class SeedBatchedContinualWarpGrad(ContinualWarpGrad):
    """:class:`~metarl.continual.ContinualWarpGrad` over S stacked seeds (module docstring)."""

    def __init__(self, model: nn.Module, config: ContinualWarpConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model, config, **kwargs)
        self.seeds = S = int(model.seeds)
        mc = self.meta_optimizer_config
        if mc.name != "adam":
            raise ValueError(f"seed-batched warp meta-training supports the adam meta-optimiser, got {mc.name!r}")
        self.meta_optimizer = SeedAdam(self.params, S, lr=mc.lr, betas=tuple(mc.betas), weight_decay=mc.weight_decay)
        self.seed_tasks = torch.zeros(S, dtype=torch.int64)       # finite contributions, per seed
        self.seed_skipped = torch.zeros(S, dtype=torch.int64)     # dropped contributions
        self.seed_warp_steps = torch.zeros(S, dtype=torch.int64)  # φ steps taken, per seed

    def contribute(self, grads: Sequence[Tensor], optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """Seed s's slice is added if finite and its task step is being taken (``optimizer.active[s]``; no mask:
        all), and counted as skipped if non-finite; returns the (S,) mask of added seeds."""
        active = getattr(optimizer, "active", None)
        active = torch.ones(self.seeds, dtype=torch.bool) if active is None else active.to("cpu", torch.bool)
        finite = seed_finite(grads, self.seeds)
        added = finite & active
        for acc, g in zip(self._acc, grads):
            acc.add_(torch.where(_per_seed(added, g), g, torch.zeros((), dtype=g.dtype, device=g.device)))
        self.seed_tasks += added
        self.seed_skipped += active & ~finite
        return added

    def query_objective(self, loss: Tensor) -> Tensor:
        """One query loss per seed: the sum's gradient is each seed's own."""
        return loss.sum()

    def updates(self, logs: dict[str, float]):
        """Per seed: seed s steps with the mean of its own finite contributions, if any; the logs sum the counts
        and average the rest over seeds."""
        S, n = self.seeds, self.seed_tasks
        stepping = n > 0
        logs.update({"meta/tasks": float(n.sum()), "meta/skipped_tasks": float(self.seed_skipped.sum())})
        if bool(stepping.any()):
            grads = [a / _per_seed(n.clamp(min=1), a).to(a.dtype) for a in self._acc]
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
        self.seed_tasks.zero_()
        self.seed_skipped.zero_()

    saved = (Stacked("seed_counters", attrs=("seed_tasks", "seed_skipped", "seed_warp_steps")),)


def continual_update_seeds(loss: Tensor, optimizer: SeedAdam, watch: Any, params: Sequence[nn.Parameter],
                           seeds: int, burning_in: bool = False, clip_grad_norm: float | None = None) -> list[str]:
    """:func:`~metarl.continual.continual_update` for S stacked seeds: ``loss`` holds one value per seed (S,);
    returns one outcome per seed. One backward of the losses' sum gives each seed its own gradient; a seed whose
    loss or task gradient is non-finite is masked out (its gradients zeroed, ``optimizer.active`` False: no
    step, no warp contribution) while the others step. Clipping is per seed. The watch is told the sum of the
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
                p.grad.masked_fill_(~_per_seed(active, p), 0.0)
    if clip_grad_norm:
        clip_grad_norm_seeds(task, clip_grad_norm, seeds)
    watch.report(torch.where(active.to(loss.device), loss.detach(), 0.0).sum())
    optimizer.active = active
    try:
        optimizer.step()
    finally:
        optimizer.active = None
    return ["step" if a else "non_finite" for a in active.tolist()]
