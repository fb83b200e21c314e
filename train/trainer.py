"""The meta-training loop: sample a meta-batch of tasks → adapt each under the meta-learner's watch →
meta-step (episodic, Algorithm 1), or one never-reset task learner adapted ``meta.every`` steps at a time
with a meta-step after each window (continual, ``meta.every`` > 0, WarpGrad's Algorithm 3). The trainer owns
logging, evaluation and checkpoints; methods and tasks own none of that, and the trainer reaches them only
through their protocols (metarl.base.MetaLearner, train.tasks.base.TaskAdapter). What the loop does around its
meta-steps — checkpoints, periodic evaluation, the rate, the progress bar — are callbacks (train/callbacks.py);
the final evaluation is :func:`final_evaluation`, which `metarl eval` runs too.

Randomness is derived from (seed, meta-step), never carried in hidden state (train.seeding), so a resumed
run draws exactly the tasks and batches an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from metarl import MetaLearner
from metarl.registry import method_class

from .callbacks import Callback, CallbackList, Run, default_callbacks
from .checkpoint import load_latest, matches_reference, read_json, write_json_atomic, write_text_atomic
from .config import Config, config_to_yaml
from .device import configure, resolve_device
from .distributed import World
from .errors import ConfigError
from .rundir import check_resumable, run_info
from .seeding import FIXED, step_generators
from .stats import sample_std, spread_tag
from .tasks import build_adapter
from .tasks.base import TaskAdapter, curve_auc


# ------------------------------------------------------------------------------------------------
# construction


def build_meta_learner(cfg: Config, model: nn.Module, adapter: TaskAdapter) -> MetaLearner:
    """The method named by ``cfg.method`` (metarl.registry) over ``model``'s parameters (head excluded when
    re-drawn)."""
    exclude = list(cfg.meta.exclude) + (list(adapter.head) if cfg.meta.head == "reset" else [])
    try:
        return method_class(cfg.method).build(model, cfg, head=tuple(adapter.head),
                                              meta_optimizer=cfg.meta.optimizer, include=list(cfg.meta.include),
                                              exclude=exclude)
    except ValueError as e:          # e.g. meta.include matching no parameter
        raise ConfigError(f"method {cfg.method!r}: {e}") from None


def task_model(adapter: TaskAdapter, meta: MetaLearner, task: Any, generator: torch.Generator, head: str) -> nn.Module:
    """A model at the current initialisation, on the adapter's device. Under ``head: reset`` every method
    starts every task from a freshly drawn output head (drawn from ``generator``); under ``learned`` the
    head comes from θ⁰."""
    model = adapter.build_model(generator, task)
    meta.load_init(model, skip=tuple(adapter.head) if head == "reset" else ())
    meta.prepare(model, task)
    return model


def run_task(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, task: Any, generator: torch.Generator,
             steps: int, watched: bool = True) -> tuple[nn.Module, list[float]]:
    """Adapt one task from the current initialisation; the meta-learner observes it when ``watched``."""
    model = task_model(adapter, meta, task, generator, cfg.meta.head)
    optimizer = adapter.make_optimizer(model, meta.task_parameters(model), cfg.inner)
    clip = cfg.inner.clip_grad_norm or None
    if not watched:
        return model, adapter.adapt(task, model, optimizer, steps, clip_grad_norm=clip)
    return model, meta.run_task(adapter, task, model, optimizer, steps, clip)


def run_tasks_batched(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, tasks: list[Any],
                      generators: list[torch.Generator], steps: int) -> list[list[float]]:
    """Adapt several tasks from the current initialisation at once, as one stacked model
    (``adapter.adapt_batched``), each watched as a task of its own (``meta.watch_stacked``); each task's model
    is drawn as :func:`run_task` draws it. Returns the loss curves."""
    models = [task_model(adapter, meta, task, g, cfg.meta.head) for task, g in zip(tasks, generators)]
    for model in models:
        if len(meta.task_parameters(model)) != len(list(model.parameters())):
            raise ConfigError(f"batched tasks step every parameter of a task model; method {cfg.method!r} does not")
    if type(meta).task_observers is MetaLearner.task_observers:      # the method has no per-task observers
        raise ConfigError(f"method {cfg.method!r} cannot watch several tasks at once (batched tasks)")
    results = adapter.adapt_batched(tasks, models, steps,
                                    watch=lambda model, opt: meta.watch_stacked(model, opt, tasks),
                                    clip_grad_norm=cfg.inner.clip_grad_norm or None)
    return [r.losses for r in results]


# ------------------------------------------------------------------------------------------------
# evaluation


def evaluate(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, split: str | None = None,
             metrics: Callable[[Any, nn.Module], dict[str, float]] | None = None
             ) -> tuple[dict[str, float], list[float]]:
    """Adapt fixed held-out tasks from the current initialisation; mean metrics over tasks.

    The held-out tasks and their head draws depend only on the seed, so every evaluation of every method
    sees the same tasks. Metrics (mean and sample std over tasks): AUC of the training-loss curve, final training
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
    summary.update({f"{k}_std": sample_std([r[k] for r in rows]) for k in rows[0]})     # None for one task
    return summary, np.mean(curves, axis=0).tolist()


def eval_prefix(split: str, own_split: str) -> str:
    """TensorBoard prefix of an evaluation on ``split``: ``eval`` on the run's own (its ``eval.split``), else
    ``eval_<split>`` (curves of their own: eval_val/accuracy beside eval/accuracy)."""
    return "eval" if split == own_split else f"eval_{split}"


def final_evaluation(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, run_dir: Path, logger: Any,
                     checkpoint: Path | None, own_split: str | None = None, world: Any = None) -> dict[str, Any]:
    """The evaluation of a run's initialisation, one for `metarl train` (at its end) and `metarl eval`: the task
    family's own protocol where it has one (``adapter.evaluate_run``: Atari's games × seeds, the maze's
    training result, continual sine's forgetting matrix), else :func:`evaluate` on ``eval.split``'s held-out
    tasks, logged at the meta-step as ``eval/<metric>`` and per inner step as ``eval/loss_curve``. The result,
    with the ``checkpoint`` evaluated, goes to ``eval.json``; on a split other than the run's own
    (``own_split``, default ``eval.split``), to ``eval_<split>.json`` and ``eval_<split>/*``. Returns it.
    Under torchrun (``world``), a family that spreads its protocol (``adapter.spreads_evaluation``) runs it on every
    rank; the ranks other than 0 return {} and write nothing."""
    split, step = cfg.eval.split, meta.meta_steps
    out = adapter.evaluate_run(cfg, meta, run_dir, step, logger, world=world)
    if world is not None and not world.is_main:
        return {}
    if out is None:
        result, curve = evaluate(cfg, adapter, meta)
        prefix = eval_prefix(split, own_split or split)
        logger.scalars({f"{prefix}/{k}": v for k, v in result.items()}, step)
        for i, v in enumerate(curve):       # the held-out loss curve of the initialisation, per inner step
            logger.scalars({f"{prefix}/loss_curve": v}, i)
        out = {**result, "split": split, "curve": curve}
    out = {"checkpoint": checkpoint.name if checkpoint is not None else None, **out}
    write_json_atomic(run_dir / ("eval.json" if split == (own_split or split) else f"eval_{split}.json"), out)
    return out


# ------------------------------------------------------------------------------------------------
# the loop


class Logger:
    """TensorBoard scalars on two x-axes: meta-steps (in ``run_dir``) and the env steps at which training
    games ended (RL adapters; in ``run_dir/games``, a run of its own in TensorBoard). TensorBoard purges by
    step across a whole run, so each axis has its own writer: a resumed run purges each past its own
    checkpointed step, and curves continue without the events written after that checkpoint.

    ``evaluation(run, values, step)`` writes to ``run_dir/<run>``, a run of its own that replaces what an
    earlier evaluation wrote there (purge from step 0): the held-out protocol gives each initialisation its
    run with the same tags (``eval/meta_init``, ``eval/random_init``), so TensorBoard overlays them."""

    def __init__(self, run_dir: Path, purge_step: int | None, games_purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        self.games_dir = Path(run_dir) / "games"
        self.games_purge_step = games_purge_step
        self._games = None
        self._runs: dict[str, Any] = {}     # run_dir/<run>: runs of their own (maze seeds, Atari visits)
        self._closed: set[str] = set()      # visit runs written and closed
        self._evaluations: dict[str, Any] = {}      # run_dir/<run>: evaluation runs (eval/meta_init, ...)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        for k, v in values.items():         # a spread (…_std) in a section of its own; none (None) for one value
            if v is not None:
                self.writer.add_scalar(spread_tag(k), v, step)

    def games(self, values: dict[str, float], step: int, run: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        if run is not None:         # env-step axis of a run of its own, in run_dir/<run>
            if run not in self._runs:
                purge = self.games_purge_step           # seed_<k>/games: the run's env-step axis
                if run.startswith("games/"):
                    # games/<game>/visit_<S>: one visit's own axis, written whole by the process that runs the visit
                    # (from step 0: a resumed run that repeats a visit replaces it). Visits come one after another,
                    # so the one before is closed (a run holds hundreds); one seen again is appended to.
                    for done in [r for r in self._runs if r.startswith("games/")]:
                        self._runs.pop(done).close()
                        self._closed.add(done)
                    purge = None if run in self._closed else 0
                self._runs[run] = SummaryWriter(str(self.games_dir.parent / run), purge_step=purge)
            writer = self._runs[run]
        else:
            if self._games is None:     # created on first use: supervised runs get no empty folder
                self._games = SummaryWriter(str(self.games_dir), purge_step=self.games_purge_step)
            writer = self._games
        for k, v in values.items():
            writer.add_scalar(k, v, step)

    def evaluation(self, run: str, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self._evaluation(run).add_scalar(k, v, step)

    def gif(self, run: str, tag: str, gif: bytes, step: int) -> None:
        """An encoded animated GIF (train/video.py ``encode_gif``) in the evaluation run ``run``, shown by the
        images dashboard (train/video.py says why not add_video)."""
        from .video import gif_summary
        self._evaluation(run)._get_file_writer().add_summary(gif_summary(tag, gif), step)

    def _evaluation(self, run: str) -> Any:
        from torch.utils.tensorboard import SummaryWriter
        if run not in self._evaluations:
            self._evaluations[run] = SummaryWriter(str(self.games_dir.parent / run), purge_step=0)
        return self._evaluations[run]

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()
        if self._games is not None:
            self._games.close()
        for writer in [*self._runs.values(), *self._evaluations.values()]:
            writer.close()


class NullLogger:
    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def games(self, values: dict[str, float], step: int, run: str | None = None) -> None:
        pass

    def evaluation(self, run: str, values: dict[str, float], step: int) -> None:
        pass

    def gif(self, run: str, tag: str, gif: bytes, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


def setup(cfg: Config, adapter: TaskAdapter = None) -> tuple[Any, MetaLearner]:
    """The task adapter and the meta-learner over its model, both from ``cfg``, on ``run.device``.

    The device is resolved here, once (train/device.py; CUDA asked for but absent: ConfigError). The
    template is drawn on the CPU from the seeded generator and then moved, so θ⁰ holds the same numbers on
    every device; the meta-learner's state (θ⁰, accumulators, meta-optimiser state) lives where it is."""
    device = resolve_device(cfg.run.device)
    configure(device, tf32=cfg.run.tf32)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.seed)
    adapter = adapter or build_adapter(cfg.task, cfg.task_config, cfg.seed)
    if device.type not in adapter.device_types:
        raise ConfigError(f"task {cfg.task!r} runs on {' or '.join(adapter.device_types)} only, not {device}: "
                          f"set run.device={adapter.device_types[0]}")
    adapter.device = device
    _, generator = step_generators(cfg.seed, FIXED, 0)
    template = adapter.make_model(generator).to(device)
    return adapter, build_meta_learner(cfg, template, adapter)


def episodic_unit(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, world: World, unit: int) -> dict[str, float]:
    """One meta-batch (Algorithm 1): this rank's share of the tasks, all-reduce, one meta-step; returns its logs."""
    rng, _ = step_generators(cfg.seed, unit)
    tasks = list(enumerate(adapter.sample_tasks("train", cfg.meta.meta_batch, rng)))
    mine = world.mine(tasks, adapter.task_costs([task for _, task in tasks]))     # by measured speed, if any
    if getattr(adapter, "batched", False) and mine:      # e.g. atari.a2c.batched: this rank's tasks at once
        curves = run_tasks_batched(cfg, adapter, meta, [task for _, task in mine],
                                   [step_generators(cfg.seed, unit, 1 + k)[1] for k, _ in mine], cfg.inner.steps)
    else:
        curves = [run_task(cfg, adapter, meta, task, step_generators(cfg.seed, unit, 1 + k)[1], cfg.inner.steps)[1]
                  for k, task in mine]
    sums = {"auc": sum(curve_auc(c) for c in curves), "final": sum(c[-1] for c in curves), "tasks": len(curves)}
    stats = torch.tensor(list(sums.values()), dtype=torch.float64)      # one all-reduce for all three
    world.all_reduce([stats])
    sums = dict(zip(sums, stats.tolist()))
    meta.all_reduce(world.all_reduce)
    n = sums["tasks"]
    adapter.share_costs(world.all_reduce)
    return {**meta.meta_step(), "losses/train_auc": sums["auc"] / n, "losses/train_final": sums["final"] / n}


class Stream:
    """Continual mode: the one never-reset task learner — task, model at the initialisation, its optimiser —
    watched by the meta-learner for the whole run (the watch stays open across units)."""

    def __init__(self, cfg: Config, adapter: TaskAdapter, meta: MetaLearner) -> None:
        rng, generator = step_generators(cfg.seed, 0)
        self.task = adapter.sample_tasks("train", 1, rng)[0]
        self.model = task_model(adapter, meta, self.task, generator, cfg.meta.head)
        self.optimizer = adapter.make_optimizer(self.model, meta.task_parameters(self.model), cfg.inner)
        self.watch = meta.watch(self.model, self.optimizer, self.task).__enter__()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state()}     # the CPU generator: models and batches are drawn there

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])

    def close(self) -> None:
        self.watch.__exit__(None, None, None)


@contextlib.contextmanager
def open_stream(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, state: dict[str, Any] | None
                ) -> Iterator[Stream | None]:
    """Continual mode with meta-steps left: the :class:`Stream` (from its checkpointed ``state``), its watch
    closed on every exit; otherwise None."""
    if not cfg.meta.every or meta.meta_steps >= cfg.meta.steps:
        yield None
        return
    stream = Stream(cfg, adapter, meta)
    try:
        if state is not None:
            stream.load_state_dict(state)
        yield stream
    finally:
        stream.close()


def continual_unit(cfg: Config, adapter: TaskAdapter, meta: MetaLearner, stream: Stream) -> dict[str, float]:
    """One window of Algorithm 3: ``meta.every`` more task steps of the never-reset learner, one meta-step;
    returns its logs."""
    curve = adapter.adapt(stream.task, stream.model, stream.optimizer, cfg.meta.every, stream.watch,
                          clip_grad_norm=cfg.inner.clip_grad_norm or None)
    return {**meta.meta_step(), "losses/train_auc": curve_auc(curve), "losses/train_final": curve[-1]}


def log_games(adapter: TaskAdapter, logger: Logger | NullLogger) -> None:
    """RL tasks: scalars on the env-step axis (finished games, the maze's episode windows) in run_dir/games,
    or in run_dir/<run> for entries (step, values, run) (the seeds of a seed-batched maze run)."""
    for step, values, *run in adapter.drain_logs():
        logger.games(values, step, run[0] if run else None)


def check_world(cfg: Config, size: int) -> None:
    """Refuse (ConfigError) a run of ``cfg`` over ``size`` > 1 torchrun ranks that could not equal one process:
    continual mode, and what the method says it cannot split (``MetaLearner.distributed_refusal``)."""
    if size <= 1:
        return
    if cfg.meta.every:
        raise ConfigError("continual mode (meta.every > 0) runs one task stream: launch it without torchrun")
    reason = method_class(cfg.method).distributed_refusal(cfg)
    if reason:
        raise ConfigError(f"method {cfg.method!r} cannot run under torchrun: {reason}; launch it without torchrun")


def build_run(cfg: Config, world: World) -> tuple[TaskAdapter, MetaLearner]:
    """The adapter and meta-learner of a training run, after the refusals that need no run directory (a bad
    data path, a torchrun world or continual mode the task or method cannot run)."""
    check_world(cfg, world.size)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    adapter = build_adapter(cfg.task, cfg.task_config, cfg.seed)   # bad data paths fail here, before any write
    if adapter.continual_only and not cfg.meta.every:
        raise ConfigError(f"task {cfg.task!r} is one never-reset learner: set meta.every (task steps per meta-step)")
    adapter, meta = setup(cfg, adapter)
    if cfg.meta.every and not meta.continual:
        raise ConfigError(f"method {cfg.method!r} meta-learns over whole tasks: continual mode (meta.every > 0) "
                          f"needs warpgrad_continual or no_pretraining")
    return adapter, meta


def start_run(cfg: Config, run_dir: Path, adapter: TaskAdapter, meta: MetaLearner, world: World, resume: bool
              ) -> tuple[dict[str, Any] | None, Path | None]:
    """Resume from the newest checkpoint that fits this run (``resume``), after the run directory's checks;
    rank 0 writes the resolved config and the run's info. Returns the checkpoint loaded (None: step 0) and its
    path."""
    # A checkpoint must fit this run's structure (else the previous one is tried); checked on copies, so a
    # rejected checkpoint never half-loads into the live meta-learner.
    reference = {"step": 0, "meta": meta.state_dict(), "adapter": adapter.state_dict()}
    loaded = load_latest(run_dir, validate=matches_reference(reference), quarantine=True) if resume else None
    if world.is_main:
        check_resumable(run_dir, cfg, loaded[0] if loaded is not None else None)    # before anything is written
        write_text_atomic(run_dir / "config.yaml", config_to_yaml(cfg))
        write_json_atomic(run_dir / "run_info.json", run_info(adapter))      # version, git commit, backend
        if cfg.run.progress:
            print(f"run directory: {run_dir}", file=sys.stderr)
    if resume and loaded is None and world.is_main and list(run_dir.glob("checkpoint-*.pt.corrupt")):
        # said once, plainly: the warnings above only name each unreadable checkpoint
        print(f"warning: no checkpoint of {run_dir} is readable: the run starts again from step 0 (the unreadable "
              f"ones are kept as *.pt.corrupt)", file=sys.stderr)
    if loaded is None:
        return None, None
    meta.load_state_dict(loaded[0]["meta"])
    adapter.load_state_dict(loaded[0].get("adapter", {}))
    return loaded


def open_logger(cfg: Config, run_dir: Path, adapter: TaskAdapter, meta: MetaLearner, world: World,
                resumed: bool) -> Logger | NullLogger:
    """Rank 0's TensorBoard writers (the others' do nothing). Purge only when training continues: a finished
    run's evaluation curves sit past its last meta-step."""
    if not world.is_main:
        return NullLogger()
    continuing = resumed and meta.meta_steps < cfg.meta.steps
    games_step = adapter.global_step
    logger = Logger(run_dir, purge_step=meta.meta_steps + 1 if continuing else None,
                    games_purge_step=games_step + 1 if continuing and games_step is not None else None)
    if not resumed:      # the resolved config as TensorBoard text (indented: shown as code)
        logger.text("config", "    " + config_to_yaml(cfg).replace("\n", "\n    "))
    return logger


def train(cfg: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None,
          world: World | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Meta-train per ``cfg`` in ``run_dir`` until ``meta.steps`` meta-steps, then evaluate (rank 0).

    A unit of work is a meta-batch (episodic) or a window of ``meta.every`` task steps (continual).
    ``stop_after`` ends this process after that many units (used to test resumption). With several
    ``world`` ranks, each adapts its share of every meta-batch; rank 0 logs, evaluates and checkpoints.
    ``callbacks`` (train/callbacks.py) are called after the run's own: the rate, the progress bar, periodic
    evaluation and checkpoints. The stream's watch, the callbacks and the writers close on every exit."""
    world = world or World()
    adapter, meta = build_run(cfg, world)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loaded, checkpoint = start_run(cfg, run_dir, adapter, meta, world, resume)
    run = Run(cfg, run_dir, adapter, meta, world, open_logger(cfg, run_dir, adapter, meta, world, loaded is not None),
              unit=int(loaded["step"]) if loaded is not None else 0, checkpoint=checkpoint)
    done = 0
    with contextlib.closing(run.logger):
        with open_stream(cfg, adapter, meta, (loaded or {}).get("stream")) as run.stream, \
                CallbackList([*default_callbacks(cfg, world), *callbacks], run) as hooks:
            while meta.meta_steps < cfg.meta.steps and (stop_after is None or done < stop_after):
                if run.stream is not None:
                    logs = continual_unit(cfg, adapter, meta, run.stream)
                else:
                    logs = episodic_unit(cfg, adapter, meta, world, run.unit)
                run.unit, done = run.unit + 1, done + 1
                log_games(adapter, run.logger)
                run.logger.scalars(logs, meta.meta_steps)       # task-level logs land on the new meta-step
                hooks.on_meta_step(run, logs)
        if meta.meta_steps < cfg.meta.steps:
            return {}
        previous = read_json(run_dir / "eval.json") if world.is_main and done == 0 else None
        # every rank takes a share of the held-out runs where the family spreads them (rank 0 decides whether to run)
        spread = world.size > 1 and adapter.spreads_evaluation and world.broadcast(previous is None)
        if not (world.is_main or spread):
            return {}
        if previous is not None:            # resumed a finished run (an unreadable result is evaluated again)
            return {k: v for k, v in previous.items() if k != "curve"}
        out = final_evaluation(cfg, adapter, meta, run_dir, run.logger, run.checkpoint, world=world)
        return {k: v for k, v in out.items() if k != "curve"}
