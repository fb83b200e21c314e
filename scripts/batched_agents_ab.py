"""A/B of the batched Atari agents' speed between two commits (docs/RESULTS.md, issue 30's CPU section): K agents
(agents/batched_a2c.py ``train_agents``, the bench's 8 games, 16 envs each, default A2CConfig) trained for
``--steps`` env steps each per round after a warm-up; prints one JSON line with each round's per-agent env steps/s
and the commit of the tree it ran from. Run it from each tree in turn, alternating, on free cores:

    git worktree add /tmp/before COMMIT
    for i in 1 2; do for tree in /tmp/before .; do
        (cd $tree && GOMP_SPINCOUNT=3000 PYTHONPATH=. /path/to/.venv/bin/python /path/to/scripts/batched_agents_ab.py)
    done; done
"""

import argparse
import json
import subprocess

import torch

from agents.a2c import A2CConfig, make_optimizer
from agents.batched_a2c import BatchedActorCritic, train_agents
from agents.nets import ActorCritic
from envs.atari import make_atari
from train.runtime import keep_freed_memory

GAMES = "Pong,Breakout,Qbert,BeamRider,AirRaid,Atlantis,DemonAttack,Freeway"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", default=GAMES)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    keep_freed_memory()                     # as the metarl command runs
    games = args.games.split(",")
    cfg = A2CConfig(num_envs=16, n_steps=5)
    envs = [make_atari(g, cfg.num_envs, 1000 * k, backend="envpool", observation="gray4") for k, g in enumerate(games)]
    models = [ActorCritic(e.num_actions, in_channels=e.observation_shape[0], generator=torch.Generator().manual_seed(k))
              for k, e in enumerate(envs)]
    gens = [torch.Generator().manual_seed(k) for k in range(len(envs))]
    model = BatchedActorCritic(models)
    optimizer = make_optimizer(model.parameters(), cfg)

    def sps(steps: int) -> float:
        return train_agents(envs, model, optimizer, steps, cfg, gens, optimizer_points=1)[0].sps
    sps(4 * cfg.batch_size)                                                 # warm-up
    rounds = [round(sps(args.steps), 1) for _ in range(args.rounds)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({"commit": commit, "agents": len(games), "steps": args.steps, "each_agent_sps_rounds": rounds}))


if __name__ == "__main__":
    main()
