"""`python -m train.diagnostics RUN_DIR`: held-out metrics of an Omniglot run with BatchNorm's running
statistics (the protocol: eval() mode, statistics gathered during the task's own training), with
statistics re-estimated after adaptation on the task's training images (not transductive), and with the
held-out batch's own statistics (train() mode; transductive, so a diagnostic only, never a reported
result). A large gap means the running statistics lag the adapted network, e.g. when the inner loop is
cut short while it is still moving fast (the Omniglot dev protocol's 40 steps).

Same held-out tasks, head draws and adaptation as ``metarl eval``; one line per task, then the means.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_latest
from .config import load_config
from .errors import UserError
from .tasks import build_adapter
from .tasks.omniglot import refit_batch_norm
from .trainer import FIXED, run_task, setup, step_generators


def batch_norm_gap(run_dir: Path, split: str = "test") -> dict[str, float]:
    cfg = load_config(run_dir / "config.yaml", ["omniglot.batch_norm_eval=running"])   # (a) as the protocol
    adapter, meta = setup(cfg, build_adapter(cfg.task, cfg.task_config, cfg.seed))
    loaded = load_latest(run_dir)
    if loaded is None:
        raise UserError(f"run directory {run_dir} has no readable checkpoint")
    meta.load_state_dict(loaded[0]["meta"])
    rng, _ = step_generators(cfg.seed, FIXED, 1)
    rows = []
    for i, task in enumerate(adapter.sample_tasks(split, cfg.eval.tasks, rng)):
        _, generator = step_generators(cfg.seed, FIXED, 100 + i)
        model, curve = run_task(cfg, adapter, meta, task, generator, cfg.eval.steps or cfg.inner.steps,
                                watched=False)
        running = adapter.evaluate(task, model)
        refresh = adapter.evaluate(task, refit_batch_norm(model, task))
        x, y = task.batch("test")
        model.train()
        with torch.no_grad():
            logits = model(x)
        row = {"final_train_loss": curve[-1], "loss_running": running["test_loss"],
               "acc_running": running["test_accuracy"], "loss_refreshed": refresh["test_loss"],
               "acc_refreshed": refresh["test_accuracy"], "loss_batch": float(F.cross_entropy(logits, y)),
               "acc_batch": float((logits.argmax(-1) == y).float().mean())}
        rows.append(row)
        print(f"task {i}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print("mean: " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return means


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "config.yaml").is_file():
            raise UserError("usage: python -m train.diagnostics RUN_DIR (a run directory with config.yaml)")
        batch_norm_gap(Path(sys.argv[1]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
