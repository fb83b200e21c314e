"""`metarl eval RUN_DIR`: evaluate a run's latest initialisation on held-out tasks, as the run's own final
evaluation does (train/trainer.py ``final_evaluation``: the same tags and files)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from metarl import MetaLearner

from .budget import check_budget
from .checkpoint import load_latest
from .config import Config, load_config
from .errors import UserError
from .rundir import check_run_dir
from .tasks import build_adapter
from .distributed import World
from .trainer import Logger, NullLogger, final_evaluation, setup


def load_run(run_dir: Path, overrides: Sequence[str] = ()) -> tuple[Config, Any, MetaLearner, Path]:
    """A run's config (with ``overrides``), adapter and meta-learner at its newest readable checkpoint."""
    check_run_dir(run_dir)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    check_budget(cfg)                   # before the adapter and model are built
    adapter, meta = setup(cfg, build_adapter(cfg.task, cfg.task_config, cfg.seed))
    loaded = load_latest(run_dir)
    if loaded is None:
        raise UserError(f"run directory {run_dir} has no readable checkpoint")
    state, path = loaded
    meta.load_state_dict(state["meta"])
    adapter.load_state_dict(state.get("adapter", {}))
    return cfg, adapter, meta, path


def evaluate_run(run_dir: Path, split: str | None = None, video: bool = False, tasks: int | None = None,
                 world: World | None = None) -> dict:
    """``video``: also record the held-out games (Atari, ``eval.video``), whatever the run's config says;
    ``tasks``: evaluate that many held-out tasks (``eval.tasks``; e.g. a run chosen on 5 validation seeds tested
    on 10).
    Holds the run directory's lock (train/rundir.py) while it runs: an evaluation writes into the run (its
    results, TensorBoard, the seed folders of a batched maze run), so a run in progress refuses it in one line,
    and a run started meanwhile is refused until it ends.
    ``world`` (``metarl eval`` under torchrun): where the family spreads its held-out runs (Atari), every rank
    takes a share and rank 0, which holds the lock, writes the results; the other ranks return {}."""
    import sys

    from .rundir import RunLock, prepare_run_dir
    world = world or World()
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    if not world.is_main:
        return _evaluate_run(run_dir, split, video, tasks, world)
    with RunLock(prepare_run_dir(run_dir, resume=True)) as lock:
        if lock.stale is not None:
            print(lock.stale_warning(), file=sys.stderr)
        return _evaluate_run(run_dir, split, video, tasks, world)


def _evaluate_run(run_dir: Path, split: str | None, video: bool, tasks: int | None = None,
                  world: World | None = None) -> dict:
    world = world or World()
    overrides = ([f"eval.split={split}"] if split else []) + (["eval.video=true"] if video else []) + \
        ([f"eval.tasks={tasks}"] if tasks is not None else [])
    own_split = load_config(run_dir / "config.yaml").eval.split      # what the run evaluates at its end
    cfg, adapter, meta, path = load_run(run_dir, overrides)
    if not world.is_main and not adapter.spreads_evaluation:
        return {}
    with contextlib.closing(Logger(run_dir, purge_step=None) if world.is_main else NullLogger()) as logger:
        return final_evaluation(cfg, adapter, meta, run_dir, logger, path, own_split, world=world)
