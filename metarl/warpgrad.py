"""WarpGrad (Flennerhag et al., 2019/2020): meta-learned warp layers that precondition task gradients.

The task model's parameters are split by name (warpgrad.md §1):

    θ  task-adaptable — every parameter the inner optimiser steps; its start θ⁰ is meta-learned by an
       *init objective* C (Leap, MAML, or none);
    φ  warp           — parameters under the warp prefixes (default ``warps.``); fixed during adaptation
       and meta-learned by the *warp objective*.

Warp objective at one stored trajectory point θ (a constant: no gradient flows into how θ was reached),
with one differentiable replay of the inner SGD step from θ — task loss on batch 1, meta loss on a
different batch 2 of the same task:

    θ'(φ) = θ − α·d(φ),  d = μ·b + ∇_θ L_task(θ; φ)   (b: the inner SGD's stored momentum buffer, if any)
    full         L(φ) = L_meta(θ'(φ); φ)                      (arXiv Eq. 7)
                 ∇_φ L = ∂_φ L_meta(θ'; φ) − α (∂²L_task/∂φ∂θ)ᵀ ∇_θ' L_meta
    first_order  L̂(φ) = L_meta(sg[θ'(φ)]; φ)                  (arXiv Eq. 8)
                 the step is taken, then frozen: φ gets only its direct role in L_meta at θ'.
    (The original code's ``approx=True`` evaluated L_meta at θ with no step at all — not Eq. 8.)

Composite J(φ, θ⁰) = L(φ) + λ C(θ⁰) (Eq. 9), trained by coordinate descent with two separate
meta-optimisers (λ is the ratio of their learning rates).

Algorithms (App. B):
- ``online`` (Alg. 1): the warp gradient is computed at every selected point θ_k while the task runs
  (through the optimiser-step seam) and accumulated; φ and θ⁰ step once per meta-batch.
- ``offline`` (Alg. 2): the points θ_0 … θ_K of every task (with BN buffers and momentum buffers) go to an
  in-memory replay buffer; ``meta_step`` samples (task, k) pairs without replacement and steps φ every
  ``eta`` samples. θ⁰ steps with them (``init_schedule="eta"``, the paper) or once per meta-batch
  (``"meta_batch"``, the original code).

Normalisation (a convention; the paper writes plain sums): a φ step uses the *mean* warp gradient of the
points it covers (all points of the meta-batch online, ``eta`` samples offline); a θ⁰ step uses the *mean*
init gradient over the finite tasks, like every other MetaLearner here. Offline with the ``eta`` schedule
each sample (τ, k) carries the share G_τ / (n_τ·T) of its task's init gradient G_τ (n_τ points, T tasks):
the shares of a meta-batch sum to the per-meta-batch mean, so with an SGD init optimiser both schedules end
at the same θ⁰; they differ with stateful optimisers (Adam).

Trainer contract: ``load_init`` → ``prepare`` (freezes the model's warp parameters) → the inner optimiser
over ``task_parameters(model)`` (everything but the warps; it must be ``torch.optim.SGD`` unless
``inner_lr`` is set) → ``with watch(model, optimizer, task)`` (``task`` must be the Task object: the
objective draws its two batches with ``task.batch`` and scores them with ``task.loss``) → ``meta_step``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .base import MetaLearner, MetaOptimizerConfig, all_finite, global_norm, make_optimizer, select
from .leap import LeapConfig, LeapObjective
from .maml import _Functional
from .seam import Observer, OptimizerWatch

OBJECTIVES = ("full", "first_order")
ALGORITHMS = ("online", "offline")
INIT_OBJECTIVES = ("none", "leap", "maml")
INIT_SCHEDULES = ("eta", "meta_batch")


# ------------------------------------------------------------------------------------------------
# configuration


@dataclass
class WarpGradConfig:
    objective: str = "full"             # full (Eq. 7) | first_order (Eq. 8, stop-gradient on the step)
    algorithm: str = "offline"          # online (Alg. 1) | offline (Alg. 2, replay buffer)
    init_objective: str = "leap"        # none (fixed init) | leap (Warp-Leap) | maml (Warp-MAML)
    warp_prefixes: tuple[str, ...] = ("warps.",)   # parameter-name prefixes of φ
    # The replayed inner step. None: read lr / momentum from the inner SGD optimiser at every point;
    # a value is checked against it (and is required when the inner optimiser is not SGD).
    inner_lr: float | None = None
    inner_momentum: float | None = None
    task_split: str = "train"           # batch 1: L_task of the replayed step
    meta_split: str = "train"           # batch 2: L_meta (Omniglot: training data for both)
    stride: int = 1                     # use every stride-th trajectory point θ_0, θ_s, θ_2s, …
    final_point: bool = True            # also use θ_K (the original code never stored it)
    # offline (Algorithm 2)
    eta: int = 1                        # samples per φ step
    init_schedule: str = "eta"          # eta: θ⁰ steps with φ (paper) | meta_batch: once (original code)
    fp16: bool = False                  # store θ, momentum and float buffers in half precision
    replay_device: str = ""             # "" keeps points on the parameters' device; e.g. "cpu"
    # meta-optimiser of φ (θ⁰ uses the MetaLearner's ``meta_optimizer``)
    warp_optimizer: MetaOptimizerConfig = field(default_factory=MetaOptimizerConfig)
    # Warp-MAML init objective: differentiable steps from θ⁰ through the warped model (φ constant)
    maml_steps: int = 5
    maml_lr: float | None = None        # None: the inner optimiser's learning rate
    maml_first_order: bool = False
    maml_query_split: str = "query"

    def __post_init__(self) -> None:
        choices = {"objective": OBJECTIVES, "algorithm": ALGORITHMS, "init_objective": INIT_OBJECTIVES,
                   "init_schedule": INIT_SCHEDULES}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key} must be one of {', '.join(valid)}, got {getattr(self, key)!r}")
        for key in ("stride", "eta", "maml_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("inner_lr", "inner_momentum", "maml_lr"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise ValueError(f"{key} must be >= 0, got {v}")
        self.warp_prefixes = tuple(self.warp_prefixes)
        if not self.warp_prefixes or not all(self.warp_prefixes):
            raise ValueError("warp_prefixes must be non-empty prefixes")


def warp_leap_config(**overrides: Any) -> WarpGradConfig:
    """Warp-Leap as on Omniglot (App. E): full objective, offline replay with η = 1, Leap init.
    Pair it with ``LeapConfig()`` (loss term on, as the paper) or ``LeapConfig(loss=False)`` (the
    original code's simplified Leap)."""
    return WarpGradConfig(**{"objective": "full", "algorithm": "offline", "init_objective": "leap",
                             "eta": 1, "init_schedule": "eta", **overrides})


def warp_maml_config(**overrides: Any) -> WarpGradConfig:
    """Warp-MAML as in the few-shot experiments (App. C/H): full objective, online (Alg. 1), MAML init."""
    return WarpGradConfig(**{"objective": "full", "algorithm": "online", "init_objective": "maml",
                             **overrides})


# ------------------------------------------------------------------------------------------------
# the replayed inner step


@dataclass(frozen=True)
class SGDRule:
    """torch.optim.SGD's update for one parameter (``maximize`` is not supported)."""
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


def sgd_step(theta: Sequence[Tensor], grads: Sequence[Tensor], rules: Sequence[SGDRule],
             momentum: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """θ − lr·d with torch's SGD direction d (no in-place ops, so it is differentiable in all inputs).

    ``momentum[i]`` is the buffer *before* this step (None: the first step, where torch sets b = g)."""
    out = []
    for i, (t, g, r) in enumerate(zip(theta, grads, rules)):
        if r.weight_decay:
            g = g + r.weight_decay * t
        if r.momentum:
            b = momentum[i] if momentum is not None else None
            buf = g if b is None else r.momentum * b + (1.0 - r.dampening) * g
            d = g + r.momentum * buf if r.nesterov else buf
        else:
            d = g
        out.append(t - r.lr * d)
    return out


# ------------------------------------------------------------------------------------------------
# the warp objective


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
            task_loss = loss_fn(_Functional(model, {**fixed, **dict(zip(names, th))}), batch_task)
            g = torch.autograd.grad(task_loss, th, create_graph=self.full, allow_unused=True)
            g = [torch.zeros_like(t) if gi is None else gi for t, gi in zip(th, g)]
            if self.full:
                new = sgd_step(th, g, rules, momentum)
            else:
                with torch.no_grad():      # sg[θ − α d]: the step is kept, its dependence on φ is not
                    new = sgd_step([t.detach() for t in th], [gi.detach() for gi in g], rules, momentum)
            meta_loss = loss_fn(_Functional(model, {**fixed, **dict(zip(names, new))}), batch_meta)
            grads = torch.autograd.grad(meta_loss, phi_values, allow_unused=True)
        grads = [torch.zeros_like(p) if gp is None else gp.detach() for p, gp in zip(phi_values, grads)]
        return WarpValue(grads, task_loss.detach(), meta_loss.detach())


# ------------------------------------------------------------------------------------------------
# init objectives (C in Eq. 9)


class NoInit:
    """λC = 0: the initialisation stays where it is (warp-only; continual sine, Table 4)."""
    name = "none"

    def observer(self, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD") -> Any:
        return None


class LeapInit:
    """Warp-Leap: the Leap pull-forward gradient (Eq. 13 with the loss term when ``config.loss``) of the
    observed trajectory, measured in θ-space, i.e. in the warped geometry. One :class:`LeapObjective`
    per meta-learner, watching the meta-learned subset of θ."""
    name = "leap"

    def __init__(self, config: LeapConfig | None = None) -> None:
        self.config = config or LeapConfig()
        self._objective: LeapObjective | None = None

    def objective(self, acc: Sequence[Tensor]) -> LeapObjective:
        if self._objective is None:
            self._objective = LeapObjective(self.config, acc)
        return self._objective

    def observer(self, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD") -> Any:
        index = [task_names.index(n) for n in wg.names]
        obs = self.objective(wg._task_acc)
        return obs if index == list(range(len(task_names))) else _Subset(obs, index)

    def pop_logs(self) -> dict[str, float]:
        obs = self._objective
        if obs is None:
            return {}
        path_length, segments = obs.reset_stats()
        return {"meta/path_length": path_length, "meta/segments": float(segments)}


class MAMLInit:
    """Warp-MAML: ∇_θ⁰ L_query(θ_S) after S differentiable SGD steps from θ⁰ through the warped model
    (φ held constant), computed when the task starts. ``lr=None`` uses the inner optimiser's rate."""
    name = "maml"

    def __init__(self, steps: int = 5, lr: float | None = None, first_order: bool = False,
                 query_split: str = "query") -> None:
        self.steps, self.lr, self.first_order, self.query_split = steps, lr, first_order, query_split

    def observer(self, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD") -> Any:
        return _MAMLObserver(self, wg, model, task, task_names, inner)


class _Subset:
    """Forwards the seam's events for a subset of the watched tensors."""

    def __init__(self, observer: Any, index: Sequence[int]) -> None:
        self.observer, self.index = observer, list(index)

    def _pick(self, xs: Sequence[Tensor]) -> list[Tensor]:
        return [xs[i] for i in self.index]

    def task_start(self, params) -> None:
        self.observer.task_start(self._pick(params))

    def before_step(self, params, grads, loss) -> None:
        self.observer.before_step(self._pick(params), self._pick(grads), loss)

    def after_step(self, params) -> None:
        self.observer.after_step(self._pick(params))

    def task_end(self, params, final_loss) -> None:
        self.observer.task_end(self._pick(params), final_loss)


class _MAMLObserver(Observer):
    def __init__(self, init: MAMLInit, wg: "WarpGrad", model: nn.Module, task: Any, task_names: list[str],
                 inner: "InnerSGD") -> None:
        self.init, self.wg, self.model, self.task, self.names = init, wg, model, task, task_names
        self.inner = inner
        self.index = [task_names.index(n) for n in wg.names]

    def task_start(self, params) -> None:
        init, wg, task = self.init, self.wg, self.task
        rules = self.inner.rules()
        lrs = [init.lr if init.lr is not None else r.lr for r in rules]
        with torch.enable_grad(), train_mode(self.model):
            start = [p.detach().requires_grad_(True) for p in params]
            fixed = {**{n: w.detach() for n, w in zip(wg.warp_names, wg.warp_params)},
                     **{k: b.detach().clone() for k, b in self.model.named_buffers()}}
            fast = list(start)
            for _ in range(init.steps):
                loss = task.loss(_Functional(self.model, {**fixed, **dict(zip(self.names, fast))}),
                                 task.batch(wg.config.task_split))
                g = torch.autograd.grad(loss, fast, create_graph=not init.first_order, allow_unused=True)
                fast = [f if gi is None else f - lr * gi for f, gi, lr in zip(fast, g, lrs)]
            query = task.loss(_Functional(self.model, {**fixed, **dict(zip(self.names, fast))}),
                              task.batch(init.query_split))
            meta = torch.autograd.grad(query, [start[i] for i in self.index], allow_unused=True)
        with torch.no_grad():
            for acc, g in zip(wg._task_acc, meta):
                if g is not None:
                    acc.add_(g)


def make_init_objective(config: WarpGradConfig, leap: LeapConfig | None = None) -> NoInit | LeapInit | MAMLInit:
    if config.init_objective == "leap":
        return LeapInit(leap)
    if config.init_objective == "maml":
        return MAMLInit(config.maml_steps, config.maml_lr, config.maml_first_order, config.maml_query_split)
    return NoInit()


class InnerSGD:
    """The watched inner optimiser as the warp objective replays it: per-parameter SGD rules (read at
    every point, so lr schedules are followed) and the momentum buffers before the next step."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor], config: WarpGradConfig) -> None:
        self.optimizer, self.params, self.config = optimizer, list(params), config
        if not isinstance(optimizer, torch.optim.SGD):
            if config.inner_lr is None:
                raise ValueError(f"the inner optimiser is {type(optimizer).__name__}: WarpGrad replays SGD steps; "
                                 f"use SGD or set warpgrad.inner_lr to replay it as SGD with that rate")
            return
        for group in optimizer.param_groups:
            if group.get("maximize", False):
                raise ValueError("WarpGrad cannot replay an SGD optimiser with maximize=True")
            for key, want in (("lr", config.inner_lr), ("momentum", config.inner_momentum)):
                have = float(group[key])
                if want is not None and not math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12):
                    raise ValueError(f"warpgrad.inner_{key}={want} but the inner SGD has {key}={have}")

    def rules(self) -> list[SGDRule]:
        opt, cfg = self.optimizer, self.config
        if not isinstance(opt, torch.optim.SGD):
            return [SGDRule(float(cfg.inner_lr), float(cfg.inner_momentum or 0.0))] * len(self.params)
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        cache: dict[int, SGDRule] = {}
        out = []
        for p in self.params:
            g = group_of[id(p)]
            if id(g) not in cache:
                cache[id(g)] = SGDRule(float(g["lr"]), float(g["momentum"]), float(g["dampening"]),
                                       bool(g["nesterov"]), float(g["weight_decay"]))
            out.append(cache[id(g)])
        return out

    def momentum(self) -> list[Tensor | None]:
        """In a pre-step hook: b_{k−1}, the buffers step k will use (None before the first step)."""
        state = self.optimizer.state
        out = []
        for p in self.params:
            b = state[p].get("momentum_buffer") if p in state else None
            out.append(None if b is None else b.detach())
        return out


# ------------------------------------------------------------------------------------------------
# trajectory points


class _Point(NamedTuple):
    index: int                           # k: the step the point was taken before (K for θ_K)
    theta: Tensor                        # flat θ_k (storage dtype)
    momentum: Tensor | None              # flat momentum buffers present before step k
    has_momentum: tuple[bool, ...]       # which parameters had a buffer
    buffers: dict[str, Tensor]           # model buffers at θ_k (BN running statistics)
    rules: tuple[SGDRule, ...]


class _Trajectory:
    """One task's stored points plus what replaying them needs."""

    def __init__(self, task: Any, model: nn.Module, names: list[str], params: Sequence[Tensor]) -> None:
        self.task, self.model, self.names = task, model, names
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        self.dtypes = [p.dtype for p in params]
        self.device = params[0].device if params else torch.device("cpu")
        self.points: list[_Point] = []
        self.finite = torch.ones((), dtype=torch.bool)
        self.init_grad: list[Tensor] | None = None

    def unpack(self, flat: Tensor, present: Sequence[bool] | None = None) -> list[Tensor | None]:
        present = present or [True] * len(self.numels)
        sizes = [n for n, keep in zip(self.numels, present) if keep]
        chunks = iter(flat.split(sizes)) if sizes else iter(())
        out: list[Tensor | None] = []
        for keep, shape, dtype in zip(present, self.shapes, self.dtypes):
            out.append(next(chunks).to(self.device, dtype).reshape(shape) if keep else None)
        return out


def _flat(tensors: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(device, dtype) for t in tensors])


# ------------------------------------------------------------------------------------------------
# observers


class _Begin(Observer):
    def __init__(self, wg: "WarpGrad") -> None:
        self.wg = wg

    def task_start(self, params) -> None:
        self.wg._begin_task()


class _End(Observer):
    def __init__(self, wg: "WarpGrad", trajectory: _Trajectory | None) -> None:
        self.wg, self.trajectory = wg, trajectory

    def task_end(self, params, final_loss) -> None:
        self.wg._end_task(self.trajectory)


class _PointSelector(Observer):
    """Calls ``visit(params, k)`` at the selected points θ_k: every stride-th step and θ_K."""

    def __init__(self, wg: "WarpGrad") -> None:
        self.wg, self.k, self.last = wg, 0, -1

    def before_step(self, params, grads, loss) -> None:
        k, self.k = self.k, self.k + 1
        if k % self.wg.config.stride == 0:
            self.last = k
            self.visit(params, k)

    def task_end(self, params, final_loss) -> None:
        if self.wg.config.final_point and self.last != self.k:
            self.last = self.k
            self.visit(params, self.k)

    def visit(self, params: Sequence[Tensor], k: int) -> None:
        raise NotImplementedError


class _OnlineWarp(_PointSelector):
    """Algorithm 1: the warp gradient at every selected θ_k, accumulated for the task."""

    def __init__(self, wg: "WarpGrad", model: nn.Module, task: Any, names: list[str], inner: InnerSGD) -> None:
        super().__init__(wg)
        self.model, self.task, self.names, self.inner = model, task, names, inner

    def visit(self, params, k) -> None:
        wg = self.wg
        value = wg._point_value(self.model, self.task, self.names, [p.detach() for p in params],
                                self.inner.momentum(), dict(self.model.named_buffers()), self.inner.rules(), k)
        wg._add_task_point(value)


class _Recorder(_PointSelector):
    """Algorithm 2: store the selected θ_k with the model buffers and the momentum buffers before step k."""

    def __init__(self, wg: "WarpGrad", trajectory: _Trajectory, inner: InnerSGD) -> None:
        super().__init__(wg)
        self.trajectory, self.inner = trajectory, inner
        self._rules: tuple[SGDRule, ...] | None = None

    def visit(self, params, k) -> None:
        wg, traj = self.wg, self.trajectory
        device = torch.device(wg.config.replay_device) if wg.config.replay_device else traj.device
        dtype = torch.float16 if wg.config.fp16 else _common_dtype(traj.dtypes)
        theta = _flat(params, dtype, device)
        finite = theta.isfinite().all()
        moms = self.inner.momentum()
        has = tuple(m is not None for m in moms)
        mom = _flat([m for m in moms if m is not None], dtype, device) if any(has) else None
        if mom is not None:
            finite = finite & mom.isfinite().all()
        buffers = {}
        for name, b in self.model_buffers():
            keep = b.detach().to(device, torch.float16 if wg.config.fp16 and b.is_floating_point() else b.dtype)
            buffers[name] = keep.clone() if keep.data_ptr() == b.data_ptr() else keep
        rules = tuple(self.inner.rules())
        if rules == self._rules:
            rules = self._rules          # share one tuple across points while the rule is unchanged
        self._rules = rules
        traj.finite = traj.finite & finite.to(traj.finite.device)
        traj.points.append(_Point(k, theta, mom, has, buffers, rules))

    def model_buffers(self):
        return self.trajectory.model.named_buffers()


def _common_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    out = dtypes[0] if dtypes else torch.get_default_dtype()
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


# ------------------------------------------------------------------------------------------------
# the meta-learner


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
        self._task_stats = torch.zeros(3, dtype=torch.float64)     # points, Σ meta loss, Σ task loss
        self._stats = torch.zeros(3, dtype=torch.float64)
        self._replay: list[_Trajectory] = []
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
        observers: list[Any] = [_Begin(self)]
        init_obs = self.init_objective.observer(self, model, task, task_names, inner)
        if init_obs is not None:
            observers.append(init_obs)
        trajectory = None
        if self.config.algorithm == "online":
            observers.append(_OnlineWarp(self, model, task, task_names, inner))
        else:
            trajectory = _Trajectory(task, model, task_names, params)
            observers.append(_Recorder(self, trajectory, inner))
        observers.append(_End(self, trajectory))
        return OptimizerWatch(optimizer, params, observers)

    # -- one point -------------------------------------------------------------------------------------
    def _batches(self, task: Any, k: int) -> tuple[Any, Any]:
        if self.warp_batches is not None:
            return self.warp_batches(task, k)
        return task.batch(self.config.task_split), task.batch(self.config.meta_split)

    def _point_value(self, model: nn.Module, task: Any, names: list[str], theta: Sequence[Tensor],
                     momentum: Sequence[Tensor | None], buffers: Mapping[str, Tensor],
                     rules: Sequence[SGDRule], k: int) -> WarpValue:
        b_task, b_meta = self._batches(task, k)
        phi = dict(zip(self.warp_names, self.warp_params))
        return self.warp_objective(model, dict(zip(names, theta)), phi, task.loss, b_task, b_meta,
                                   rules, momentum, buffers)

    def _replay_value(self, traj: _Trajectory, point: _Point) -> WarpValue:
        theta = traj.unpack(point.theta)
        momentum = traj.unpack(point.momentum, point.has_momentum) if point.momentum is not None else None
        own = dict(traj.model.named_buffers())
        buffers = {n: b.to(own[n].device, own[n].dtype) for n, b in point.buffers.items()}
        return self._point_value(traj.model, traj.task, traj.names, theta, momentum, buffers, point.rules,
                                 point.index)

    # -- per-task bookkeeping ------------------------------------------------------------------------------
    def _begin_task(self) -> None:
        torch._foreach_zero_(self._task_acc)
        torch._foreach_zero_(self._warp_task_acc)
        self._task_stats.zero_()

    def _add_task_point(self, value: WarpValue) -> None:
        torch._foreach_add_(self._warp_task_acc, value.grads)
        self._task_stats += torch.stack([torch.ones((), dtype=torch.float64),
                                         value.meta_loss.double().cpu(), value.task_loss.double().cpu()])

    def _end_task(self, trajectory: _Trajectory | None) -> None:
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
    @staticmethod
    def _apply(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @property
    def learns_init(self) -> bool:
        return not isinstance(self.init_objective, NoInit)

    def meta_step(self) -> dict[str, float]:
        logs = {"meta/tasks": float(self.tasks), "meta/skipped_tasks": float(self.skipped)}
        if self.config.algorithm == "online":
            logs.update(self._online_step())
        else:
            logs.update(self._offline_step())
        if isinstance(self.init_objective, LeapInit):
            tasks = max(self.tasks + self.skipped, 1)
            logs.update({k: v / tasks for k, v in self.init_objective.pop_logs().items()})
        torch._foreach_zero_(self._acc)
        torch._foreach_zero_(self._warp_acc)
        self._stats.zero_()
        self._replay = []
        self.tasks = 0
        self.skipped = 0
        self.meta_steps += 1
        return logs

    def all_reduce(self, reduce: Callable[[list[Tensor]], None]) -> None:
        """Online: sum warp and init accumulators over workers. (The offline replay is sequential in its
        samples — one φ step per η — so the trainer runs it in one process.)"""
        super().all_reduce(lambda tensors: reduce([*tensors, *self._warp_acc, self._stats]))

    def flush(self) -> None:
        """Algorithm 3 timing (``meta.every``): φ steps every η task updates *inside* a running task, so
        merge everything the running task accumulated since its start or last flush — warp gradient, loss
        statistics, init gradient — into the meta-step's sums; the remainder merges at the task's end.
        Each flushed chunk counts as one task. Online only: offline replay has nothing to flush."""
        if self.config.algorithm != "online":
            raise ValueError("continual WarpGrad (Algorithm 3) accumulates online: set warpgrad.algorithm: online")
        self._end_task(None)
        self._begin_task()

    def _init_mean(self) -> list[Tensor]:
        return self.meta_gradient()          # mean over finite tasks of the init gradient

    def _online_step(self) -> dict[str, float]:
        logs: dict[str, float] = {}
        points = int(self._stats[0])
        logs["meta/warp_points"] = float(points)
        if points > 0:
            g = [a / points for a in self._warp_acc]
            self.last_warp_grad = [x.clone() for x in g]
            logs["meta/warp_grad_norm"] = global_norm(g)
            logs["meta/warp_loss"] = float(self._stats[1]) / points
            logs["meta/warp_task_loss"] = float(self._stats[2]) / points
            self._apply(self.warp_optimizer, self.warp_params, g)
            self.warp_updates += 1
            logs["meta/warp_steps"] = 1.0
        if self.tasks > 0 and self.learns_init:
            g0 = self._init_mean()
            logs["meta/init_grad_norm"] = global_norm(g0)
            self._apply(self.meta_optimizer, self.params, g0)
        return logs

    def _offline_step(self) -> dict[str, float]:
        cfg = self.config
        samples = [(t, j) for t, traj in enumerate(self._replay) for j in range(len(traj.points))]
        logs: dict[str, float] = {"meta/warp_points": float(len(samples))}
        if self.tasks > 0 and self.learns_init:
            logs["meta/init_grad_norm"] = global_norm(self._init_mean())
        if not samples:
            return logs
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
            value = self._replay_value(traj, traj.points[j])
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
                    self._apply(self.warp_optimizer, self.warp_params, mean)
                    self.warp_updates += 1
                    steps += 1
                if per_eta_init:
                    self._apply(self.meta_optimizer, self.params, g_init)
                    torch._foreach_zero_(g_init)
                torch._foreach_zero_(g_phi)
                in_chunk = finite_in_chunk = 0
        if self.learns_init and cfg.init_schedule == "meta_batch" and self.tasks > 0:
            self._apply(self.meta_optimizer, self.params, self._init_mean())
        self.last_warp_grad = [x / max(used, 1) for x in total]
        logs.update({"meta/warp_steps": float(steps), "meta/skipped_points": float(skipped),
                     "meta/warp_grad_norm": global_norm(self.last_warp_grad)})
        if used:
            logs["meta/warp_loss"] = loss_sum / used
            logs["meta/warp_task_loss"] = task_loss_sum / used
        return logs

    # -- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """θ⁰ and φ (``init``), both meta-optimisers, accumulators and counters — tensors and plain
        containers only. The replay buffer is not saved: checkpoint between meta-steps."""
        state = super().state_dict()
        state["warp_names"] = list(self.warp_names)
        state["warp_optimizer"] = self.warp_optimizer.state_dict()
        state["warp_acc"] = [a.clone() for a in self._warp_acc]
        state["warp_stats"] = self._stats.clone()
        state["warp_counters"] = torch.tensor([self.warp_updates])
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["warp_names"]) != list(self.warp_names):
            raise ValueError("checkpoint warp parameters do not match this model's")
        super().load_state_dict(state)
        self.warp_optimizer.load_state_dict(state["warp_optimizer"])
        torch._foreach_copy_(self._warp_acc, list(state["warp_acc"]))
        self._stats.copy_(state["warp_stats"])
        self.warp_updates = int(state["warp_counters"][0])

    # -- presets -------------------------------------------------------------------------------------------
    @classmethod
    def warp_leap(cls, model: nn.Module, leap: LeapConfig | None = None, **kwargs: Any) -> "WarpGrad":
        """Warp-Leap (Omniglot): ``warp_leap_config()``; extra keywords go to the constructor."""
        return cls(model, kwargs.pop("config", None) or warp_leap_config(), leap=leap, **kwargs)

    @classmethod
    def warp_maml(cls, model: nn.Module, **kwargs: Any) -> "WarpGrad":
        """Warp-MAML (few-shot): ``warp_maml_config()``; extra keywords go to the constructor."""
        return cls(model, kwargs.pop("config", None) or warp_maml_config(), **kwargs)

