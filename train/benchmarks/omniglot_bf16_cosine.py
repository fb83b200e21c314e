"""`metarl bench omniglot-bf16-cosine`: does bf16 move Leap's Omniglot meta-gradient more than SGD noise does?

Three Leap meta-gradients from the same θ⁰ (and the same head draws) on the same real Omniglot tasks, built
as `metarl train` builds them (``--config``, default configs/omniglot_leap.yaml; ``trainer.setup`` and
``trainer.run_task``):
  fp32_A  ``omniglot.precision: fp32``, training batches in order A (the tasks' own stream seeds)
  fp32_B  fp32, order B: the same tasks re-seeded, so other minibatches (and augmentation draws) of the
          same images
  bf16_A  ``omniglot.precision: bf16`` (train/tasks/image_classification.py ``PRECISIONS``), order A
  fp32_L  fp32, order A, the other memory layout (``omniglot.channels_last`` flipped): other conv kernels,
          other summation orders — fp32 rounding alone, a reference for how chaotic the inner loop is
cos(fp32_A, fp32_B) is the noise floor: how far the minibatch order alone turns the meta-gradient. bf16 is
harmless to meta-learning when cos(bf16_A, fp32_A) is at or above it: its rounding then moves the
meta-gradient less than a different order does. cos(bf16_A, fp32_B) should sit near the floor, and
cos(fp32_L, fp32_A) shows how far fp32's own rounding differences grow over the same inner loop.

The meta-gradient is Leap's (docs/leap.md §2, metarl/leap.py) over the meta-batch: the mean over tasks of
Σ_i δ_i, each task adapted ``--steps`` SGD steps from θ⁰; cosines are taken over all meta-learned
parameters flattened (the head is re-drawn per task under ``meta.head: reset``, so not part of it), in
float64. Per-task cosines are reported too. Tasks: the first ``--tasks`` of a training meta-batch drawn
as the trainer draws meta-step 0's. Speed is `metarl bench omniglot-meta-step --bf16`'s business.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..seeding import step_generators
from ._common import parser

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "omniglot_leap.yaml"
NAME = "metarl bench omniglot-bf16-cosine"


def reordered(task, seed: int):
    """``task`` (same alphabet, characters, labels and images) with its streams seeded from ``seed``."""
    from train.tasks.omniglot import OmniglotTask
    other = OmniglotTask(task.key, task.characters, task.train_images, task.train_labels, task.test_images,
                         task.test_labels, seed=seed, batch_size=task.batch_size, augment=task.augment,
                         sampler=task.stream.mode, invert=task.invert, train_index=task.train_index,
                         test_index=task.test_index)
    other.device = task.device
    return other


def task_meta_gradients(cfg, adapter, tasks) -> list[torch.Tensor]:
    """Leap's meta-gradient of each task alone (flat, float64), from the trainer's θ⁰ and head draws."""
    from train.trainer import run_task, setup
    grads = []
    for k, task in enumerate(tasks):
        adapter, meta = setup(cfg, adapter)           # θ⁰ from the seeded generator: the same every time
        run_task(cfg, adapter, meta, task, step_generators(cfg.seed, 0, 1 + k)[1], cfg.inner.steps)
        grads.append(torch.cat([g.detach().flatten().double() for g in meta.meta_gradient()]))
    return grads


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def compare(config: str | Path = CONFIG, overrides: list[str] = (), tasks: int = 4, data: Any = None
            ) -> dict[str, Any]:
    """The four meta-gradients on ``tasks`` tasks of ``config`` (with ``overrides``) and their cosines.
    ``data``: an already-loaded OmniglotData (else the config's root, through the cache)."""
    from train.config import load_config
    from train.tasks.omniglot import OmniglotAdapter
    common = [*overrides, "eval.every=0", "run.progress=false"]
    cfg = load_config(config, [*common, "omniglot.precision=fp32"])
    if cfg.task != "omniglot" or cfg.method != "leap":
        raise UserError(f"{NAME}: --config must be a Leap Omniglot config, {config} is not")
    layout = "false" if cfg.task_config.channels_last else "true"
    configs = {"fp32": cfg, "bf16": load_config(config, [*common, "omniglot.precision=bf16"]),
               "layout": load_config(config, [*common, "omniglot.precision=fp32", f"omniglot.channels_last={layout}"])}
    adapters = {"fp32": OmniglotAdapter(cfg.task_config, seed=cfg.seed, data=data)}
    for k in ("bf16", "layout"):
        adapters[k] = OmniglotAdapter(configs[k].task_config, seed=cfg.seed, data=adapters["fp32"].data)
    rng, _ = step_generators(cfg.seed, 0)             # meta-step 0's meta-batch, as episodic_unit draws it
    order_a = adapters["fp32"].sample_tasks("train", max(tasks, cfg.meta.meta_batch), rng)[:tasks]
    seeds_b = np.random.SeedSequence([cfg.seed, 1]).generate_state(len(order_a), dtype=np.uint64) >> 2
    order_b = [reordered(t, int(s)) for t, s in zip(order_a, seeds_b)]
    grads = {name: task_meta_gradients(configs[k], adapters[k], order)
             for name, k, order in (("fp32_A", "fp32", order_a), ("fp32_B", "fp32", order_b),
                                    ("bf16_A", "bf16", order_a), ("fp32_L", "layout", order_a))}
    mean = {k: torch.stack(v).mean(0) for k, v in grads.items()}      # the meta-batch's meta-gradient
    pairs = {"fp32A_fp32B": ("fp32_A", "fp32_B"), "bf16A_fp32A": ("bf16_A", "fp32_A"),
             "bf16A_fp32B": ("bf16_A", "fp32_B"), "fp32L_fp32A": ("fp32_L", "fp32_A")}
    out: dict[str, Any] = {f"cos_{k}": cosine(mean[a], mean[b]) for k, (a, b) in pairs.items()}
    out.update({f"cos_{k}_per_task": [cosine(x, y) for x, y in zip(grads[a], grads[b])]
                for k, (a, b) in pairs.items()})
    out["bf16_at_or_above_floor"] = out["cos_bf16A_fp32A"] >= out["cos_fp32A_fp32B"]
    out["relative_difference_bf16A_fp32A"] = float((mean["bf16_A"] - mean["fp32_A"]).norm() / mean["fp32_A"].norm())
    out["meta_gradient_norms"] = {k: float(v.norm()) for k, v in mean.items()}
    out["alphabets"] = [t.key for t in order_a]
    return out


def _parse(argv: list[str]):
    p = parser(__doc__.split("\n")[0], rounds=1)
    p.add_argument("--config", default=str(CONFIG), help="a Leap Omniglot config (default configs/omniglot_leap.yaml)")
    p.add_argument("--tasks", type=int, default=4, help="tasks of the meta-batch")
    p.add_argument("--steps", type=int, default=30, help="inner steps per task")
    p.add_argument("--filters", type=int, default=None, help="omniglot.filters (default: the config's)")
    p.add_argument("--root", default=None, help="Omniglot folder (default: the config's omniglot.root)")
    return p.parse_args(argv)


def run(argv: list[str]) -> dict:
    warnings.filterwarnings("ignore", message=".*TF32.*")
    args = _parse(argv)
    for name in ("tasks", "steps", "filters", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"{NAME}: --{name} must be positive")
    over = [f"inner.steps={args.steps}", f"run.threads={args.threads}"]
    over += [f"omniglot.filters={args.filters}"] if args.filters else []
    over += [f"omniglot.root={args.root}"] if args.root else []
    before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    out = compare(args.config, over, args.tasks)
    out = {"tasks": args.tasks, "steps": args.steps, "config": Path(args.config).name, **out,
           "load_before": " ".join(before),
           "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]) if before else ""}
    print(f"cos(fp32_A, fp32_B) = {out['cos_fp32A_fp32B']:.4f} (noise floor)   "
          f"cos(bf16_A, fp32_A) = {out['cos_bf16A_fp32A']:.4f}   cos(bf16_A, fp32_B) = {out['cos_bf16A_fp32B']:.4f}   "
          f"cos(fp32_L, fp32_A) = {out['cos_fp32L_fp32A']:.4f} (fp32 rounding alone)")
    return out
