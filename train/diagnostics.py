"""`python -m train.diagnostics RUN_DIR`: held-out metrics of an Omniglot run with BatchNorm's running
statistics (the protocol: eval() mode, statistics gathered during the task's own training), with
statistics re-estimated after adaptation on the task's training images (not transductive), and with the
held-out batch's own statistics (train() mode; transductive, so a diagnostic only, never a reported
result). A large gap means the running statistics lag the adapted network, e.g. when the inner loop is
cut short while it is still moving fast (the Omniglot dev protocol's 40 steps).

Same held-out tasks, head draws and adaptation as ``metarl eval`` (``trainer.evaluate`` with other
per-task metrics); prints means and stds over the tasks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError, error_line
from .evaluate import load_run
from .tasks.omniglot import OmniglotAdapter, OmniglotTask, refit_batch_norm
from .trainer import evaluate


def batch_norm_metrics(adapter: OmniglotAdapter):
    """Per-task metrics under the three kinds of BatchNorm statistics (module docstring)."""
    def metrics(task: OmniglotTask, model: nn.Module) -> dict[str, float]:
        running = adapter.evaluate(task, model)
        refit = adapter.evaluate(task, refit_batch_norm(model, task))
        x, y = task.batch("test")
        model.train()
        with torch.no_grad():
            logits = model(x)
        return {"loss_running": running["test_loss"], "acc_running": running["test_accuracy"],
                "loss_refreshed": refit["test_loss"], "acc_refreshed": refit["test_accuracy"],
                "loss_batch": float(F.cross_entropy(logits, y)),
                "acc_batch": float((logits.argmax(-1) == y).float().mean())}
    return metrics


def batch_norm_gap(run_dir: Path, split: str = "test") -> dict[str, float]:
    cfg, adapter, meta, _ = load_run(run_dir, ["omniglot.batch_norm_eval=running"])    # (a) as the protocol
    if not isinstance(adapter, OmniglotAdapter):
        raise UserError(f"the BatchNorm diagnostic is for Omniglot runs; {run_dir} is a {cfg.task!r} run")
    result, _ = evaluate(cfg, adapter, meta, split, metrics=batch_norm_metrics(adapter))
    print("  ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        if len(sys.argv) != 2:
            raise UserError("usage: python -m train.diagnostics RUN_DIR")
        batch_norm_gap(Path(sys.argv[1]))
    except UserError as err:
        print(error_line("python -m train.diagnostics", err), file=sys.stderr)
        sys.exit(2)
