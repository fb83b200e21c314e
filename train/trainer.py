"""The meta-training loop: sample a meta-batch of tasks → adapt each under the meta-learner's watch →
meta-step. The trainer owns logging, evaluation and checkpoints; methods and tasks own none of that.

Randomness is derived from (seed, meta-step), never carried in hidden state, so a resumed run draws
exactly the tasks and batches an uninterrupted run would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from metarl import FOMAML, MAML, FineTuning, Leap, MetaLearner, NoPretraining, Reptile
from metarl.base import MetaOptimizerConfig, make_optimizer
from metarl.seam import Observer

from .checkpoint import load_latest, save_checkpoint
from .config import Config, config_to_yaml
from .distributed import World
from .errors import ConfigError
from .tasks import build_adapter
from .tasks.base import curve_auc


# ------------------------------------------------------------------------------------------------
# construction


def build_meta_learner(cfg: Config, model: nn.Module, adapter: Any) -> MetaLearner:
    """The method named by ``cfg.method`` over ``model``'s parameters (head excluded when re-drawn)."""
    exclude = list(cfg.meta.exclude) + (list(adapter.head) if cfg.meta.head == "reset" else [])
    common = dict(meta_optimizer=cfg.meta.optimizer, include=list(cfg.meta.include), exclude=exclude)
    if cfg.method == "leap":
        return Leap(model, cfg.leap, **common)
    if cfg.method == "reptile":
        return Reptile(model, **common)
    if cfg.method == "fomaml":
        return FOMAML(model, **common)
    if cfg.method == "maml":
        return MAML(model, inner_lr=cfg.maml.inner_lr, inner_steps=cfg.maml.steps,
                    first_order=cfg.maml.first_order, **common)
    if cfg.method == "finetune":
        return FineTuning(model, head=tuple(adapter.head), **common)
    if cfg.method == "no_pretraining":
        return NoPretraining(model, **common)
    if cfg.method == "warpgrad":
        from metarl.warpgrad import WarpGrad
        return WarpGrad(model, cfg.method_config, leap=cfg.leap, **common)
    if cfg.method == "lazy":
        from metarl.lazy import Lazy
        return Lazy(model, cfg.method_config, **common)
    raise ValueError(f"unknown method {cfg.method!r}")


FIXED = 2**32 - 1   # the "meta-step" key of draws that must not depend on the step (template, held-out)


def step_generators(seed: int, step: int, stream: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """Independent NumPy and torch generators for one (seed, meta-step, stream)."""
    rng = np.random.default_rng([seed, step, stream])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def task_model(adapter: Any, meta: MetaLearner, task: Any, generator: torch.Generator, head: str) -> nn.Module:
    """A model at the current initialisation. Under ``head: reset`` every method starts every task from
    a freshly drawn output head (drawn from ``generator``); under ``learned`` the head comes from θ⁰."""
    model = adapter.make_model(generator, task)
    meta.load_init(model, skip=tuple(adapter.head) if head == "reset" else ())
    meta.prepare(model, task)
    return model


def task_parameters(model: nn.Module, meta: MetaLearner) -> list[nn.Parameter]:
    """What the inner optimiser steps: everything except warp parameters (WarpGrad keeps them fixed)."""
    if hasattr(meta, "task_parameters"):
        return list(meta.task_parameters(model))
    return [p for p in model.parameters() if p.requires_grad]


def inner_optimizer(params: list[nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    inner = cfg.inner
    return make_optimizer(params, MetaOptimizerConfig(name=inner.optimizer, lr=inner.lr, momentum=inner.momentum))


def make_task_optimizer(adapter: Any, model: nn.Module, meta: MetaLearner, cfg: Config) -> torch.optim.Optimizer:
    """The adapter's own optimiser where it has one (A2C's RMSprop), else ``inner.*`` over the task params."""
    if hasattr(adapter, "make_optimizer") and not hasattr(meta, "task_parameters"):
        return adapter.make_optimizer(model)
    return inner_optimizer(task_parameters(model, meta), cfg)


def run_task(cfg: Config, adapter: Any, meta: MetaLearner, task: Any, generator: torch.Generator,
             steps: int, watched: bool = True) -> tuple[nn.Module, list[float]]:
    """Adapt one task from the current initialisation; the meta-learner observes it when ``watched``."""
    model = task_model(adapter, meta, task, generator, cfg.meta.head)
    clip = cfg.inner.clip_grad_norm or None
    if watched and getattr(meta, "differentiable", False):      # MAML: backprop through the inner loop
        return model, meta.accumulate(model, lambda m, split: task.loss(m, task.batch(split)))
    optimizer = make_task_optimizer(adapter, model, meta, cfg)
    if not watched:
        return model, adapter.adapt(task, model, optimizer, steps, clip_grad_norm=clip)
    with meta.watch(model, optimizer, task) as watch:
        curve = adapter.adapt(task, model, optimizer, steps, watch, clip_grad_norm=clip)
    return model, curve


# ------------------------------------------------------------------------------------------------
# evaluation


def evaluate(cfg: Config, adapter: Any, meta: MetaLearner, split: str | None = None,
             metrics: Callable[[Any, nn.Module], dict[str, float]] | None = None
             ) -> tuple[dict[str, float], list[float]]:
    """Adapt fixed held-out tasks from the current initialisation; mean metrics over tasks.

    The held-out tasks and their head draws depend only on the seed, so every evaluation of every method
    sees the same tasks. Metrics (mean and std over tasks): AUC of the training-loss curve, final training
    loss, and the held-out metrics of ``metrics(task, adapted model)`` (default: the adapter's
    ``evaluate``, e.g. test loss, accuracy); plus the mean loss curve."""
    split = split or cfg.eval.split
    steps = cfg.eval.steps or cfg.inner.steps
    rng, _ = step_generators(cfg.seed, FIXED, 1)
    tasks = adapter.sample_tasks(split, cfg.eval.tasks, rng)
    rows: list[dict[str, float]] = []
    curves = []
    for i, task in enumerate(tasks):
        _, generator = step_generators(cfg.seed, FIXED, 100 + i)
        model, curve = run_task(cfg, adapter, meta, task, generator, steps, watched=False)
        curves.append(curve)
        rows.append({"auc": curve_auc(curve), "final_loss": curve[-1], **(metrics or adapter.evaluate)(task, model)})
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    summary.update({f"{k}_std": float(np.std([r[k] for r in rows])) for k in rows[0]})
    return summary, np.mean(curves, axis=0).tolist()


# ------------------------------------------------------------------------------------------------
# the loop


class Logger:
    """TensorBoard scalars on two x-axes: meta-steps (in ``run_dir``) and the env steps at which training
    games ended (RL adapters; in ``run_dir/games``, a run of its own in TensorBoard). TensorBoard purges by
    step across a whole run, so each axis has its own writer: a resumed run purges each past its own
    checkpointed step, and curves continue without the events written after that checkpoint."""

    def __init__(self, run_dir: Path, purge_step: int | None, games_purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        self.games_dir = Path(run_dir) / "games"
        self.games_purge_step = games_purge_step
        self._games = None

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def games(self, values: dict[str, float], step: int) -> None:
        if self._games is None:     # created on first use: supervised runs get no empty folder
            from torch.utils.tensorboard import SummaryWriter
            self._games = SummaryWriter(str(self.games_dir), purge_step=self.games_purge_step)
        for k, v in values.items():
            self._games.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()
        if self._games is not None:
            self._games.close()


class NullLogger:
    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def games(self, values: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def setup(cfg: Config, adapter: Any = None) -> tuple[Any, MetaLearner]:
    """The task adapter and the meta-learner over its model, both from ``cfg``."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.seed)
    adapter = adapter or build_adapter(cfg.task, cfg.task_config, cfg.seed)
    _, generator = step_generators(cfg.seed, FIXED, 0)
    template = adapter.make_model(generator)
    return adapter, build_meta_learner(cfg, template, adapter)


class MetaEvery(Observer):
    """Continual mode: a meta-step every ``every`` task updates, inside the running task (Alg. 3 timing)."""

    def __init__(self, meta: MetaLearner, every: int, on_step: Callable[[dict[str, float]], None]) -> None:
        self.meta, self.every, self.on_step, self.updates = meta, every, on_step, 0

    def after_step(self, params) -> None:
        self.updates += 1
        if self.updates % self.every == 0:
            self.meta.flush()
            self.on_step(self.meta.meta_step())


def episodic_unit(cfg: Config, adapter: Any, meta: MetaLearner, world: World, unit: int,
                  log: Callable[[dict[str, float]], None]) -> None:
    """One meta-batch (Algorithm 1): this rank's share of the tasks, all-reduce, one meta-step."""
    rng, _ = step_generators(cfg.seed, unit)
    tasks = list(enumerate(adapter.sample_tasks("train", cfg.meta.meta_batch, rng)))
    curves = [run_task(cfg, adapter, meta, task, step_generators(cfg.seed, unit, 1 + k)[1], cfg.inner.steps)[1]
              for k, task in world.mine(tasks)]
    stats = torch.tensor([sum(curve_auc(c) for c in curves), sum(c[-1] for c in curves), len(curves)],
                         dtype=torch.float64)
    world.all_reduce([stats])
    meta.all_reduce(world.all_reduce)
    logs = meta.meta_step()
    log({**logs, "losses/train_auc": float(stats[0] / stats[2]), "losses/train_final": float(stats[1] / stats[2])})
    log_games(adapter, log)


def continual_unit(cfg: Config, adapter: Any, meta: MetaLearner, world: World, unit: int,
                   log: Callable[[dict[str, float]], None]) -> None:
    """One task of the rotating stream, from the current initialisation, with a meta-step every
    ``meta.every`` updates; whatever is left of the task's meta-gradient carries into the next."""
    rng, generator = step_generators(cfg.seed, unit)
    task = adapter.sample_tasks("train", 1, rng)[0]
    model = task_model(adapter, meta, task, generator, cfg.meta.head)
    optimizer = make_task_optimizer(adapter, model, meta, cfg)
    with meta.watch(model, optimizer, task) as watch:
        watch.observers.insert(len(watch.observers) - 1, MetaEvery(meta, cfg.meta.every, log))
        curve = adapter.adapt(task, model, optimizer, cfg.inner.steps, watch,
                              clip_grad_norm=cfg.inner.clip_grad_norm or None)
    log({"losses/train_auc": curve_auc(curve), "losses/train_final": curve[-1]})
    log_games(adapter, log)


def log_games(adapter: Any, log: Callable[..., None]) -> None:
    """RL tasks: finished games, at the env step they ended (``charts/*`` in ``run_dir/games``)."""
    for game in adapter.drain_games() if hasattr(adapter, "drain_games") else ():
        log({"charts/episodic_return": game.episodic_return, "charts/episodic_length": game.length},
            step=game.global_step)


def train(cfg: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None,
          progress: Callable | None = None, world: World | None = None) -> dict[str, float]:
    """Meta-train per ``cfg`` in ``run_dir`` until ``meta.steps`` meta-steps.

    A unit of work is a meta-batch (episodic) or one task of the stream (continual, ``meta.every`` > 0).
    ``stop_after`` ends this process after that many units (used to test resumption). With several
    ``world`` ranks, each adapts its share of every meta-batch; rank 0 logs, evaluates and checkpoints."""
    world = world or World()
    if cfg.meta.every and world.size > 1:
        raise ConfigError("continual mode (meta.every > 0) runs one task stream: launch it without torchrun")
    if world.size > 1 and cfg.method == "warpgrad" and cfg.method_config.algorithm == "offline":
        raise ConfigError("warpgrad.algorithm: offline replays samples in sequence: use online with torchrun")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    adapter = build_adapter(cfg.task, cfg.task_config, cfg.seed)   # bad data paths fail here, before any write
    if hasattr(adapter, "run"):         # task families with a loop of their own (the never-reset maze learner)
        if world.size > 1:
            raise ConfigError(f"task {cfg.task!r} runs in one process: launch it without torchrun")
        return adapter.run(cfg, Path(run_dir), resume=resume, stop_after=stop_after)
    adapter, meta = setup(cfg, adapter)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        if cfg.run.progress:
            print(f"run directory: {run_dir}", file=sys.stderr)
    unit = 0
    loaded = load_latest(run_dir) if resume else None
    if loaded is not None:
        meta.load_state_dict(loaded[0]["meta"])
        if "adapter" in loaded[0]:
            adapter.load_state_dict(loaded[0]["adapter"])
        unit = int(loaded[0]["step"])
    start_meta = meta.meta_steps
    # Purge only when training continues: a finished run's evaluation curves sit past its last meta-step.
    continuing = loaded is not None and start_meta < cfg.meta.steps
    games_step = getattr(adapter, "global_step", None)
    logger = Logger(run_dir, purge_step=start_meta + 1 if continuing else None,
                    games_purge_step=games_step + 1 if continuing and games_step is not None else None) \
        if world.is_main else NullLogger()
    bar = None
    if cfg.run.progress and world.is_main:
        from tqdm import tqdm
        bar = tqdm(initial=start_meta, total=cfg.meta.steps, desc=cfg.name, dynamic_ncols=True)
    t0 = time.time()

    def log(values: dict[str, float], step: int | None = None) -> None:
        # meta-step logs come from meta_step(); task-level logs land on the latest meta-step; logs with
        # their own ``step`` are training games at the env step they ended
        if step is not None:
            logger.games(values, step)
            return
        step = meta.meta_steps
        logger.scalars(values, step)
        if "meta/tasks" in values:
            logger.scalars({"charts/meta_steps_per_s": (step - start_meta) / (time.time() - t0)}, step)
            if bar is not None:
                bar.update(1)
            if world.is_main and cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.meta.steps \
                    and not hasattr(adapter, "evaluate_run"):      # whole-protocol evaluations run at the end
                split = cfg.eval.periodic_split or cfg.eval.split
                # a split other than the final evaluation's gets its own curves: eval_val/accuracy, ...
                prefix = "eval" if split == cfg.eval.split else f"eval_{split}"
                logger.scalars({f"{prefix}/{k}": v for k, v in evaluate(cfg, adapter, meta, split)[0].items()}, step)
            if progress is not None:
                progress(step, values)

    unit_fn = continual_unit if cfg.meta.every else episodic_unit
    done = 0
    while meta.meta_steps < cfg.meta.steps and (stop_after is None or done < stop_after):
        before = meta.meta_steps
        unit_fn(cfg, adapter, meta, world, unit, log)
        unit, done = unit + 1, done + 1
        every = cfg.run.checkpoint_every
        if world.is_main and ((every and before // every != meta.meta_steps // every)
                              or meta.meta_steps >= cfg.meta.steps):
            state = {"step": unit, "meta": meta.state_dict()}
            if hasattr(adapter, "state_dict"):
                state["adapter"] = adapter.state_dict()
            save_checkpoint(run_dir, unit, state, cfg.run.keep)
    if bar is not None:
        bar.close()
    result: dict[str, float] = {}
    finished = meta.meta_steps >= cfg.meta.steps
    if world.is_main and finished and done == 0 and (run_dir / "eval.json").exists():   # resumed a finished run
        result = {k: v for k, v in json.loads((run_dir / "eval.json").read_text()).items() if k != "curve"}
    elif world.is_main and finished and hasattr(adapter, "evaluate_run"):
        result = adapter.evaluate_run(cfg, meta, run_dir, meta.meta_steps, logger)
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    elif world.is_main and finished:
        result, curve = evaluate(cfg, adapter, meta)
        logger.scalars({f"eval/{k}": v for k, v in result.items()}, meta.meta_steps)
        for i, v in enumerate(curve):       # the held-out loss curve of the final initialisation, per inner step
            logger.scalars({"eval/loss_curve": v}, i)
        (run_dir / "eval.json").write_text(json.dumps({**result, "curve": curve}, indent=2))
    logger.close()
    return result
