"""`metarl bench maze-iteration`: milliseconds per maze training iteration, one seed alone and per seed when
S seeds train as one batch.

One iteration = one batch of B mazes (30) × T steps (200): rollout (forward, sampling, environment), the
Backpropamine A2C loss, backward, and an Adam step on the task parameters — what one WarpGrad / A2C update
costs in the maze experiment. Seed-batched (``--seeds`` S, default 10; agents.seed_batched): the same
iteration for S independent seeds stacked along a leading parameter dimension, on S × B mazes, with the
per-seed Adam (metarl.seed_batch.SeedAdam); its time divided by S is the per-seed cost. The single-seed and
batched iterations of a model are timed alternately (one of each per round, after a few warm-up rounds), so
a change of load on a shared machine affects both; the medians are reported, wall clock and process CPU time.
``--device cuda`` puts the agents on a GPU (the mazes still step on the CPU; the fused unrolls are CPU-only, so
the autograd cell path runs there).

Last line (JSON): ``ms_per_iteration`` and ``ms_per_seed_iteration_batched`` (dicts by model),
``batched_seeds``, ``device``, their CPU-time counterparts, and ``batched_per_seed_ratio`` (per-seed batched / single).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss, rollout_seeds
from agents.recurrent import MODELS, RecurrentConfig, build_model
from agents.seed_batched import build_seed_batched
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch, SeedMazeBatch
from metarl.seed_batch import SeedAdam

from ._common import BenchParser, machine

DEFAULT_MODELS = "rnn,lstm,warp-rnn"
FUSED_MODELS = ("warp-rnn", "warp-lstm", "plastic-rnn", "plastic-rnn-retroactive")  # the models with a fused unroll


def training_iteration(model_name: str, mazes: int, steps: int, seed: int, fused: bool = True,
                       seeds: int = 0, device: torch.device | None = None) -> Callable[[], None]:
    """One training iteration as a callable: a single agent (``seeds`` = 0) or ``seeds`` stacked agents
    (seeds seed, seed + 1, ...), with their mazes, samplers and Adam, the agent on ``device`` (default CPU;
    the mazes step on the CPU either way, as in training). On a GPU the callable ends with a synchronize, so
    a wall-clock timing of it includes the queued kernels."""
    device = torch.device("cpu") if device is None else device
    config = MazeConfig(episode_length=steps)
    loss_config = MazeA2CConfig()
    if seeds:
        ids = list(range(seed, seed + seeds))
        model = build_seed_batched(model_name, RecurrentConfig(), ids).to(device)
        optimiser = SeedAdam(model.task_parameters(), seeds, lr=1e-3)
        maze_batch = SeedMazeBatch(ids, mazes, config)
        generators = [torch.Generator().manual_seed(s) for s in ids]

        def episodes():
            return rollout_seeds(model, maze_batch, generators=generators, fused=fused)
    else:
        torch.manual_seed(seed)
        model = build_model(model_name).to(device)
        optimiser = torch.optim.Adam(model.task_parameters(), lr=1e-3)
        maze_batch = MazeBatch(mazes, config, seed=seed)
        generator = torch.Generator().manual_seed(seed)

        def episodes():
            return rollout(model, maze_batch, generator=generator, fused=fused)

    def iteration() -> None:
        model.zero_grad(set_to_none=True)
        batch = episodes()
        rollout_loss(batch, loss_config).total.sum().backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return iteration


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def time_iterations(model_name: str, mazes: int, steps: int, warmup: int, iterations: int, seed: int,
                    fused: bool = True, seeds: int = 0, device: torch.device | None = None) -> dict[str, list[float]]:
    """Seconds per iteration (wall and process CPU), single agent and — with ``seeds`` — per seed of the
    seed-batched iteration, timed alternately: {"single": [...], "single_cpu", "batched", "batched_cpu"}."""
    runs = {"single": training_iteration(model_name, mazes, steps, seed, fused, device=device)}
    if seeds:
        runs["batched"] = training_iteration(model_name, mazes, steps, seed, fused, seeds, device)
    out: dict[str, list[float]] = {}
    for i in range(warmup + iterations):
        for label, fn in runs.items():
            wall, cpu = _timed(fn)
            if i >= warmup:
                per = seeds if label == "batched" else 1
                out.setdefault(label, []).append(wall / per)
                out.setdefault(f"{label}_cpu", []).append(cpu / per)
    return out


def run(argv: list[str]) -> dict:
    parser = BenchParser(prog="metarl bench maze-iteration", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--mazes", type=int, default=30, help="mazes (episodes) per batch, per seed")
    parser.add_argument("--steps", type=int, default=200, help="episode length T")
    parser.add_argument("--seeds", type=int, default=10, help="seeds trained as one batch (0: single seed only)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--iterations", type=int, default=8, help="timed rounds; the medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--compare-threads", action="store_true", help="also time every model with 2 threads")
    parser.add_argument("--unfused", action="store_true",
                        help=f"also time the models with a fused unroll ({', '.join(FUSED_MODELS)}) without it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda, cuda:N or auto: where the agents compute "
                             "(the mazes step on the CPU)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    for name in ("mazes", "steps", "iterations", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.seeds < 0 or args.warmup < 0:
        parser.error("--seeds and --warmup must be >= 0")
    from ..device import resolve_device
    device = resolve_device(args.device, option="--device")     # CUDA absent: one line, exit 2
    host = machine(device)

    thread_counts = [args.threads] + ([2] if args.compare_threads and args.threads != 2 else [])
    previous_threads = torch.get_num_threads()
    result: dict = {
        "benchmark": "maze-iteration",
        "machine": host,
        "device": str(device),
        "torch": torch.__version__,
        "mazes": args.mazes,
        "steps": args.steps,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "batched_seeds": args.seeds,
        "ms_per_iteration": {},
        "ms_per_seed_iteration_batched": {},
    }
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            figures: dict[str, dict[str, float]] = {k: {} for k in ("single", "single_cpu", "batched", "batched_cpu")}
            variants = [(m, True) for m in models]
            if args.unfused:
                variants += [(m, False) for m in models if m in FUSED_MODELS]
            for model_name, fused in variants:
                label = model_name if fused else f"{model_name}-unfused"
                times = time_iterations(model_name, args.mazes, args.steps, args.warmup, args.iterations, args.seed,
                                        fused, args.seeds, device)
                for key, xs in times.items():
                    figures[key][label] = round(1e3 * statistics.median(xs), 2)
                line = (f"{label:>18}: {figures['single'][label]:7.1f} ms/iteration alone (CPU "
                        f"{figures['single_cpu'][label]:.1f})")
                if args.seeds:
                    line += (f"; {figures['batched'][label]:7.1f} ms per seed with {args.seeds} seeds batched (CPU "
                             f"{figures['batched_cpu'][label]:.1f}), ratio "
                             f"{figures['batched'][label] / figures['single'][label]:.2f}")
                print(f"{line}; {threads} thread(s), {args.mazes} mazes × {args.steps} steps, medians of "
                      f"{args.iterations}", flush=True)
            suffix = "" if threads == args.threads else f"_{threads}_threads"
            result[f"ms_per_iteration{suffix}"] = figures["single"]
            result[f"cpu_ms_per_iteration{suffix}"] = figures["single_cpu"]
            if args.seeds:
                result[f"ms_per_seed_iteration_batched{suffix}"] = figures["batched"]
                result[f"cpu_ms_per_seed_iteration_batched{suffix}"] = figures["batched_cpu"]
                result[f"batched_per_seed_ratio{suffix}"] = {
                    m: round(figures["batched"][m] / figures["single"][m], 3) for m in figures["single"]}
        result["threads"] = args.threads
        warp_ms = result["ms_per_iteration"].get("warp-rnn")
        if warp_ms is not None:
            # The WarpGrad maze budget: 100k episodes in batches of `mazes`.
            iterations_100k = -(-100_000 // args.mazes)
            result["warp_rnn_100k_episodes_minutes"] = round(warp_ms * iterations_100k / 60_000, 2)
            minutes = result["warp_rnn_100k_episodes_minutes"]
            print(f"warp-rnn, 100k episodes ({iterations_100k} iterations): ≈ {minutes} min")
    finally:
        torch.set_num_threads(previous_threads)
    return result
