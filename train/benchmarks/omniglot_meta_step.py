"""`metarl bench omniglot-meta-step`: seconds per Leap meta-step at the multi-shot Omniglot paper protocol.

One meta-step = 20 tasks (20-way alphabets) × 100 SGD steps (lr 0.1, batch 20, augmented 28×28 images) on
OmniConv with 64 filters, each under Leap's watch, then the all-reduce and the meta-update — the trainer's
own ``episodic_unit`` (train/trainer.py), so the figure is what `metarl train configs/omniglot_leap.yaml`
pays per meta-step. Tasks come from the real Omniglot data (../shared/data/omniglot, via OmniglotAdapter)
or, with ``--data synthetic``, from random uint8 images of the same shape through the same adapter.

``--tasks`` / ``--steps`` run a fraction of the meta-batch / inner loop; the time is then extrapolated
linearly to ``--full-tasks`` × ``--full-steps`` and the output says so (``"extrapolated": true``).

Figures per timed meta-step: wall-clock seconds (what a run pays, inflated when other processes share the
cores) and process CPU seconds summed over ranks (≈ the wall time of an undisturbed single-thread run).
The machine's load average (``uptime``) is recorded before and after.

Speed options (off by default). The trainer itself builds OmniConv in channels_last (``omniglot.channels_last``)
and sets mallopt in the CLI, so `--mallopt` (plus the adapter's default layout) is what `metarl train` runs:
  --channels-last  model (and so θ⁰ and the task copies) in channels_last memory format: oneDNN convs and,
                   above all, max-pool run in NHWC; CPU max-pool on NCHW is far slower (now the
                   adapter's default, so the flag changes nothing unless that default is turned off)
  --mallopt        glibc mallopt(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = 1 GiB): freed activation buffers stay
                   in the heap instead of being unmapped and page-faulted back in at every step
  --bf16           bf16 autocast around the task loss (forward convs/linear in bf16; weights stay fp32)
  --threads T      torch threads per process. On a loaded machine 2 threads spin in OpenMP's barriers
                   (far slower); run with OMP_WAIT_POLICY=PASSIVE in the environment to compare fairly
  --ranks R        R gloo processes on this host, the meta-batch's tasks split over them exactly as
                   train/distributed.py does under torchrun (T threads each)
  --sweep A,B,...  run several variants (``base`` or '+'-joined tokens of cl, mallopt, bf16, threadsN,
                   ranksN) as subprocesses, alternating them round by round, and report medians per variant
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime import keep_freed_memory
from ..seeding import FIXED, step_generators
from ._common import median, parser

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "omniglot"
TOKENS = {"cl": ["--channels-last"], "mallopt": ["--mallopt"], "bf16": ["--bf16"]}


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def synthetic_data(alphabets: int = 46, characters: int = 20, drawings: int = 20, size: int = 28, seed: int = 0):
    """An OmniglotData of random uint8 images with the real data's shapes (46 usable alphabets)."""
    from train.tasks.omniglot import OmniglotData
    rng = np.random.default_rng(seed)
    n_chars = alphabets * characters
    images = rng.integers(0, 256, size=(n_chars * drawings, size, size), dtype=np.uint8)
    return OmniglotData(
        images=images,
        files=np.array([f"{c:04d}_{d:02d}.png" for c in range(n_chars) for d in range(drawings)]),
        char_start=np.arange(0, n_chars * drawings + 1, drawings, dtype=np.int64),
        char_names=np.array([f"character{c % characters + 1:02d}" for c in range(n_chars)]),
        char_alphabet=np.repeat(np.arange(alphabets, dtype=np.int64), characters),
        alphabets=np.array([f"Synthetic_{a:02d}" for a in range(alphabets)]),
        alphabet_split=np.array(["images_background"] * alphabets))


def make_adapter(args, seed: int):
    """OmniglotAdapter (20-way, batch 20) with the chosen speed options applied to its models and tasks."""
    from train.tasks.omniglot import OmniglotAdapter, OmniglotConfig

    class Adapter(OmniglotAdapter):
        def make_model(self, generator, task=None):
            model = super().make_model(generator, task)
            return model.to(memory_format=torch.channels_last) if args.channels_last else model

        def make_task(self, split, alphabet, rng):
            task = super().make_task(split, alphabet, rng)
            if args.bf16:
                loss = task.loss

                def bf16_loss(model, batch, loss=loss):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return loss(model, batch)
                task.loss = bf16_loss
            return task

    config = OmniglotConfig(root=str(args.root), num_pretrain=20, batch_size=args.batch, filters=args.filters,
                            sampler="mod")
    data = synthetic_data() if args.data == "synthetic" else None
    return Adapter(config, seed=seed, data=data)


def build(args):
    from train.config import build_config
    from train.trainer import build_meta_learner
    cfg = build_config({
        "name": "bench", "seed": 0, "task": "omniglot", "method": "leap",
        "inner": {"optimizer": "sgd", "lr": 0.1, "steps": args.steps},
        "meta": {"meta_batch": args.tasks, "steps": 10**6, "optimizer": {"name": "sgd", "lr": 0.1},
                 "head": "reset"},
        "leap": {"p": 1, "loss": True, "stabilizer": True},
        "eval": {"every": 0},
        "run": {"progress": False, "threads": args.threads},
        "omniglot": {"root": str(args.root), "num_pretrain": 20, "batch_size": args.batch,
                     "filters": args.filters},
    })
    adapter = make_adapter(args, cfg.seed)
    _, generator = step_generators(cfg.seed, FIXED, 0)
    return cfg, adapter, build_meta_learner(cfg, adapter.make_model(generator), adapter)


def _worker(rank: int, size: int, port: int, argv: list[str], queue) -> None:
    """One process: build the trainer's pieces, one warm-up task, then ``rounds`` timed meta-steps."""
    warnings.filterwarnings("ignore", message=".*TF32.*")
    args = _parse(argv)
    import torch.distributed as dist
    from train.distributed import World
    from train.trainer import episodic_unit, run_task
    torch.set_num_threads(args.threads)
    if args.mallopt:
        keep_freed_memory()
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    world = World(rank=rank, size=size, local_size=size)
    cfg, adapter, meta = build(args)
    # Warm-up (oneDNN primitive creation, allocator): one short unwatched task, not timed.
    rng, gen = step_generators(cfg.seed, 10**6)
    run_task(cfg, adapter, meta, adapter.sample_tasks("train", 1, rng)[0], gen, 5, watched=False)
    walls, cpus = [], []
    for unit in range(args.rounds):
        world.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        episodic_unit(cfg, adapter, meta, world, unit, lambda values: None)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if size > 1:
        dist.destroy_process_group()
    queue.put((rank, walls, cpus))


def _parse(argv: list[str]):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=20, help="tasks run per meta-step (fraction of --full-tasks)")
    p.add_argument("--steps", type=int, default=100, help="inner steps run per task (fraction of --full-steps)")
    p.add_argument("--full-tasks", type=int, default=20, help="the protocol's meta-batch")
    p.add_argument("--full-steps", type=int, default=100, help="the protocol's inner steps")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--data", choices=("real", "synthetic"), default="real")
    p.add_argument("--root", default=str(DATA), help="Omniglot folder (real data)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--mallopt", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--sweep", default="", help="comma-separated variants, e.g. base,cl,cl+mallopt,cl+ranks2")
    return p.parse_args(argv)


def measure(args, argv: list[str]) -> dict[str, Any]:
    """Run ``args.rounds`` meta-steps on ``args.ranks`` processes; medians and the extrapolation."""
    before = load()
    if args.ranks == 1:
        import queue as queue_module
        q: Any = queue_module.SimpleQueue()
        _worker(0, 1, 0, argv, q)
        results = [q.get()]
    else:
        import torch.multiprocessing as mp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        q = ctx.SimpleQueue()
        mp.start_processes(_worker, args=(args.ranks, port, argv, q), nprocs=args.ranks, join=True,
                           start_method="spawn")
        results = sorted(q.get() for _ in range(args.ranks))
    walls = [max(r[1][i] for r in results) for i in range(args.rounds)]          # the slowest rank
    cpus = [sum(r[2][i] for r in results) for i in range(args.rounds)]           # all ranks together
    cpu_max = [max(r[2][i] for r in results) for i in range(args.rounds)]
    scale = (args.full_tasks * args.full_steps) / (args.tasks * args.steps)
    return {
        "seconds_per_meta_step": median(walls) * scale,
        "cpu_seconds_per_meta_step": median(cpus) * scale,
        "cpu_seconds_slowest_rank": median(cpu_max) * scale,
        "measured_wall_s": [round(w, 3) for w in walls],
        "measured_cpu_s": [round(c, 3) for c in cpus],
        "extrapolated": scale != 1.0,
        "extrapolation_factor": scale,
        "load_before": before, "load_after": load(),
    }


def _variant_flags(name: str) -> list[str]:
    flags: list[str] = []
    for token in name.split("+"):
        if token == "base":
            continue
        if token in TOKENS:
            flags += TOKENS[token]
        elif token.startswith("threads") and token[7:].isdigit():
            flags += ["--threads", token[7:]]
        elif token.startswith("ranks") and token[5:].isdigit():
            flags += ["--ranks", token[5:]]
        else:
            raise SystemExit(f"metarl bench omniglot-meta-step: unknown variant token {token!r} "
                             f"(base, cl, mallopt, bf16, threadsN, ranksN)")
    return flags


def sweep(args, argv: list[str]) -> dict[str, Any]:
    """Each variant in its own subprocess (mallopt and thread pools cannot be undone in-process), one timed
    meta-step per subprocess, variants alternating round by round so that drifting load hits all alike."""
    variants = [v.strip() for v in args.sweep.split(",") if v.strip()]
    common: list[str] = []
    skip = {"--sweep", "--rounds"}
    it = iter(argv)
    for a in it:
        key = a.split("=", 1)[0]
        if key in skip:
            if "=" not in a:
                next(it, None)
            continue
        common.append(a)
    flags = {v: _variant_flags(v) for v in variants}
    rows: dict[str, dict[str, list]] = {v: {"wall": [], "cpu": [], "cpu_max": []} for v in variants}
    loads = [load()]
    for r in range(args.rounds):
        for v in variants:
            cmd = [sys.executable, "-m", "train.cli", "bench", "omniglot-meta-step", *common, *flags[v],
                   "--rounds", "1"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise SystemExit(f"variant {v} failed: {out.stderr.strip().splitlines()[-1:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows[v]["wall"].append(res["seconds_per_meta_step"])
            rows[v]["cpu"].append(res["cpu_seconds_per_meta_step"])
            rows[v]["cpu_max"].append(res["cpu_seconds_slowest_rank"])
            print(f"round {r} {v:28s} wall {res['seconds_per_meta_step']:7.2f} s  "
                  f"cpu {res['cpu_seconds_per_meta_step']:7.2f} s  load {res['load_after']}", flush=True)
        loads.append(load())
    table = {v: {"wall_s": round(median(x["wall"]), 3), "cpu_s": round(median(x["cpu"]), 3),
                 "cpu_slowest_rank_s": round(median(x["cpu_max"]), 3)} for v, x in rows.items()}
    base = table[variants[0]]
    print(f"\n{'variant':28s} {'wall s':>8s} {'cpu s':>8s} {'cpu/rank s':>10s} {'wall vs ' + variants[0]:>14s}")
    for v, t in table.items():
        print(f"{v:28s} {t['wall_s']:8.2f} {t['cpu_s']:8.2f} {t['cpu_slowest_rank_s']:10.2f} "
              f"{base['wall_s'] / t['wall_s']:13.2f}x")
    return {"sweep": table, "rounds": args.rounds, "loads": loads}


def run(argv: list[str]) -> dict:
    warnings.filterwarnings("ignore", message=".*TF32.*")
    args = _parse(argv)
    for name in ("tasks", "steps", "full_tasks", "full_steps", "batch", "filters", "ranks", "rounds", "threads"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"metarl bench omniglot-meta-step: --{name.replace('_', '-')} must be positive")
    if args.data == "real" and not Path(args.root).is_dir():
        raise SystemExit(f"metarl bench omniglot-meta-step: no Omniglot data at {args.root} (use --data synthetic)")
    head = {"protocol": f"{args.full_tasks} tasks x {args.full_steps} SGD steps, batch {args.batch}, "
                        f"OmniConv {args.filters} filters, 20-way, Leap (p=1, loss, stabilizer)",
            "data": args.data, "tasks_run": args.tasks, "steps_run": args.steps, "threads": args.threads,
            "ranks": args.ranks, "channels_last": args.channels_last, "mallopt": args.mallopt, "bf16": args.bf16,
            "cpu": _cpu(), "cores": os.cpu_count()}
    if args.sweep:
        return {**head, **sweep(args, argv)}
    out = {**head, **measure(args, argv)}
    note = (f" (extrapolated ×{out['extrapolation_factor']:g} from {args.tasks} tasks × {args.steps} steps)"
            if out["extrapolated"] else "")
    print(f"Leap meta-step: {out['seconds_per_meta_step']:.2f} s wall, {out['cpu_seconds_per_meta_step']:.2f} s "
          f"CPU{note}; load {out['load_before']} → {out['load_after']}")
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
