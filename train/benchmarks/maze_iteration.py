"""`metarl bench maze-iteration`: milliseconds per maze training iteration.

One iteration = one batch of B mazes (30) × T steps (200): rollout (forward, sampling, environment), the
Backpropamine A2C loss, backward, and an Adam step on the task parameters — what one WarpGrad / A2C update
costs in the maze experiment. A few warm-up iterations, then the median of the timed ones (wall clock).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss
from agents.recurrent import MODELS, build_model
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch

from ._common import BenchParser

DEFAULT_MODELS = "rnn,lstm,warp-rnn"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_iterations(
    model_name: str, mazes: int, steps: int, warmup: int, iterations: int, seed: int, fused: bool = True
) -> tuple[list[float], list[float]]:
    """(wall-clock seconds, process CPU seconds) per training iteration for ``iterations`` timed
    iterations after ``warmup`` untimed ones. CPU time shows how much of a slow wall-clock figure is
    contention from other processes on a shared machine (with one thread, CPU ≈ wall when undisturbed)."""
    torch.manual_seed(seed)
    model = build_model(model_name)
    optimiser = torch.optim.Adam(model.task_parameters(), lr=1e-3)
    maze_batch = MazeBatch(mazes, MazeConfig(episode_length=steps), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    loss_config = MazeA2CConfig()
    times, cpu_times = [], []
    for i in range(warmup + iterations):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.zero_grad(set_to_none=True)
        batch = rollout(model, maze_batch, generator=generator, fused=fused)
        rollout_loss(batch, loss_config).total.backward()
        optimiser.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def run(argv: list[str]) -> dict:
    parser = BenchParser(prog="metarl bench maze-iteration", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--mazes", type=int, default=30, help="mazes (episodes) per batch")
    parser.add_argument("--steps", type=int, default=200, help="episode length T")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--compare-threads", action="store_true", help="also time every model with 2 threads")
    parser.add_argument("--unfused", action="store_true", help="also time warp-rnn without its fused unroll")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    for name in ("mazes", "steps", "iterations", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    thread_counts = [args.threads] + ([2] if args.compare_threads and args.threads != 2 else [])
    previous_threads = torch.get_num_threads()
    result: dict = {
        "benchmark": "maze-iteration",
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "mazes": args.mazes,
        "steps": args.steps,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "ms_per_iteration": {},
    }
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            figures: dict[str, float] = {}
            cpu_figures: dict[str, float] = {}
            variants = [(m, True) for m in models]
            if args.unfused and "warp-rnn" in models:
                variants.append(("warp-rnn", False))
            for model_name, fused in variants:
                label = model_name if fused else f"{model_name}-unfused"
                times, cpu_times = time_iterations(
                    model_name, args.mazes, args.steps, args.warmup, args.iterations, args.seed, fused
                )
                ms = 1e3 * statistics.median(times)
                figures[label] = round(ms, 2)
                cpu_figures[label] = round(1e3 * statistics.median(cpu_times), 2)
                print(
                    f"{label:>18}: {ms:7.1f} ms/iteration (median of {len(times)}, min {1e3 * min(times):.1f}, "
                    f"max {1e3 * max(times):.1f}; CPU {cpu_figures[label]:.1f} ms), {threads} thread(s), "
                    f"{args.mazes} mazes × {args.steps} steps",
                    flush=True,
                )
            suffix = "" if threads == args.threads else f"_{threads}_threads"
            result[f"ms_per_iteration{suffix}"] = figures
            result[f"cpu_ms_per_iteration{suffix}"] = cpu_figures
        result["threads"] = args.threads
        warp_ms = result["ms_per_iteration"].get("warp-rnn")
        if warp_ms is not None:
            # The WarpGrad maze budget: 100k episodes in batches of `mazes`.
            iterations_100k = -(-100_000 // args.mazes)
            result["warp_rnn_100k_episodes_minutes"] = round(warp_ms * iterations_100k / 60_000, 2)
            print(f"warp-rnn, 100k episodes ({iterations_100k} iterations): ≈ {result['warp_rnn_100k_episodes_minutes']} min")
    finally:
        torch.set_num_threads(previous_threads)
    return result
