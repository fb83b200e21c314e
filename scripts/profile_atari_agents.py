"""Where an A2C update's time goes: ``torch.profiler`` over one agent alone or K batched agents (the a2c-throughput
bench's 8 games, 16 envs each, default A2CConfig), after a warm-up; prints the operators by self CPU time with their
input shapes (docs/RESULTS.md, issue 30's CPU section). Run on free cores, through ``GOMP_SPINCOUNT=3000`` as the
``metarl`` command sets it:

    GOMP_SPINCOUNT=3000 PYTHONPATH=. .venv/bin/python scripts/profile_atari_agents.py batched --steps 1600
    GOMP_SPINCOUNT=3000 PYTHONPATH=. .venv/bin/python scripts/profile_atari_agents.py single --steps 4000
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from agents.a2c import A2CConfig, make_optimizer, train_agent
from agents.batched_a2c import BatchedActorCritic, train_agents
from agents.nets import ActorCritic
from envs.atari import make_atari
from train.runtime import keep_freed_memory

GAMES = "Pong,Breakout,Qbert,BeamRider,AirRaid,Atlantis,DemonAttack,Freeway"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("single", "batched"))
    ap.add_argument("--games", default=GAMES)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    keep_freed_memory()
    games = args.games.split(",")[: 1 if args.mode == "single" else None]
    cfg = A2CConfig(num_envs=16, n_steps=5)
    envs = [make_atari(g, cfg.num_envs, 1000 * k, backend="envpool", observation="gray4") for k, g in enumerate(games)]
    models = [ActorCritic(e.num_actions, in_channels=e.observation_shape[0], generator=torch.Generator().manual_seed(k))
              for k, e in enumerate(envs)]
    gens = [torch.Generator().manual_seed(k) for k in range(len(envs))]
    if args.mode == "single":
        optimizer = make_optimizer(models[0].parameters(), cfg)

        def run(steps: int) -> float:
            return train_agent(envs[0], models[0], optimizer, steps, cfg=cfg, generator=gens[0], optimizer_points=1).sps
    else:
        model = BatchedActorCritic(models)
        optimizer = make_optimizer(model.parameters(), cfg)

        def run(steps: int) -> float:
            return train_agents(envs, model, optimizer, steps, cfg, gens, optimizer_points=1)[0].sps
    run(4 * cfg.batch_size)                                                  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        sps = run(args.steps)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                              max_name_column_width=30, max_shapes_column_width=100))
    print(f"{args.mode}: {sps:.1f} env steps/s per agent (under the profiler)")


if __name__ == "__main__":
    main()
