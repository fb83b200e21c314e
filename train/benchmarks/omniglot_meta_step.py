"""`metarl bench omniglot-meta-step`: seconds per Omniglot Leap meta-step and its fraction of the GEMM peak.

The multi-shot Omniglot paper protocol: one meta-step = 20 tasks (20-way alphabets) × 100 SGD steps (lr 0.1,
batch 20, augmented 28×28 images) on OmniConv with 64 filters, each under Leap's watch, then the all-reduce
and the meta-update. The pieces are the trainer's own: ``--config`` (default configs/omniglot_leap.yaml)
read by ``load_config``, the adapter and meta-learner from ``trainer.setup``, one meta-batch by
``trainer.episodic_unit``. So the default is what `metarl train configs/omniglot_leap.yaml` runs, through
the same code:
- OmniConv in channels_last, as the adapter builds it (``omniglot.channels_last``, default true);
- glibc keeps freed memory: ``runtime.keep_freed_memory``, which the `metarl` command calls before any
  command (the benchmark's ranks call it too, as spawned processes do not pass through the command);
- OpenMP's short idle spin (``runtime.short_openmp_spin``, set by the `metarl` command; inherited by the
  benchmark's child processes) and ``run.threads`` torch threads (1 in the Omniglot configs).
Tasks come from the real Omniglot data (the config's ``omniglot.root``, via OmniglotAdapter) or, with
``--data synthetic``, from random uint8 images of the same shape through the same adapter.

``--tasks`` / ``--steps`` run a fraction of the meta-batch / inner loop; the time is then extrapolated
linearly to ``--full-tasks`` × ``--full-steps`` (default: the config's) and the output says so
(``"extrapolated": true``). Figures per timed meta-step: wall-clock seconds (what a run pays, inflated when
other processes share the cores) and process CPU seconds summed over ranks (≈ the wall time of an
undisturbed single-thread run). The load average is recorded before and after.

Opt-outs and options, for comparison:
  --no-channels-last  ``omniglot.channels_last=false``: NCHW convs and max-pool (CPU max-pool on NCHW is far
                      slower)
  --no-mallopt        glibc's default allocator: freed activation buffers are unmapped and page-faulted back
                      in at every step. mallopt cannot be undone in a process, so this variant runs in a fresh
                      interpreter that never sets it (``python -m train.benchmarks.omniglot_meta_step``)
  --bf16              ``omniglot.precision=bf16``: the model's forward under bf16 autocast, BatchNorm and the
                      loss in fp32 (train/tasks/image_classification.py ``PRECISIONS``)
  --threads T         torch threads per process (``run.threads``). On a loaded machine 2 threads spin in
                      OpenMP's barriers (far slower)
  --ranks R           R gloo processes on this host, the meta-batch's tasks split over them exactly as
                      train/distributed.py does under torchrun (T threads each)
  --sweep A,B,...     several variants as subprocesses of the `metarl` command, alternating round by round,
                      medians per variant; a variant is ``base`` (the default) or '+'-joined tokens of
                      nocl, nomallopt, bf16, threadsN, ranksN

FLOPs (:func:`omniconv_flops`), counted analytically. Convention: 2 FLOPs per multiply-add of the conv and
linear layers only — forward, and backward's input gradient and weight gradient (the images need no input
gradient, so the first conv has none); biases, BatchNorm, pooling, ReLU, the cross-entropy, the augmentation,
the SGD update and Leap's O(#parameters) vector work are not counted. That is what
``torch.utils.flop_counter.FlopCounterMode`` counts (tests/test_bench_omniglot.py checks it). One inner step
is one forward and one backward; a task is ``steps`` inner steps plus one forward (the closing loss
f(θ_K), train/tasks/base.py ``finish_task``); a meta-step is ``tasks`` tasks. At 64 filters and batch 20
one inner step is ≈ 1.16 GFLOP: 0.39 forward, 0.77 backward.

GEMM peak (:func:`gemm_peak`): one ``--gemm-size``² fp32 matmul on one torch thread, the best of
``--gemm-reps`` timed calls after two warm-up calls, as GFLOP/s; with ``--bf16`` the same in bf16.
``fraction_of_peak`` = (meta-step FLOPs / wall seconds / cores used) / the wall-time peak of the precision
run, where cores used = ranks × threads. ``fraction_of_peak_cpu`` = (FLOPs / process CPU seconds) / the
CPU-time peak (``gemm_peak_gflops_cpu``): both rates as the core delivers them while it runs this job, so
the steadier figure when other jobs share the cores. On an idle machine the two agree.
"""

from __future__ import annotations

import argparse
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

from ..errors import UserError
from ..runtime import SHORT_OPENMP_SPIN, keep_freed_memory
from ..seeding import step_generators
from ._common import cpu_name, median, parser, torch_threads

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "omniglot_leap.yaml"
TOKENS = {"nocl": ["--no-channels-last"], "nomallopt": ["--no-mallopt"], "bf16": ["--bf16"]}
NAME = "metarl bench omniglot-meta-step"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def synthetic_data(alphabets: int = 46, characters: int = 20, drawings: int = 20, size: int = 28, seed: int = 0):
    """An OmniglotData of random uint8 images with the real data's shapes (46 usable alphabets)."""
    from train.tasks.omniglot_data import OmniglotData
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


# ------------------------------------------------------------------------------------------------
# FLOPs and the GEMM peak


def omniconv_flops(filters: int = 64, batch: int = 20, ways: int = 20, size: int = 28, layers: int = 4,
                   in_channels: int = 1) -> dict[str, int]:
    """FLOPs of one OmniConv forward and one backward on a batch (the module docstring's convention): each
    block's 3×3 conv (padding 1) runs at the block's input resolution, then a 2×2 max-pool halves it
    (28 → 14 → 7 → 3 → 1); the head is Linear(filters · side² → ways)."""
    forward = weight_grad = input_grad = 0
    channels, side = in_channels, size
    for i in range(layers):
        macs = batch * side * side * filters * channels * 9
        forward += macs
        weight_grad += macs
        if i > 0:                      # the images need no gradient
            input_grad += macs
        channels, side = filters, side // 2
    head = batch * filters * side * side * ways
    forward, weight_grad, input_grad = forward + head, weight_grad + head, input_grad + head
    return {"forward": 2 * forward, "backward": 2 * (weight_grad + input_grad)}


def meta_step_flops(tasks: int, steps: int, filters: int, batch: int, ways: int) -> int:
    """Per task ``steps`` forward + backward passes and the closing forward f(θ_K); ``tasks`` tasks."""
    f = omniconv_flops(filters, batch, ways)
    return tasks * (steps * (f["forward"] + f["backward"]) + f["forward"])


def gemm_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an n×n by n×n matmul on one torch thread, 2n³ FLOPs each: the best of ``reps`` timed
    calls after two warm-up calls (oneDNN / BLAS set-up, caches), by wall time and by process CPU time
    (the latter is the core's rate while it runs this thread, when other jobs share the cores)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    wall = cpu = float("inf")
    with torch_threads(1):
        for _ in range(2):
            torch.mm(a, b, out=out)
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b, out=out)
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return {"wall": 2 * n ** 3 / wall / 1e9, "cpu": 2 * n ** 3 / cpu / 1e9}


# ------------------------------------------------------------------------------------------------
# the measurement


def config_overrides(args, fraction: bool = True) -> list[str]:
    """The command-line options as config overrides (the config's own values where an option is unset);
    without ``fraction``, the config's meta-batch and inner steps (the full protocol)."""
    over = ["eval.every=0", "run.progress=false", f"run.threads={args.threads}",
            f"omniglot.channels_last={'false' if args.no_channels_last else 'true'}",
            f"omniglot.precision={'bf16' if args.bf16 else 'fp32'}"]
    for key, value in (("meta.meta_batch", args.tasks if fraction else None),
                       ("inner.steps", args.steps if fraction else None), ("omniglot.batch_size", args.batch),
                       ("omniglot.filters", args.filters), ("omniglot.root", args.root)):
        if value is not None:
            over.append(f"{key}={value}")
    return over


def build(args):
    """The trainer's config, adapter and meta-learner, as `metarl train` builds them (``trainer.setup``)."""
    from train.config import load_config
    from train.tasks.omniglot import OmniglotAdapter
    from train.trainer import setup
    cfg = load_config(args.config, config_overrides(args))
    adapter = OmniglotAdapter(cfg.task_config, seed=cfg.seed,
                              data=synthetic_data() if args.data == "synthetic" else None)
    adapter, meta = setup(cfg, adapter)
    return cfg, adapter, meta


def _worker(rank: int, size: int, port: int, argv: list[str], queue) -> None:
    """One process: build the trainer's pieces, one warm-up task, then ``rounds`` timed meta-steps."""
    warnings.filterwarnings("ignore", message=".*TF32.*")
    args = _parse(argv)
    import torch.distributed as dist
    from train.distributed import World
    from train.trainer import episodic_unit, run_task
    if not args.no_mallopt:
        keep_freed_memory()          # as the `metarl` command does first (a no-op repeat in its own process)
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
        episodic_unit(cfg, adapter, meta, world, unit)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if size > 1:
        dist.destroy_process_group()
    queue.put((rank, walls, cpus))


def _parse(argv: list[str]):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--config", default=str(CONFIG), help="an Omniglot config (default configs/omniglot_leap.yaml)")
    p.add_argument("--tasks", type=int, default=None, help="tasks run per meta-step (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="inner steps run per task (default: the config's)")
    p.add_argument("--full-tasks", type=int, default=None, help="the protocol's meta-batch (default: the config's)")
    p.add_argument("--full-steps", type=int, default=None, help="the protocol's inner steps (default: the config's)")
    p.add_argument("--batch", type=int, default=None, help="omniglot.batch_size (default: the config's)")
    p.add_argument("--filters", type=int, default=None, help="omniglot.filters (default: the config's)")
    p.add_argument("--data", choices=("real", "synthetic"), default="real")
    p.add_argument("--root", default=None, help="Omniglot folder (default: the config's omniglot.root)")
    p.add_argument("--no-channels-last", action="store_true", help="omniglot.channels_last=false (NCHW)")
    p.add_argument("--no-mallopt", action="store_true", help="glibc's default allocator (a fresh interpreter)")
    p.add_argument("--bf16", action="store_true", help="omniglot.precision=bf16")
    for old in ("--channels-last", "--mallopt"):    # once opt-in, now the default: older commands still run
        p.add_argument(old, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--gemm-size", type=int, default=2048, help="side of the square matmul timed for the peak")
    p.add_argument("--gemm-reps", type=int, default=5, help="timed matmuls (the best counts)")
    p.add_argument("--sweep", default="", help="comma-separated variants, e.g. base,nocl,nomallopt,bf16,ranks2")
    return p.parse_args(argv)


def _in_fresh_interpreter(argv: list[str]) -> dict[str, Any]:
    """:func:`measure` in a new Python process that never calls mallopt; OpenMP's short spin as the command."""
    env = {**os.environ, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", SHORT_OPENMP_SPIN)}
    out = subprocess.run([sys.executable, "-m", "train.benchmarks.omniglot_meta_step", *argv],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise UserError(f"{NAME} --no-mallopt: the fresh interpreter failed: "
                        f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args, argv: list[str], fresh: bool = False) -> dict[str, Any]:
    """Run ``args.rounds`` meta-steps on ``args.ranks`` processes; medians and the extrapolation.
    ``fresh``: this interpreter has never called mallopt (the ``--no-mallopt`` child)."""
    if args.no_mallopt and args.ranks == 1 and not fresh:
        return _in_fresh_interpreter(argv)
    before = load()
    if args.ranks == 1:
        import queue as queue_module
        q: Any = queue_module.SimpleQueue()
        _worker(0, 1, 0, argv, q)
        results = [q.get()]
    else:                              # spawned processes start fresh: mallopt only where _worker sets it
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


def efficiency(args, timing: dict[str, Any], peaks: dict[str, dict[str, float]]) -> dict[str, Any]:
    """FLOPs per meta-step at the full protocol and their rate against the GEMM peak (module docstring)."""
    flops = meta_step_flops(args.full_tasks, args.full_steps, args.filters, args.batch, args.ways)
    per_step = omniconv_flops(args.filters, args.batch, args.ways)
    cores = args.ranks * args.threads
    precision = "bf16" if args.bf16 else "fp32"
    per_core = flops / timing["seconds_per_meta_step"] / cores / 1e9
    per_cpu_second = flops / timing["cpu_seconds_per_meta_step"] / 1e9
    out = {"gflop_per_meta_step": flops / 1e9,
           "gflop_per_inner_step": (per_step["forward"] + per_step["backward"]) / 1e9,
           "cores_used": cores, "achieved_gflops_per_core": per_core, "gflops_per_cpu_second": per_cpu_second,
           "gemm_peak_gflops": peaks["fp32"]["wall"], "gemm_peak_gflops_cpu": peaks["fp32"]["cpu"],
           "peak_precision": precision,
           "fraction_of_peak": per_core / peaks[precision]["wall"],
           "fraction_of_peak_cpu": per_cpu_second / peaks[precision]["cpu"]}
    if args.bf16:
        out["gemm_peak_gflops_bf16"], out["gemm_peak_gflops_bf16_cpu"] = peaks["bf16"]["wall"], peaks["bf16"]["cpu"]
    return out


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
            raise UserError(f"{NAME}: unknown variant token {token!r} (base, nocl, nomallopt, bf16, threadsN, "
                            f"ranksN)")
    return flags


def sweep(args, argv: list[str]) -> dict[str, Any]:
    """Each variant in its own `metarl` subprocess (mallopt and thread pools cannot be undone in-process), one
    timed meta-step per subprocess, variants alternating round by round so that drifting load hits all alike."""
    variants = [v.strip() for v in args.sweep.split(",") if v.strip()]
    flags = {v: _variant_flags(v) for v in variants}
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
    keys = ("seconds_per_meta_step", "cpu_seconds_per_meta_step", "cpu_seconds_slowest_rank", "fraction_of_peak",
            "fraction_of_peak_cpu")
    rows: dict[str, dict[str, list]] = {v: {k: [] for k in keys} for v in variants}
    loads = [load()]
    for r in range(args.rounds):
        for v in variants:
            cmd = [sys.executable, "-m", "train.cli", "bench", "omniglot-meta-step", *common, *flags[v],
                   "--rounds", "1"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise UserError(f"{NAME}: variant {v} failed: {(out.stderr.strip().splitlines() or [''])[-1]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            for k in keys:
                rows[v][k].append(float("nan") if res[k] is None else res[k])    # None: no FLOP count (warps)
            print(f"round {r} {v:28s} wall {res['seconds_per_meta_step']:7.2f} s  "
                  f"cpu {res['cpu_seconds_per_meta_step']:7.2f} s  of peak {res['fraction_of_peak']:.2f}  "
                  f"load {res['load_after']}", flush=True)
        loads.append(load())
    table = {v: {"wall_s": round(median(x["seconds_per_meta_step"]), 3),
                 "cpu_s": round(median(x["cpu_seconds_per_meta_step"]), 3),
                 "cpu_slowest_rank_s": round(median(x["cpu_seconds_slowest_rank"]), 3),
                 "fraction_of_peak": round(median(x["fraction_of_peak"]), 3),
                 "fraction_of_peak_cpu": round(median(x["fraction_of_peak_cpu"]), 3)} for v, x in rows.items()}
    base = table[variants[0]]
    print(f"\n{'variant':28s} {'wall s':>8s} {'cpu s':>8s} {'cpu/rank s':>10s} {'of peak':>8s} "
          f"{'wall vs ' + variants[0]:>14s}")
    for v, t in table.items():
        print(f"{v:28s} {t['wall_s']:8.2f} {t['cpu_s']:8.2f} {t['cpu_slowest_rank_s']:10.2f} "
              f"{t['fraction_of_peak']:8.2f} {base['wall_s'] / t['wall_s']:13.2f}x")
    return {"sweep": table, "rounds": args.rounds, "loads": loads}


def resolve(args) -> None:
    """Fill the options left unset from the config, and check them (one-line errors)."""
    from train.config import load_config
    cfg = load_config(args.config, config_overrides(args, fraction=False))
    if cfg.task != "omniglot" or cfg.meta.every:
        raise UserError(f"{NAME}: --config must be an episodic Omniglot config, {args.config} is not")
    c = cfg.task_config
    args.full_tasks = args.full_tasks or cfg.meta.meta_batch
    args.full_steps = args.full_steps or cfg.inner.steps
    args.tasks, args.steps = args.tasks or args.full_tasks, args.steps or args.full_steps
    args.batch, args.filters, args.ways, args.root = c.batch_size, c.filters, c.ways, c.root
    args.warp = c.warp
    args.method = cfg.method


def run(argv: list[str]) -> dict:
    warnings.filterwarnings("ignore", message=".*TF32.*")
    args = _parse(argv)
    for name in ("tasks", "steps", "full_tasks", "full_steps", "batch", "filters", "ranks", "rounds", "threads",
                 "gemm_size", "gemm_reps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"{NAME}: --{name.replace('_', '-')} must be positive")
    resolve(args)
    if args.data == "real" and not Path(args.root).is_dir():
        raise UserError(f"{NAME}: no Omniglot data at {args.root} (use --data synthetic)")
    head = {"protocol": f"{args.full_tasks} tasks x {args.full_steps} SGD steps, batch {args.batch}, "
                        f"OmniConv {args.filters} filters, {args.ways}-way, {args.method} ({Path(args.config).name})",
            "data": args.data, "tasks_run": args.tasks, "steps_run": args.steps, "threads": args.threads,
            "ranks": args.ranks, "channels_last": not args.no_channels_last, "mallopt": not args.no_mallopt,
            "precision": "bf16" if args.bf16 else "fp32", "cpu": cpu_name(), "cores": os.cpu_count()}
    if args.sweep:      # each variant's own options are in its name
        per_variant = ("ranks", "threads", "channels_last", "mallopt", "precision")
        return {**{k: v for k, v in head.items() if k not in per_variant}, **sweep(args, argv)}
    peaks = {"fp32": gemm_peak(torch.float32, args.gemm_size, args.gemm_reps)}
    if args.bf16:
        peaks["bf16"] = gemm_peak(torch.bfloat16, args.gemm_size, args.gemm_reps)
    out = {**head, **measure(args, argv)}
    if args.warp == "none":           # the FLOP count is OmniConv's without warp layers
        out.update(efficiency(args, out, peaks))
    else:
        out.update(gemm_peak_gflops=peaks["fp32"]["wall"], fraction_of_peak=None, fraction_of_peak_cpu=None)
    note = (f" (extrapolated ×{out['extrapolation_factor']:g} from {args.tasks} tasks × {args.steps} steps)"
            if out["extrapolated"] else "")
    print(f"{args.method} meta-step: {out['seconds_per_meta_step']:.2f} s wall, "
          f"{out['cpu_seconds_per_meta_step']:.2f} s CPU{note}; load {out['load_before']} → {out['load_after']}")
    if out["fraction_of_peak"] is not None:
        print(f"{out['gflop_per_meta_step']:.4g} GFLOP per meta-step: {out['achieved_gflops_per_core']:.1f} GFLOP/s "
              f"per core, GEMM peak {peaks[out['peak_precision']]['wall']:.1f} ({out['peak_precision']}, one "
              f"thread): {out['fraction_of_peak']:.2f} of peak; by CPU time {out['gflops_per_cpu_second']:.1f} of "
              f"{peaks[out['peak_precision']]['cpu']:.1f}: {out['fraction_of_peak_cpu']:.2f}")
    return out


if __name__ == "__main__":      # the --no-mallopt child (measure only; the parent adds the rest)
    _argv = sys.argv[1:]
    _args = _parse(_argv)
    resolve(_args)
    print(json.dumps(measure(_args, _argv, fresh=True)))
