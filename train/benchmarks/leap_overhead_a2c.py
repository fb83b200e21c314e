"""Cost of watching an A2C inner loop with Leap: the same run with and without Leap attached.

Both variants start from the same initialisation, env seeds and sampling seed, so they do identical work
apart from Leap's observer (Leap only reads the parameters). They alternate round by round, and the
median wall time of each is compared:

    metarl bench leap-overhead-a2c [--steps 12000] [--rounds 7] [--loss on|off] [--threads 0]

Leap is the Atari configuration: encoder only (``include=["encoder."]``), energy metric p = 2; torch threads
as the Atari configs train (``--threads 0``: torch's default, one per core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from agents.a2c import A2CConfig, make_optimizer, train_agent
from agents.nets import ActorCritic
from envs.atari import close_all, make_atari_groups
from metarl.base import MetaOptimizerConfig
from metarl.leap import Leap, LeapConfig
from metarl.seam import NULL_WATCH

from ._common import atari_game, machine, parser, torch_threads


def _parse(argv: list[str]) -> argparse.Namespace:
    # --rounds 7: the first rounds of a process run slow for both arms here
    p = parser(__doc__.splitlines()[0], rounds=7, threads=0)
    p.add_argument("--game", default="Pong")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--n-steps", type=int, default=5)
    p.add_argument("--steps", type=int, default=12000, help="env steps per run")
    p.add_argument("--env-threads", type=int, default=None)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--loss", choices=("on", "off"), default="on", help="Leap's loss term on the manifold")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.game = atari_game(args.game)
    return args


def _one_run(args, cfg: A2CConfig, leap: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process — every thread, EnvPool's included) of one run."""
    envs = make_atari_groups(args.game, args.num_envs, args.seed, groups=args.groups, backend="envpool",
                             num_threads=args.env_threads)
    try:
        model = ActorCritic(envs[0].num_actions, generator=torch.Generator().manual_seed(args.seed))
        optimizer = make_optimizer(model.parameters(), cfg)
        gen = torch.Generator().manual_seed(args.seed)
        if leap:
            meta = Leap(model, LeapConfig(p=2, loss=args.loss == "on"), include=["encoder."],
                        meta_optimizer=MetaOptimizerConfig(name="sgd", lr=1e-4))
            meta.load_init(model)
            start, cpu = time.perf_counter(), time.process_time()
            with meta.watch(model, optimizer, args.game) as watch:
                train_agent(envs, model, optimizer, args.steps, watch=watch, cfg=cfg, generator=gen,
                            final_loss=True)
            meta.meta_step()
        else:
            start, cpu = time.perf_counter(), time.process_time()
            train_agent(envs, model, optimizer, args.steps, watch=NULL_WATCH, cfg=cfg, generator=gen,
                        final_loss=True)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        close_all(envs)


def run(argv: list[str]) -> dict:
    args = _parse(argv)
    cfg = A2CConfig(num_envs=args.num_envs, n_steps=args.n_steps, groups=args.groups)
    times: dict[str, list[float]] = {"plain": [], "leap": []}
    cpu: dict[str, list[float]] = {"plain": [], "leap": []}
    with torch_threads(args.threads) as threads:
        host = machine()
        _one_run(args, cfg, leap=False)                                   # warm-up: imports, allocator
        for r in range(args.rounds):
            # alternate which goes first, so a drift in background load favours neither
            order = ("plain", "leap") if r % 2 == 0 else ("leap", "plain")
            for name in order:
                wall, busy = _one_run(args, cfg, leap=name == "leap")
                times[name].append(wall)
                cpu[name].append(busy)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio, cpu_ratio = med["leap"] / med["plain"], med_cpu["leap"] / med_cpu["plain"]
    for name in ("plain", "leap"):
        spread = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:>6}: {med[name]:.2f} s wall, {med_cpu[name]:.2f} s CPU per {args.steps} env steps"
              f"  (wall rounds: {spread})")
    print(f" ratio: {ratio:.3f} wall, {cpu_ratio:.3f} CPU (leap / plain; p=2, encoder only, loss {args.loss})")
    return {"machine": host, "game": args.game, "steps": args.steps, "rounds": args.rounds,
            "threads": threads, "leap_loss": args.loss, "plain_s": round(med["plain"], 3),
            "leap_s": round(med["leap"], 3), "ratio": round(ratio, 4), "plain_cpu_s": round(med_cpu["plain"], 3),
            "leap_cpu_s": round(med_cpu["leap"], 3), "cpu_ratio": round(cpu_ratio, 4)}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])))
