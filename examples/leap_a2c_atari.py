"""Leap over A2C on Atari in one file: meta-learn an encoder initialisation θ⁰ on two games, then compare it
with a random encoder on a held-out game.

    python examples/leap_a2c_atari.py                                  # the defaults below
    python examples/leap_a2c_atari.py --games Seaquest Gopher --held-out KungFuMaster --seeds 5

Read top to bottom: (1) the optimiser-step seam — an ordinary A2C update tells Leap its loss with one call,
``watch.report(loss)``, and the optimiser's step hooks show Leap θ_i, the clipped g_i and θ_{i+1};
(2) ``train_agent`` — one visit to a game from θ⁰; (3) the Leap meta-step — θ⁰ pulled forward along the
visits' paths; (4) the held-out comparison — the same seeds, env streams and heads from both encoders.
Maths: docs/leap.md (§N below). The trainer (``metarl train configs/atari_leap.yaml``) runs the same loop
with logging, checkpoints and the full held-out protocol.

The defaults spend about 0.5M env steps (3 meta-steps × 2 visits × 30k, then 2 encoders × 3 seeds × 50k):
as a rough guide, 10 to 20 minutes on one free CPU core. At this size the comparison demonstrates the
machinery, not transfer: docs/RESULTS.md reports the transfer studies.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from agents.a2c import A2CConfig, RolloutCollector, a2c_loss, make_optimizer
from agents.nets import ActorCritic
from envs.atari import canonical_game, make_atari, num_actions
from metarl import NULL_WATCH, Leap, LeapConfig, MetaOptimizerConfig

HEADS = ("policy.", "value.")   # per-game heads (action sets differ): drawn fresh every visit, never meta-learned


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--games", nargs="+", default=["DemonAttack", "AirRaid"], help="meta-training games")
    p.add_argument("--held-out", default="Assault", help="the held-out game")
    p.add_argument("--meta-steps", type=int, default=3, help="meta-steps; each visits every training game once")
    p.add_argument("--visit-steps", type=int, default=30_000, help="env steps per meta-training game visit")
    p.add_argument("--eval-steps", type=int, default=50_000, help="env steps per held-out run")
    p.add_argument("--seeds", type=int, default=3, help="held-out runs per encoder")
    p.add_argument("--num-envs", type=int, default=16, help="parallel envs per agent")
    p.add_argument("--last-games", type=int, default=10, help="a run's score: mean true score of its last N games")
    p.add_argument("--max-game-steps", type=int, default=27_000, help="agent steps after which a game is cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    for key in ("meta_steps", "visit_steps", "eval_steps", "seeds", "num_envs", "last_games", "max_game_steps"):
        if getattr(args, key) < 1:
            p.exit(2, f"error: --{key.replace('_', '-')} must be >= 1\n")     # bad input: one line, exit code 2
    try:
        args.games, args.held_out = [canonical_game(g) for g in args.games], canonical_game(args.held_out)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    return args


def new_agent(game: str, seed: int) -> ActorCritic:
    """A Nature-CNN actor-critic drawn from ``seed``: the encoder first, then heads sized for ``game``, so one
    seed gives every game the same encoder draw and both held-out arms the same heads."""
    return ActorCritic(num_actions(game), generator=torch.Generator().manual_seed(seed))


# -- (1) the seam: one A2C update, observed by Leap ----------------------------------------------------------
def a2c_update(model: ActorCritic, optimizer: torch.optim.Optimizer, rollout, cfg: A2CConfig, watch) -> None:
    """One gradient step on a rollout (agents/a2c.py: the loss), its loss reported to the watch."""
    loss, _ = a2c_loss(model, rollout, cfg, model.num_actions)
    optimizer.zero_grad(set_to_none=True)      # freed gradients: Leap holds g_i by reference, no copy (§2)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    watch.report(loss)      # f(θ_i): the loss coordinate of γ^i = (θ^i, f(θ^i)) on the task manifold (§1)
    optimizer.step()        # pre-hook: θ_i, clipped g_i, f(θ_i); post-hook: θ_{i+1}. Leap closes segment i−1
    #                         now that f(θ_i) is known: δ = −(Δθ + Δf̃·g), p = 2 (§2; Δθ telescopes per visit)


# -- (2) one visit: A2C on one game from the model's current parameters -------------------------------------
def train_agent(game: str, model: ActorCritic, steps: int, seed: int, cfg: A2CConfig, max_game_steps: int,
                meta: Leap | None = None) -> list[float]:
    """A2C on ``game`` for ``steps`` env steps (whole updates), watched by ``meta`` when given; returns the true
    (raw, all-lives) scores of the games finished during the visit, in order."""
    envs = make_atari(game, cfg.num_envs, seed, train=True, max_episode_steps=max_game_steps)
    try:
        collector = RolloutCollector([envs], model, cfg.n_steps, torch.Generator().manual_seed(seed),
                                     keep_graph=True)      # the loss reuses the acting passes' trunk outputs
        optimizer = make_optimizer(model.parameters(), cfg)
        with (meta.watch(model, optimizer) if meta is not None else NULL_WATCH) as watch:
            for _ in range(max(1, steps // cfg.batch_size)):
                a2c_update(model, optimizer, collector.collect(), cfg, watch)
            # f(θ_K) from one more rollout without a step closes the last segment (§7, defect #1)
            collector.keep_graph = False
            with torch.no_grad():
                watch.finish(a2c_loss(model, collector.collect(), cfg, model.num_actions)[0])
    finally:
        envs.close()
    return [ep.episodic_return for ep in collector.episodes]


def score(games: list[float], last: int) -> float:
    """The Atari learning-curve convention: the mean true score of the run's last games (NaN if none ended)."""
    return float(np.mean(games[-last:])) if games else float("nan")


def mean_std(xs: list[float]) -> str:
    return f"{np.mean(xs):.1f} ± {np.std(xs, ddof=1) if len(xs) > 1 else float('nan'):.1f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # torch's RMSprop, not the TF1 form whose step ramps up over ~40k env steps (docs/RESULTS.md, second study)
    cfg = A2CConfig(num_envs=args.num_envs, optimizer="rmsprop")
    # Leap on the encoder only: energy metric, loss term and stabilizer on (§8). SGD with lr 1 and
    # step_fraction 0.25 moves θ⁰ by a quarter of the mean visit's ‖θᴷ − θ⁰‖ per meta-step (§8, "Sizing").
    meta = Leap(new_agent(args.games[0], args.seed), LeapConfig(p=2, loss=True, stabilizer=True),
                include=["encoder."], meta_optimizer=MetaOptimizerConfig(name="sgd", lr=1.0, step_fraction=0.25))
    start = [p.detach().clone() for p in meta.params]
    rng = np.random.default_rng(args.seed)

    # -- (3) meta-training: every meta-step visits each game from θ⁰, then pulls θ⁰ forward --------------------
    for step in range(1, args.meta_steps + 1):
        visits = []
        for game in args.games:
            seed = int(rng.integers(2**31 - 1))
            model = new_agent(game, seed)               # fresh heads for this game ...
            meta.load_init(model, skip=HEADS)           # ... on the encoder θ⁰
            games = train_agent(game, model, args.visit_steps, seed, cfg, args.max_game_steps, meta)
            visits.append(f"{game} {score(games, args.last_games):.1f}")
        # The paper's Algorithm 1: θ⁰ ← θ⁰ − β·mean_τ Σ_i δ_i over the visits (§4). Under p = 2 with the stabilizer
        # a visit's Σ_i δ_i = (θ⁰ − θᴷ) + Σ_i |Δf_i|·g_i (§2): its displacement plus its gradients, each weighted
        # by its step's loss change. Descending it pulls θ⁰ forward along the visits' paths.
        logs = meta.meta_step()
        print(f"meta-step {step}/{args.meta_steps}: visit scores {', '.join(visits)} | "
              f"visit ‖θᴷ−θ⁰‖ {logs.get('meta/visit_displacement', float('nan')):.3f}, meta-step ‖Δθ⁰‖ "
              f"{logs.get('meta/init_displacement', 0.0):.3f}", flush=True)
    with torch.no_grad():
        moved = float(torch.stack([(p - s).norm() for p, s in zip(meta.params, start)]).norm())
    print(f"theta0 moved {moved:.4f} (encoder, global norm)")

    # -- (4) held out: the same seeds (env streams, heads) from the meta-learned and from a random encoder ----
    results: dict[str, list[float]] = {"leap": [], "random": []}
    held_out_rng = np.random.default_rng([args.seed, 1])    # a stream of its own: not the meta-training draws
    for s in range(args.seeds):
        seed = int(held_out_rng.integers(2**31 - 1))
        for init in results:
            model = new_agent(args.held_out, seed)      # the random encoder is this draw's own
            if init == "leap":
                meta.load_init(model, skip=HEADS)
            games = train_agent(args.held_out, model, args.eval_steps, seed, cfg, args.max_game_steps)
            results[init].append(score(games, args.last_games))
            print(f"held-out {args.held_out} seed {s} {init} encoder: {results[init][-1]:.1f} "
                  f"({len(games)} games)", flush=True)
    for init, scores in results.items():
        print(f"result {args.held_out} {init} encoder: {mean_std(scores)} "
              f"(mean ± sample std over {len(scores)} seeds; score = mean of the last {args.last_games} games)")


if __name__ == "__main__":
    main()
