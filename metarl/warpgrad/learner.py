"""The WarpGrad meta-learner: θ⁰ and φ, their two meta-optimisers, accumulation and the meta-step."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..base import MetaLearner, MetaOptimizerConfig, Update, all_finite, global_norm, make_optimizer, select
from ..leap import LeapConfig
from ..seam import OptimizerWatch
from ..state import Counters, Names, Optimizer, Tensors
from .config import WarpGradConfig, warp_maml_config
from .init_objectives import LeapInit, MAMLInit, NoInit, make_init_objective
from .inner import InnerSGD, SGDRule
from .objective import WarpObjective, WarpValue
from .observers import OnlineWarp, TaskBegin, TaskEnd
from .replay import Recorder, ReplayPoint, Trajectory


# the loss statistics of the warp objective, summed over points in one float64 vector (all-reduced at once)
STATS = ("points", "meta_loss", "task_loss")
POINTS, META_LOSS, TASK_LOSS = range(len(STATS))


class WarpGrad(MetaLearner):
    """WarpGrad over a model with warp layers. θ⁰ (``init_state``, ``params`` = the init-meta-learned
    subset of θ chosen by include / exclude) is stepped by ``meta_optimizer``; φ (``warp_params``) by
    its own optimiser from ``config.warp_optimizer``. Both live in ``init_state`` so ``load_init`` gives
    every task the current θ⁰ and φ (and resets all BatchNorm statistics, warp BN included).

    ``warp_batches(task, k) -> (batch_task, batch_meta)`` overrides how the two batches for point k
    are drawn (default: ``task.batch(config.task_split)``, ``task.batch(config.meta_split)``); replayable
    batches make offline replay reproduce online accumulation exactly. ``warp_objective`` and ``init``
    override the objects built from the config."""

    name = "warpgrad"

    @classmethod
    def sections(cls, cfg: Any) -> tuple[str, ...]:
        return ("leap",) if cfg.method_config.init_objective == "leap" else ()     # Warp-Leap reads leap.*

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        # the warp objective replays each inner step as an SGD step on the unclipped gradient (inner.py)
        return {**super().unused_keys(cfg),
                "inner.clip_grad_norm": "WarpGrad's warp objective replays unclipped SGD steps "
                                        "(metarl/warpgrad/inner.py)"}

    @classmethod
    def distributed_refusal(cls, cfg: Any) -> str:
        if cfg.method_config.algorithm == "offline":
            return "warpgrad.algorithm: offline replays samples in sequence (use online with torchrun)"
        return ""

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head=(), **common: Any) -> "WarpGrad":
        return cls(model, cfg.method_config, leap=cfg.leap, **common)

    def __init__(self, model: nn.Module, config: WarpGradConfig | None = None, leap: LeapConfig | None = None,
                 meta_optimizer: MetaOptimizerConfig | None = None, include: Sequence[str] = (),
                 exclude: Sequence[str] = (), *,
                 warp_batches: Callable[[Any, int], tuple[Any, Any]] | None = None,
                 warp_objective: WarpObjective | None = None,
                 init: NoInit | LeapInit | MAMLInit | None = None) -> None:
        self.config = config = config or WarpGradConfig()
        super().__init__(model, meta_optimizer=meta_optimizer, include=include,
                         exclude=tuple(exclude) + tuple(config.warp_prefixes))
        self.warp_names = select([n for n, _ in model.named_parameters()], include=config.warp_prefixes)
        if not self.warp_names:
            raise ValueError(f"no warp parameters: no parameter name starts with {list(config.warp_prefixes)}")
        self.warp_params = [nn.Parameter(self.init_state[n]) for n in self.warp_names]
        for n, p in zip(self.warp_names, self.warp_params):
            self.init_state[n] = p.data
        self.warp_optimizer = make_optimizer(self.warp_params, config.warp_optimizer)
        self.warp_objective = warp_objective or WarpObjective(config.objective)
        self.init_objective = init or make_init_objective(config, leap)
        self.warp_batches = warp_batches
        # online accumulators: the current task's, and the finite tasks' of the meta-batch
        self._warp_task_acc = [torch.zeros_like(p) for p in self.warp_params]
        self._warp_acc = [torch.zeros_like(p) for p in self.warp_params]
        # indexed by STATS; on the device, so adding a point's losses needs no host sync
        self._task_stats = torch.zeros(len(STATS), dtype=torch.float64, device=self.warp_params[0].device)
        self._stats = torch.zeros(len(STATS), dtype=torch.float64, device=self.warp_params[0].device)
        self._replay: list[Trajectory] = []
        self.warp_updates = 0                 # φ steps since construction
        self.last_warp_grad: list[Tensor] = [torch.zeros_like(p) for p in self.warp_params]
        # the mean warp gradient over the points of the last meta-step (diagnostic)

    # -- what the trainer calls ------------------------------------------------------------------------
    def is_warp(self, name: str) -> bool:
        return any(name.startswith(p) for p in self.config.warp_prefixes)

    def task_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the inner optimiser steps: every trainable parameter except the warps."""
        return [p for n, p in model.named_parameters() if p.requires_grad and not self.is_warp(n)]

    def warp_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for n, p in model.named_parameters() if self.is_warp(n)]

    def prepare(self, model: nn.Module, task: Any = None) -> None:
        """Freeze the model's warp parameters (φ is fixed during adaptation; no weight gradients needed)."""
        for p in self.warp_parameters(model):
            p.requires_grad_(False)

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Any = None) -> OptimizerWatch:
        if task is None or not hasattr(task, "loss") or not hasattr(task, "batch"):
            raise TypeError("WarpGrad.watch needs the Task object (with batch() and loss()) as `task`")
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = list(model.named_parameters())
        warps = [n for n, p in named if self.is_warp(n) and id(p) in in_opt]
        if warps:
            raise ValueError(f"warp parameters must stay fixed during adaptation, but the inner optimiser holds "
                             f"{warps[:3]}{'…' if len(warps) > 3 else ''}; give it meta.task_parameters(model)")
        task_names = [n for n, p in named if id(p) in in_opt]
        missing = [n for n in self.names if n not in task_names]
        if missing:
            raise ValueError(f"meta-learned parameters {missing[:3]} are not in the inner optimiser")
        params = [p for n, p in named if id(p) in in_opt]
        inner = InnerSGD(optimizer, params, self.config)
        observers: list[Any] = [TaskBegin(self)]
        init_obs = self.init_objective.observer(self, model, task, task_names, inner, self._task_acc)
        if init_obs is not None:
            observers.append(init_obs)
        trajectory = None
        if self.config.algorithm == "online":
            observers.append(OnlineWarp(self, model, task, task_names, inner))
        else:
            trajectory = Trajectory(task, model, task_names, params)
            observers.append(Recorder(self, trajectory, inner))
        observers.append(TaskEnd(self, trajectory))
        return OptimizerWatch(optimizer, params, observers)

    # -- one point -------------------------------------------------------------------------------------
    def _batches(self, task: Any, k: int) -> tuple[Any, Any]:
        if self.warp_batches is not None:
            return self.warp_batches(task, k)
        return task.batch(self.config.task_split), task.batch(self.config.meta_split)

    def point_value(self, model: nn.Module, task: Any, names: list[str], theta: Sequence[Tensor],
                     momentum: Sequence[Tensor | None], buffers: Mapping[str, Tensor],
                     rules: Sequence[SGDRule], k: int) -> WarpValue:
        b_task, b_meta = self._batches(task, k)
        phi = dict(zip(self.warp_names, self.warp_params))
        return self.warp_objective(model, dict(zip(names, theta)), phi, task.loss, b_task, b_meta,
                                   rules, momentum, buffers)

    def _replay_value(self, traj: Trajectory, point: ReplayPoint) -> WarpValue:
        theta = traj.unpack(point.theta)
        momentum = traj.unpack(point.momentum, point.has_momentum) if point.momentum is not None else None
        own = dict(traj.model.named_buffers())
        buffers = {n: b.to(own[n].device, own[n].dtype) for n, b in point.buffers.items()}
        return self.point_value(traj.model, traj.task, traj.names, theta, momentum, buffers, point.rules,
                                 point.index)

    # -- per-task bookkeeping ------------------------------------------------------------------------------
    def begin_task(self) -> None:
        torch._foreach_zero_(self._task_acc)
        torch._foreach_zero_(self._warp_task_acc)
        self._task_stats.zero_()

    def add_task_point(self, value: WarpValue) -> None:
        torch._foreach_add_(self._warp_task_acc, value.grads)
        self._task_stats += torch.stack([torch.ones((), dtype=torch.float64, device=self._task_stats.device),
                                         value.meta_loss.double().to(self._task_stats.device),
                                         value.task_loss.double().to(self._task_stats.device)])

    def end_task(self, trajectory: Trajectory | None) -> None:
        checks = [t.isfinite().all() for t in self._task_acc]
        if trajectory is None:
            checks += [t.isfinite().all() for t in self._warp_task_acc] + [self._task_stats.isfinite().all()]
        else:
            checks.append(trajectory.finite)
        finite = bool(torch.stack([c.cpu() for c in checks]).all())
        if not finite:
            self.skipped += 1
            return
        self.tasks += 1
        torch._foreach_add_(self._acc, self._task_acc)
        if trajectory is None:
            torch._foreach_add_(self._warp_acc, self._warp_task_acc)
            self._stats += self._task_stats
        elif trajectory.points:
            if self.config.init_schedule == "eta":
                trajectory.init_grad = [a.clone() for a in self._task_acc]
            self._replay.append(trajectory)

    # -- meta-step ---------------------------------------------------------------------------------------
    def _warp_update(self, grads: Sequence[Tensor]) -> Update:
        """φ's step with its own optimiser and clip (``warpgrad.warp_optimizer.clip_grad_norm``)."""
        return Update(self.warp_optimizer, self.warp_params, grads, self.config.warp_optimizer.clip_grad_norm)

    def _init_update(self, grads: Sequence[Tensor]) -> Update:
        """θ⁰'s step with the meta-optimiser and its clip (``meta.optimizer.clip_grad_norm``)."""
        return Update(self.meta_optimizer, self.params, grads, self.meta_optimizer_config.clip_grad_norm)

    @property
    def learns_init(self) -> bool:
        return not isinstance(self.init_objective, NoInit)

    def updates(self, logs: dict[str, float]):
        """φ's and θ⁰'s steps, in order, for the base class's meta-step (which clips, takes, undoes and counts
        them): online one of each; offline one φ step per η replayed samples."""
        if self.config.algorithm == "online":
            yield from self._online_updates(logs)
        else:
            yield from self._offline_updates(logs)
        if isinstance(self.init_objective, LeapInit):
            tasks = max(self.tasks + self.skipped, 1)
            logs.update({k: v / tasks for k, v in self.init_objective.pop_logs().items()})

    def reset_meta_batch(self) -> None:
        super().reset_meta_batch()
        torch._foreach_zero_(self._warp_acc)
        self._stats.zero_()
        self._replay = []

    def all_reduce(self, reduce: Callable[[list[Tensor]], None]) -> None:
        """Online: sum warp and init accumulators over workers. (The offline replay is sequential in its
        samples — one φ step per η — so the trainer runs it in one process.)"""
        super().all_reduce(lambda tensors: reduce([*tensors, *self._warp_acc, self._stats]))

    def _init_mean(self) -> list[Tensor]:
        return self.meta_gradient()          # mean over finite tasks of the init gradient

    def _online_updates(self, logs: dict[str, float]):
        points = int(self._stats[POINTS])
        logs["meta/warp_points"] = float(points)
        if points > 0:
            g = [a / points for a in self._warp_acc]
            self.last_warp_grad = [x.clone() for x in g]
            logs["meta/warp_grad_norm"] = global_norm(g)
            logs["meta/warp_loss"] = float(self._stats[META_LOSS]) / points
            logs["meta/warp_task_loss"] = float(self._stats[TASK_LOSS]) / points
            taken = yield self._warp_update(g)
            self.warp_updates += taken
            logs["meta/warp_steps"] = float(taken)
        if self.tasks > 0 and self.learns_init:
            g0 = self._init_mean()
            logs["meta/init_grad_norm"] = global_norm(g0)
            yield self._init_update(g0)

    def _offline_updates(self, logs: dict[str, float]):
        cfg = self.config
        samples = [(t, j) for t, traj in enumerate(self._replay) for j in range(len(traj.points))]
        logs["meta/warp_points"] = float(len(samples))
        if self.tasks > 0 and self.learns_init:
            logs["meta/init_grad_norm"] = global_norm(self._init_mean())
        if not samples:
            return
        # Sample order from the meta-step count, not the global RNG: a resumed run replays identically.
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.meta_steps)).tolist()
        per_eta_init = self.learns_init and cfg.init_schedule == "eta"
        total = [torch.zeros_like(p) for p in self.warp_params]
        g_phi = [torch.zeros_like(p) for p in self.warp_params]
        g_init = [torch.zeros_like(p) for p in self.params]
        in_chunk = finite_in_chunk = used = skipped = steps = 0
        loss_sum = task_loss_sum = 0.0
        for pos, s in enumerate(order):
            t, j = samples[s]
            traj = self._replay[t]
            value = self._replay_value(traj, traj.points[j])     # at the current φ: after the previous steps
            in_chunk += 1
            if all_finite([*value.grads, value.meta_loss]):
                torch._foreach_add_(g_phi, value.grads)
                finite_in_chunk += 1
                used += 1
                loss_sum += float(value.meta_loss)
                task_loss_sum += float(value.task_loss)
            else:
                skipped += 1
            if per_eta_init:   # this sample's share of its task's init gradient
                torch._foreach_add_(g_init, traj.init_grad, alpha=1.0 / (len(traj.points) * self.tasks))
            if in_chunk == cfg.eta or pos == len(order) - 1:
                if finite_in_chunk:
                    mean = [g / finite_in_chunk for g in g_phi]
                    torch._foreach_add_(total, g_phi)
                    taken = yield self._warp_update(mean)
                    self.warp_updates += taken
                    steps += taken
                if per_eta_init:
                    yield self._init_update(g_init)
                    torch._foreach_zero_(g_init)
                torch._foreach_zero_(g_phi)
                in_chunk = finite_in_chunk = 0
        if self.learns_init and cfg.init_schedule == "meta_batch" and self.tasks > 0:
            yield self._init_update(self._init_mean())
        self.last_warp_grad = [x / max(used, 1) for x in total]
        logs.update({"meta/warp_steps": float(steps), "meta/skipped_points": float(skipped),
                     "meta/warp_grad_norm": global_norm(self.last_warp_grad)})
        if used:
            logs["meta/warp_loss"] = loss_sum / used
            logs["meta/warp_task_loss"] = task_loss_sum / used

    # -- checkpointing -------------------------------------------------------------------------------------
    # θ⁰ and φ (both in ``init``), both meta-optimisers, accumulators and counters. The replay buffer is not
    # saved: checkpoint between meta-steps.
    saved = (Names("warp_names", mismatch="warp parameters do not match this model's"),
             Optimizer("warp_optimizer"), Tensors("warp_acc", "_warp_acc"),
             Tensors("warp_stats", "_stats"), Counters("warp_counters", attrs=("warp_updates",)))

    # -- presets -------------------------------------------------------------------------------------------
    @classmethod
    def warp_maml(cls, model: nn.Module, **kwargs: Any) -> "WarpGrad":
        """Warp-MAML (few-shot): ``warp_maml_config()``; extra keywords go to the constructor."""
        return cls(model, kwargs.pop("config", None) or warp_maml_config(), **kwargs)
