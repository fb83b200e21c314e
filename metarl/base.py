"""The MetaLearner protocol shared by every method.

A meta-learner owns an initialisation θ⁰ (parameters and buffers of a task model) and the
meta-optimiser over the meta-learned part of it. The trainer talks to it only through this protocol:

    meta = Method.build(template, cfg, head=adapter.head, **common)   # from the registry (metarl.registry)
    meta.load_init(model); meta.prepare(model, task)   # a task starts at the current initialisation
    params = meta.task_parameters(model)               # what the task's optimiser may step
    curve = meta.run_task(adapter, task, model, optimizer, steps)   # adapt under the method's watch
    meta.all_reduce(reduce)                            # sum the meta-batch over workers (torchrun)
    logs = meta.meta_step()                            # apply the meta-gradient averaged over the meta-batch
    meta.state_dict() / meta.load_state_dict()         # exact resume

A method observing the optimiser-step seam supplies ``observers()`` — its maths — and nothing else.
Methods that differentiate through the inner loop instead (MAML, Lazy) override ``run_task``.
Meta-gradients are accumulated per task and merged into the meta-batch sum only when finite, so a
diverged task never reaches the initialisation.

``meta_step`` is one template for every method: a method supplies ``updates(logs)`` — the (optimiser,
params, grads, clip) steps of this meta-step, by default θ⁰ with the mean meta-gradient (``init_update``);
WarpGrad yields φ's and θ⁰'s steps in turn — and extends ``reset_meta_batch``; clipping, the undo of a step
that leaves a parameter non-finite, zeroing, the common logs and the counters are here only. Config keys a
method cannot honour are declared by it (``unused_keys``), as is what torchrun cannot split
(``distributed_refusal``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from . import state as checkpointed
from .seam import Observer, OptimizerWatch, StackedWatch, StepObserver


@dataclass
class MetaOptimizerConfig:
    name: str = "sgd"          # sgd | adam | rmsprop
    lr: float = 0.1
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip_grad_norm: float = 0.0     # > 0: clip the meta-gradient's global norm (guards against finite blow-ups)
    # > 0: the sized outer step — rescale the meta-gradient to this fraction of the meta-batch's mean per-task
    # displacement ‖θᴷ − θ⁰‖, so that SGD with lr 1 moves θ⁰ by that fraction of a task's path per meta-step
    # whatever the metric's scale (docs/leap.md §8, "Sizing the outer step"). Seam methods only.
    step_fraction: float = 0.0


def make_optimizer(params: Sequence[Tensor], cfg: MetaOptimizerConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of sgd, adam, rmsprop")


@dataclass
class Update:
    """One optimiser's share of a meta-step: it steps ``params`` with ``grads`` (matched in order), their
    global norm first clipped to ``clip_grad_norm`` when > 0 (by ``clip(params, max_norm)``; seed-batched
    learners clip per seed). ``undo``: undo a step that leaves a parameter non-finite."""
    optimizer: torch.optim.Optimizer
    params: Sequence[Tensor]
    grads: Sequence[Tensor]
    clip_grad_norm: float = 0.0
    clip: Callable[[Sequence[Tensor], float], Any] = torch.nn.utils.clip_grad_norm_
    undo: bool = True


def apply_update(update: Update) -> bool:
    """Clip, step and zero; a step that leaves a parameter non-finite is undone — parameters and optimiser
    state restored — and False returned. (A finite gradient can still overflow, e.g. with a huge lr.)"""
    params = list(update.params)
    for p, g in zip(params, update.grads):
        p.grad = g.to(p.dtype)
    if update.clip_grad_norm > 0:
        update.clip(params, update.clip_grad_norm)
    undo = (copy.deepcopy(update.optimizer.state_dict()), [p.detach().clone() for p in params]) if update.undo else None
    update.optimizer.step()
    update.optimizer.zero_grad(set_to_none=True)
    if undo is None or all_finite(params):
        return True
    update.optimizer.load_state_dict(undo[0])
    with torch.no_grad():
        torch._foreach_copy_(params, undo[1])
    return False


def _advance(updates: Iterator[Update], taken: bool | None) -> Update | None:
    """The next update of a method's ``updates`` (a generator is told whether its last one was taken)."""
    try:
        return updates.send(taken) if taken is not None and hasattr(updates, "send") else next(updates)
    except StopIteration:
        return None


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """True when every entry of every tensor is finite (an empty list is finite); one host sync."""
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


@torch.no_grad()
def global_norm(tensors: Sequence[Tensor]) -> float:
    """‖(t_1, …, t_n)‖₂ over all entries, as clip_grad_norm_ computes it (0 for an empty list)."""
    return float(torch.stack([t.norm() for t in tensors]).norm()) if tensors else 0.0


def select(names: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Parameter names matching any ``include`` prefix (all when empty) and no ``exclude`` prefix."""
    return [n for n in names
            if (not include or any(n.startswith(p) for p in include))
            and not any(n.startswith(p) for p in exclude)]


# method sections of the config outside any one method's own section, and who reads them (``sections``)
SHARED_SECTIONS = {"leap": "only method leap, and warpgrad with init_objective: leap, read leap.*",
                   "maml": "only method maml reads maml.* (Warp-MAML's options are warpgrad.maml_*)"}


class _TaskMerge(Observer):
    """Last observer of every watch: adds the task's meta-gradient to the meta-batch sum if finite."""

    def __init__(self, meta: "MetaLearner", acc: list[Tensor] | None = None) -> None:
        self.meta = meta
        self.acc = acc              # None: the meta-learner's own task accumulator

    def task_end(self, params: Sequence[Tensor], final_loss: Tensor | None) -> None:
        self.meta._merge_task(params, self.acc)


class MetaLearner:
    """Initialisation θ⁰ + meta-optimiser + per-method observers.

    ``include`` / ``exclude`` are parameter-name prefixes restricting what is meta-learned (e.g.
    ``include=["encoder."]`` for Leap on the Atari encoder only). Parameters outside the set keep their
    value in the stored initialisation (so tasks still start from it) but receive no meta-gradient.

    Everything lives on the device of ``model`` (the trainer moves its CPU-drawn template to ``run.device``
    first): θ⁰, the accumulators, the meta-optimiser's state. Checkpoints are mapped to the CPU on load;
    ``load_state_dict`` copies them back onto this device.
    """

    name = "base"
    continual = False       # True: can meta-learn over one never-reset task stream (Algorithm 3, meta.every)
    # True: every task ends through the base watch, which measures ‖θᴷ − θ⁰‖ (``_merge_task(params)``): the
    # visit logs and the sized outer step (meta.optimizer.step_fraction) are available.
    measures_displacement = False

    @classmethod
    def sections(cls, cfg: Any) -> tuple[str, ...]:
        """The shared method sections of the config (``leap:``, ``maml:``) a run of ``cfg`` reads."""
        return ()

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        """Keys of the shared config sections (``inner.*``, ``meta.*``, ``leap.*``, ``maml.*``) that this method
        does not read or cannot honour in a run of ``cfg``, each with the reason; ``metarl train`` refuses them
        when set (train/config_usage.py)."""
        read = cls.sections(cfg)
        out = {s: why for s, why in SHARED_SECTIONS.items() if s not in read}
        if not cls.measures_displacement:
            out["meta.optimizer.step_fraction"] = "the sized step needs each task's displacement, which is not measured"
        return out

    @classmethod
    def check_config(cls, cfg: Any, task: Any) -> None:
        """Refuse (ValueError, one line naming the key) values of a run config ``cfg`` this method cannot run
        with on the task family ``task`` (a train.tasks.base.TaskAdapter class: what its tasks offer)."""

    @classmethod
    def distributed_refusal(cls, cfg: Any) -> str:
        """Why a run of ``cfg`` cannot split its meta-batches over torchrun ranks ("" when it can: the
        meta-batch's sums are all-reduced, so every rank takes the step one process would)."""
        return ""

    @classmethod
    def build(cls, model: nn.Module, cfg: Any, head: Sequence[str] = (), **common: Any) -> "MetaLearner":
        """The method over ``model`` from a run config ``cfg`` (its ``leap``, ``maml`` or method section);
        ``head``: the task family's output-head prefixes; ``common``: meta_optimizer, include, exclude."""
        return cls(model, **common)

    def __init__(self, model: nn.Module, meta_optimizer: MetaOptimizerConfig | None = None,
                 include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        # Entries that share storage (e.g. an SB3 policy lists its features extractor under several
        # names) share one tensor here too, so a meta-step moves all of them and load_init writes one value.
        self.init_state: dict[str, Tensor] = {}
        first: dict[tuple, str] = {}
        for k, v in model.state_dict().items():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
            self.init_state[k] = self.init_state[first[key]] if key in first else v.detach().clone()
            first.setdefault(key, k)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.names = select(trainable, include, exclude)
        if not self.names:
            raise ValueError(f"no parameters selected for meta-learning (include={list(include)}, "
                             f"exclude={list(exclude)})")
        # The meta-parameters share storage with init_state: stepping them moves the initialisation.
        self.params = [nn.Parameter(self.init_state[n]) for n in self.names]
        aliases = {id(self.init_state[n]): p.data for n, p in zip(self.names, self.params)}
        self.init_state = {k: aliases.get(id(v), v) for k, v in self.init_state.items()}
        self._task_acc = [torch.zeros_like(p) for p in self.params]
        self._acc = [torch.zeros_like(p) for p in self.params]
        self.meta_optimizer_config = meta_optimizer or MetaOptimizerConfig()
        self.meta_optimizer = make_optimizer(self.params, self.meta_optimizer_config)
        self.tasks = 0            # finite tasks merged since the last meta-step
        self.skipped = 0          # tasks dropped for a non-finite meta-gradient, since the last meta-step
        self.displacement = 0.0   # Σ ‖θᴷ − θ⁰‖ over those merged tasks (meta-learned parameters only)
        self.meta_steps = 0

    @property
    def device(self) -> torch.device:
        """Where θ⁰ and the meta-learner's state live."""
        return self.params[0].device

    # -- protocol ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def load_init(self, model: nn.Module, skip: Sequence[str] = ()) -> None:
        """Copy θ⁰ (parameters and buffers, e.g. BatchNorm statistics) into ``model``, except entries under
        the ``skip`` prefixes (a re-drawn head, whose shape may differ per task, e.g. per game)."""
        state = model.state_dict()
        for k, v in self.init_state.items():
            if not any(k.startswith(p) for p in skip):
                state[k].copy_(v)

    def prepare(self, model: nn.Module, task: Any = None) -> None:
        """Method-specific set-up of a task model after ``load_init`` (e.g. fine-tuning's task head)."""

    def task_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """What the task's optimiser steps: every trainable parameter (WarpGrad keeps its warps out)."""
        return [p for p in model.parameters() if p.requires_grad]

    def run_task(self, adapter: Any, task: Any, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
                 clip_grad_norm: float | None = None) -> list[float]:
        """Adapt one task under this method's watch, adding its meta-gradient; returns the loss curve."""
        with self.watch(model, optimizer, task) as watch:
            return adapter.adapt(task, model, optimizer, steps, watch, clip_grad_norm=clip_grad_norm)

    def watched(self, model: nn.Module) -> list[Tensor]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    def observers(self, task: Any = None) -> list[StepObserver]:
        """The method's maths: observers adding the task's meta-gradient into ``self._task_acc``."""
        raise NotImplementedError

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer, task: Any = None) -> OptimizerWatch:
        torch._foreach_zero_(self._task_acc)
        return OptimizerWatch(optimizer, self.watched(model), [*self.observers(task), _TaskMerge(self)])

    def task_observers(self, acc: list[Tensor], task: Any = None) -> list[StepObserver]:
        """A fresh set of the method's observers adding one task's meta-gradient into ``acc`` (shaped like
        ``self.params``): tasks watched at once (:meth:`watch_stacked`) need one set each. Methods whose
        maths allows it override this."""
        raise NotImplementedError(f"{type(self).__name__} cannot watch several tasks at once")

    def watch_stacked(self, model: nn.Module, optimizer: torch.optim.Optimizer, tasks: Sequence[Any]) -> StackedWatch:
        """Watch K tasks trained at once as one stacked model (``model``: parameters under the single model's
        names with a leading task dimension, and ``agent_view(name, tensor, k)``, task k's part of a stacked
        tensor). Each task has its own observers and accumulator, and is merged — finiteness check and
        displacement included — as a task of its own, in order."""
        named = dict(model.named_parameters())
        accs = [[torch.zeros_like(p) for p in self.params] for _ in tasks]
        observers = [[*self.task_observers(acc, task), _TaskMerge(self, acc)] for acc, task in zip(accs, tasks)]
        return StackedWatch(optimizer, [named[n] for n in self.names],
                            lambda i, t, k: model.agent_view(self.names[i], t, k), observers)

    def _merge_task(self, params: Sequence[Tensor] | None = None, acc: list[Tensor] | None = None) -> None:
        """Add the task's meta-gradient (``acc``, default the task accumulator) to the meta-batch sum if
        finite; ``params``: the task's θᴷ of the meta-learned parameters, whose distance from θ⁰ is counted
        (methods that run their own loop omit it)."""
        acc = self._task_acc if acc is None else acc
        if all_finite(acc):
            torch._foreach_add_(self._acc, acc)
            self.tasks += 1
            if params is not None:
                with torch.no_grad():
                    self.displacement += global_norm(torch._foreach_sub(list(params), self.params))
        else:
            self.skipped += 1

    def all_reduce(self, reduce: Callable[[list[Tensor]], None]) -> None:
        """Sum the meta-batch accumulators over workers with ``reduce`` (in place), before ``meta_step``."""
        counts = torch.tensor([self.tasks, self.skipped, self.displacement], dtype=torch.float64)
        reduce([*self._acc, counts])
        self.tasks, self.skipped, self.displacement = int(counts[0]), int(counts[1]), float(counts[2])

    def meta_gradient(self) -> list[Tensor]:
        """The accumulated meta-gradient, averaged over the finite tasks of the meta-batch."""
        n = max(self.tasks, 1)
        return [a / n for a in self._acc]

    def meta_step(self) -> dict[str, float]:
        """The meta-step, the same for every method: the method's :meth:`updates` supply what to step; here
        each is clipped, taken, undone if it left a parameter non-finite (counted: ``meta/skipped_step``) and
        zeroed; ‖Δθ⁰‖ and its ratio to a task's visit ‖θᴷ − θ⁰‖ are logged; the meta-batch is reset
        (:meth:`reset_meta_batch`) and counted. Returns the scalars to log (``meta/*``)."""
        logs = {"meta/tasks": float(self.tasks), "meta/skipped_tasks": float(self.skipped)}
        visit = self.displacement / self.tasks if self.tasks > 0 else 0.0
        if self.measures_displacement and self.tasks > 0:
            logs["meta/visit_displacement"] = visit
        start = [p.detach().clone() for p in self.params] if self.tasks > 0 else None
        updates, taken, undone, stepped = iter(self.updates(logs)), None, 0, False
        while (update := _advance(updates, taken)) is not None:
            taken = apply_update(update)
            undone += not taken
            stepped = True
        if undone:
            logs["meta/skipped_step"] = float(undone)
        if stepped and start is not None:
            with torch.no_grad():
                logs["meta/init_displacement"] = step = global_norm(torch._foreach_sub(start, self.params))
            if visit > 0:
                logs["meta/step_over_visit"] = step / visit
        self.reset_meta_batch()
        self.meta_steps += 1
        return logs

    def updates(self, logs: dict[str, float]) -> Iterable[Update]:
        """What this meta-step steps, in order (a generator is sent whether each update was taken), adding
        the method's scalars to ``logs``. Default: θ⁰ with the meta-batch's mean meta-gradient."""
        update = self.init_update(logs)
        return () if update is None else (update,)

    def init_update(self, logs: dict[str, float]) -> Update | None:
        """θ⁰'s step with the mean meta-gradient of the finite tasks (None without any), logged as
        ``meta/grad_norm``; with ``step_fraction`` > 0 rescaled to that fraction of the mean visit."""
        if self.tasks == 0:
            return None
        grads = self.meta_gradient()
        logs["meta/grad_norm"] = norm = global_norm(grads)
        fraction = self.meta_optimizer_config.step_fraction
        if fraction > 0:
            visit = self.displacement / self.tasks
            if visit <= 0:
                raise RuntimeError(f"meta.optimizer.step_fraction needs each task's displacement, which "
                                   f"{type(self).__name__} does not measure")
            torch._foreach_mul_(grads, fraction * visit / max(norm, 1e-30))
        return Update(self.meta_optimizer, self.params, grads, self.meta_optimizer_config.clip_grad_norm)

    def reset_meta_batch(self) -> None:
        """Zero the meta-batch's accumulators and counts after a meta-step (methods extend it)."""
        torch._foreach_zero_(self._acc)
        self.tasks = 0
        self.skipped = 0
        self.displacement = 0.0

    # -- checkpointing -------------------------------------------------------------------------------
    # What a checkpoint holds, as typed entries (metarl/state.py); a method lists only what it adds, in its own
    # ``saved``, and state_dict / load_state_dict are generated from the whole hierarchy's entries.
    saved = (checkpointed.Tensors("init", "init_state"), checkpointed.Optimizer("meta_optimizer"),
             checkpointed.Tensors("acc", "_acc"),
             # a checkpoint written before displacement was counted holds the first three
             checkpointed.Counters("counters", attrs=("tasks", "skipped", "meta_steps", "displacement"),
                            dtype=torch.float64))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for exact resume: tensors and plain containers only (weights_only loading)."""
        return checkpointed.state_dict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output onto this learner's device."""
        checkpointed.load_state_dict(self, saved)

