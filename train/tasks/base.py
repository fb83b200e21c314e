"""The task-adapter protocol: every task family (sine, Omniglot, tieredImageNet, continual sine, Atari,
maze) is a :class:`TaskAdapter`. The trainer composes an adapter with a meta-learner:

    tasks = adapter.sample_tasks("train", meta_batch, rng)
    for task in tasks:
        model = adapter.make_model(generator, task); meta.load_init(model); meta.prepare(model, task)
        optimizer = adapter.make_optimizer(model, meta.task_parameters(model), cfg.inner)
        meta.run_task(adapter, task, model, optimizer, steps)     # adapt() under the meta-learner's watch
    meta.meta_step()

Adapters own data and the inner loop; they own no logging, checkpoints or meta-learning. Optional
behaviour has a default here (SB3-callback style), so the trainer never asks whether an adapter has it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from metarl.base import MetaOptimizerConfig, make_optimizer
from metarl.seam import NULL_WATCH


class Task(Protocol):
    key: str                                   # which member of the family (alphabet, game, sine draw)

    def batch(self, split: str) -> Any:        # "train" (inner steps) | "query" (MAML outer) | "test"
        ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        ...


class TaskAdapter:
    """Base class of the task families. Subclasses implement ``make_model``, ``sample_tasks`` and
    ``evaluate``; the rest has the supervised default."""

    head: Sequence[str] = ("head.",)           # parameter-name prefixes of the output head
    splits: Sequence[str] = ("train", "val", "test")
    periodic_evaluation = True                 # held-out evaluation every eval.every meta-steps
    continual_only = False                     # True: one never-reset learner (trainer's continual mode)
    global_step: int | None = None             # RL families: env steps so far (the games' x-axis)
    # Live-progress hooks (train/progress.py sets them): families that play games call on_game(record) per
    # finished game and on_progress(game, env_steps) per update; the others never call them.
    on_game: Callable[[Any], None] | None = None
    on_progress: Callable[[str, int], None] | None = None
    # Where models, batches and buffers live (the trainer sets it from ``run.device``, train/device.py).
    # Models are drawn on the CPU by ``make_model`` and moved by ``build_model``; batches are produced on or
    # moved to this device by the family's tasks.
    device: torch.device = torch.device("cpu")
    device_types: Sequence[str] = ("cpu", "cuda")   # where the family can run
    # The one clipping rule for every family: the task gradient's clip has exactly one key. A family whose
    # own section has a clip (Atari's atari.a2c.max_grad_norm, the maze's maze.clip_grad_norm) reads that key
    # only — in training and in held-out runs alike — and refuses inner.clip_grad_norm; every other family
    # reads inner.clip_grad_norm. So no precedence between two keys exists to differ from task to task.
    clip_key = "inner.clip_grad_norm"
    held_out_batches = False                   # its tasks have held_out_batches(): all held-out data in batches
    # Keys of the family's own section that name a data folder: made absolute when a config is read
    # (train/config.py), and free to change on resume, as are ``resume_mutable``'s (where a machine keeps a
    # cache): neither changes what a checkpoint holds or how the run goes on.
    data_keys: Sequence[str] = ()
    resume_mutable: Sequence[str] = ()

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuse (ValueError, one line naming the key) values of a run config ``cfg`` this family cannot run
        with, beyond what its own section's dataclass checks (e.g. a split with no tasks)."""

    @classmethod
    def head_shape_varies(cls, task_config: Any) -> str:
        """Why the output head's shape differs from task to task under ``task_config`` ("" when it has one
        shape): a head learned into θ⁰ (meta.head: learned) then has no one shape."""
        return ""
    # True: under torchrun every rank takes a share of ``evaluate_run``'s held-out runs (Atari); False: rank 0
    # evaluates alone.
    spreads_evaluation = False

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        """Config keys (dotted, or a whole section) a run of this family does not read, each with the reason;
        ``metarl train`` refuses them when set (train/config_usage.py)."""
        out: dict[str, str] = {}
        if cls.clip_key != "inner.clip_grad_norm":
            out["inner.clip_grad_norm"] = (f"task {cfg.task} clips its task gradient with {cls.clip_key} only "
                                           f"(one clip key per task)")
        if not cls.periodic_evaluation:
            for k in ("every", "periodic_split"):
                out[f"eval.{k}"] = f"task {cfg.task} evaluates once, at the end (no periodic evaluation)"
        for k in ("video", "video_frames", "note", "random_init"):
            out[f"eval.{k}"] = f"only Atari's held-out protocol reads eval.{k} (this run's task is {cfg.task})"
        return out

    @classmethod
    def build(cls, config: Any, seed: int = 0) -> "TaskAdapter":
        """The family's adapter for ``config`` (a family with variants builds the one the config names)."""
        return cls(config, seed=seed)

    def __init__(self, config: Any, seed: int = 0) -> None:
        self.config = config
        self.seed = seed

    # -- required ------------------------------------------------------------------------------------------
    def make_model(self, generator: torch.Generator, task: Task | None = None) -> nn.Module:
        raise NotImplementedError

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[Task]:
        raise NotImplementedError

    def evaluate(self, task: Task, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of an adapted ``model`` on ``task`` (e.g. test loss, accuracy)."""
        raise NotImplementedError

    # -- defaults ------------------------------------------------------------------------------------------
    def build_model(self, generator: torch.Generator, task: Task | None = None) -> nn.Module:
        """``make_model`` drawn on the CPU from ``generator`` (the same numbers on every device), then moved
        to :attr:`device`. The trainer and the evaluation protocols build task models through this."""
        return self.make_model(generator, task).to(self.device)

    def make_optimizer(self, model: nn.Module, params: Sequence[nn.Parameter], inner: Any) -> torch.optim.Optimizer:
        """The task learner's optimiser over ``params`` (what the meta-learner lets it step): ``inner.*``."""
        return make_optimizer(params, MetaOptimizerConfig(name=inner.optimizer, lr=inner.lr, momentum=inner.momentum))

    def adapt(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
        """The inner loop; reports every step through ``watch``; returns the loss curve (K+1 points)."""
        return supervised_adapt(task, model, optimizer, steps, watch, clip_grad_norm)

    def evaluate_run(self, cfg: Any, meta: Any, run_dir: Path, step: int, logger: Any = None,
                     world: Any = None) -> dict | None:
        """A whole-run evaluation protocol of the family's own (Atari: games × seeds × inits), or None: the
        trainer's per-task held-out evaluation applies. ``world`` (train/distributed.py): the ranks that share
        the runs where :attr:`spreads_evaluation`; otherwise only rank 0 calls this."""
        return None

    def task_costs(self, tasks: Sequence[Task]) -> list[float] | None:
        """Each task's expected cost from measured speeds, the same on every rank, for the meta-batch's
        assignment to ranks (``World.mine``); None: unmeasured, round robin."""
        return None

    def share_costs(self, all_reduce: Callable[[list[Tensor]], None]) -> None:
        """Pool the speeds this rank measured since the last call with the other ranks' (``all_reduce`` sums
        tensors over ranks), after every meta-batch."""

    def drain_games(self) -> list[Any]:
        """RL families: records (``global_step``, ``episodic_return``, ``length``) of the games finished
        since the last call."""
        return []

    def drain_logs(self) -> list[tuple[int, dict[str, float]]]:
        """Scalars for the env-step axis since the last call, as (step, {tag: value}): by default the
        finished games' return and length."""
        return [(g.global_step, {"charts/episodic_return": g.episodic_return, "charts/episodic_length": g.length})
                for g in self.drain_games()]

    def run_info(self) -> dict[str, Any]:
        """What the run directory's run_info.json records about the family's environment (Atari: backend)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the family carries between tasks (counters, environment RNGs) for exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def supervised_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, watch=NULL_WATCH,
                    clip_grad_norm: float | None = None) -> Tensor:
    """One inner step on a fresh training batch, reported through the seam; returns the detached loss."""
    loss = task.loss(model, task.batch("train"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_grad_norm)
    watch.report(loss)
    optimizer.step()
    return loss.detach()


def finish_task(task: Task, model: nn.Module, watch=NULL_WATCH) -> Tensor:
    """f(θ_K) on one more training batch; it closes the final segment for the meta-learner."""
    with torch.no_grad():
        final = task.loss(model, task.batch("train"))
    watch.finish(final)
    return final


def supervised_adapt(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
                     watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
    """The supervised inner loop: ``steps`` optimiser steps on fresh training batches.

    Returns the training-loss curve f(θ_0), …, f(θ_{K−1}), f(θ_K).
    """
    model.train()
    curve = [supervised_step(task, model, optimizer, watch, clip_grad_norm) for _ in range(steps)]
    curve.append(finish_task(task, model, watch))
    return torch.stack(curve).tolist()


def seeded_default_init(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default conv / linear initialisation (kaiming-uniform with a = √5, bias U(±1/√fan_in)),
    every draw taken from ``generator`` so a model is a function of its seed."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            module.bias.uniform_(-bound, bound, generator=generator)


def curve_auc(curve: Sequence[float]) -> float:
    """Area under a loss curve by the trapezoidal rule, divided by its length in steps (Leap's AUC)."""
    c = np.asarray(curve, dtype=np.float64)
    if len(c) < 2:
        return float(c[0]) if len(c) else float("nan")
    return float(np.trapezoid(c) / (len(c) - 1))
