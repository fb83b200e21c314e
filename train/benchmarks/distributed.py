"""`metarl bench distributed`: meta-steps per second with 1 and 2 torchrun ranks (gloo), one torch thread
per rank so the ranks share the machine's cores instead of oversubscribing them.

The figure is the trainer's own `charts/meta_steps_per_s` at the end of the run, so process start-up and
rendezvous are excluded."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import parser

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASKS = {
    "sine": ("sine_leap.yaml", ["meta.meta_batch=8", "inner.steps=100", "meta.steps=40"]),
    "omniglot": ("omniglot_dev_leap.yaml", ["meta.meta_batch=4", "meta.steps=6"]),
}


def rate(nproc: int, config: str, overrides: list[str], run_dir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "train.cli", "train", str(CONFIGS / config), "--run-dir", str(run_dir),
           "run.progress=false", "run.threads=1", "eval.every=0", "eval.tasks=1", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc.Scalars("charts/meta_steps_per_s")[-1].value


def run(argv: list[str]) -> dict:
    p = parser(__doc__)
    p.add_argument("--task", choices=sorted(TASKS), default="sine")
    args = p.parse_args(argv)
    config, overrides = TASKS[args.task]
    out: dict = {"task": args.task, "config": config, "overrides": overrides, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            out[f"meta_steps_per_s_{n}_rank"] = rate(n, config, overrides, Path(tmp) / f"r{n}")
            print(f"{n} rank(s): {out[f'meta_steps_per_s_{n}_rank']:.3f} meta-steps/s")
    out["speedup"] = out["meta_steps_per_s_2_rank"] / out["meta_steps_per_s_1_rank"]
    return out
