"""What the training loop (train/trainer.py ``train``) does around its meta-steps, as small objects it calls at
named points (stable-baselines3's callbacks): checkpoints, periodic evaluation, the meta-step rate and the
progress bar. Each hook of :class:`Callback` does nothing by default, so a callback overrides only the points it
needs and the loop never asks what a callback has.

Points, in the order the loop reaches them:
- ``on_training_start(run)``: before the first unit of work (also when there is none left to do);
- ``on_meta_step(run, logs)``: after each meta-step, once its logs are written (``run.meta.meta_steps`` is the
  new count, ``run.unit`` the units done, the checkpoint's step);
- ``on_training_end(run)``: after the last unit, on every exit — exceptions and signals (train/cli.py turns
  SIGTERM and SIGHUP into KeyboardInterrupt) included — before the final evaluation.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .checkpoint import save_checkpoint
from .device import to_cpu

if TYPE_CHECKING:
    from metarl import MetaLearner

    from .config import Config
    from .distributed import World
    from .tasks.base import TaskAdapter


@dataclass
class Run:
    """What the callbacks see of the loop: the run's parts and where it stands."""
    cfg: Config
    run_dir: Path
    adapter: TaskAdapter
    meta: MetaLearner
    world: World
    logger: Any                     # train.trainer.Logger (NullLogger off rank 0)
    unit: int = 0                   # units of work done: meta-batches, or windows of meta.every task steps
    stream: Any = None              # continual mode: the never-reset task learner (train.trainer.Stream)
    checkpoint: Path | None = None  # the newest checkpoint written or resumed from

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the unit count, the meta-learner's, the adapter's and the stream's state."""
        state = {"step": self.unit, "meta": self.meta.state_dict(), "adapter": self.adapter.state_dict()}
        if self.stream is not None:
            state["stream"] = self.stream.state_dict()
        return state


class Callback:
    """Base class: every hook is a no-op."""

    def on_training_start(self, run: Run) -> None:
        pass

    def on_meta_step(self, run: Run, logs: dict[str, float]) -> None:
        pass

    def on_training_end(self, run: Run) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks called in order; as a context manager, ``on_training_start`` on entry and
    ``on_training_end`` on every exit (each callback's end runs even if an earlier one raised)."""

    def __init__(self, callbacks: Sequence[Callback], run: Run) -> None:
        self.callbacks, self.run = list(callbacks), run

    def on_meta_step(self, run: Run, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_meta_step(run, logs)

    def __enter__(self) -> "CallbackList":
        for cb in self.callbacks:
            cb.on_training_start(self.run)
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.ExitStack() as ends:         # last in, first out: pushed in reverse, called in order
            for cb in reversed(self.callbacks):
                ends.callback(cb.on_training_end, self.run)


class Checkpointing(Callback):
    """Rank 0 saves a checkpoint each time the meta-step count crosses a multiple of ``run.checkpoint_every``,
    and after the last meta-step; CPU tensors only, so it resumes on any device (train/device.py)."""

    def on_meta_step(self, run: Run, logs: dict[str, float]) -> None:
        cfg, step = run.cfg, run.meta.meta_steps
        every = cfg.run.checkpoint_every
        if run.world.is_main and ((every and (step - 1) // every != step // every) or step >= cfg.meta.steps):
            run.checkpoint = save_checkpoint(run.run_dir, run.unit, to_cpu(run.state_dict()), cfg.run.keep)


class PeriodicEvaluation(Callback):
    """Rank 0 evaluates the initialisation every ``eval.every`` meta-steps (not at the last: the final
    evaluation follows) on ``eval.periodic_split`` (default ``eval.split``), logged as ``eval/*`` —
    ``eval_<split>/*`` for a split other than the final evaluation's. Tasks whose protocol runs once at the end
    (``TaskAdapter.periodic_evaluation`` false) are not evaluated."""

    def on_meta_step(self, run: Run, logs: dict[str, float]) -> None:
        from .trainer import eval_prefix, evaluate
        cfg, step = run.cfg, run.meta.meta_steps
        if run.world.is_main and cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.meta.steps \
                and run.adapter.periodic_evaluation:
            split = cfg.eval.periodic_split or cfg.eval.split
            summary, _ = evaluate(cfg, run.adapter, run.meta, split)
            run.logger.scalars({f"{eval_prefix(split, cfg.eval.split)}/{k}": v for k, v in summary.items()}, step)


class MetaStepRate(Callback):
    """``charts/meta_steps_per_s``: meta-steps per second since this process started training."""

    def on_training_start(self, run: Run) -> None:
        self.start, self.t0 = run.meta.meta_steps, time.time()

    def on_meta_step(self, run: Run, logs: dict[str, float]) -> None:
        step = run.meta.meta_steps
        run.logger.scalars({"charts/meta_steps_per_s": (step - self.start) / (time.time() - self.t0)}, step)


class ProgressBar(Callback):
    """A tqdm bar of meta-steps on stderr, or log lines off a terminal; RL families add env steps, SPS and the
    recent return (train/progress.py). Closed, and the adapter's hooks detached, on every exit."""

    def __init__(self) -> None:
        self.bar = None

    def on_training_start(self, run: Run) -> None:
        from .progress import RLProgress, progress_bar
        self.bar = progress_bar(run.cfg.meta.steps, run.cfg.name, "meta-step", initial=run.meta.meta_steps)
        if run.adapter.global_step is not None:      # RL families: env steps, SPS and recent return in the postfix
            RLProgress(self.bar, start_step=run.adapter.global_step).attach(run.adapter)

    def on_meta_step(self, run: Run, logs: dict[str, float]) -> None:
        self.bar.update(1)

    def on_training_end(self, run: Run) -> None:
        from .progress import RLProgress
        if self.bar is not None:
            self.bar.close()
            RLProgress.detach(run.adapter)
            self.bar = None


def default_callbacks(cfg: Config, world: World) -> list[Callback]:
    """What every run does: the rate, the progress bar (``run.progress``, rank 0), periodic evaluation and
    checkpoints (both rank 0 only, decided inside)."""
    bar = [ProgressBar()] if cfg.run.progress and world.is_main else []
    return [MetaStepRate(), *bar, PeriodicEvaluation(), Checkpointing()]
