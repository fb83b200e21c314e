"""Warp-RNN on the Miconi maze in one file: continual WarpGrad meta-training (Algorithm 3) of the warps of one
never-reset recurrent A2C agent, then a summary of its return curve.

    python examples/warp_rnn_maze.py                   # Warp-RNN, the defaults below
    python examples/warp_rnn_maze.py --model rnn       # the plain RNN it warps, no meta-learner (the baseline)

Read top to bottom: the parameters split into θ (the tanh cell and the heads, stepped by Adam at every task
step) and φ (the warp: an LSTM whose gates multiply every factor of the cell, WarpGrad App. I, Eq. 16;
docs/warpgrad.md §9); the task loop reports each step's loss to the optimiser-step seam, where the
meta-learner takes that same loss's gradient with respect to φ (the "same loss" objective, a first-order
reading of Eq. 8; metarl/continual.py); every ``--every`` task steps φ takes one Adam step with the window's
mean warp gradient. The trainer (``metarl train configs/maze_warp_rnn.yaml``) runs the same loop with logging
and checkpoints.

Each task step is a batch of mazes (a new goal in each) played for one episode. The defaults run 40 windows ×
30 steps × 30 mazes = 36,000 episodes, where Warp-RNN's return has left the random policy's ≈ 5.4 in the
10-seed runs of docs/RESULTS.md ("Maze"); as a rough guide, a few minutes on one free CPU core.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss
from agents.recurrent import RecurrentConfig, build_model
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch
from metarl import NULL_WATCH, MetaOptimizerConfig
from metarl.continual import ContinualWarpConfig, ContinualWarpGrad, continual_update


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["warp-rnn", "rnn"], default="warp-rnn")
    p.add_argument("--windows", type=int, default=40, help="meta-steps (φ steps), one after every window")
    p.add_argument("--every", type=int, default=30, help="task steps per window (η)")
    p.add_argument("--mazes", type=int, default=30, help="mazes (episodes) per task step")
    p.add_argument("--episode-length", type=int, default=200)
    p.add_argument("--hidden", type=int, default=100, help="recurrent units (and the warp LSTM's)")
    p.add_argument("--lines", type=int, default=10, help="points of the printed return curve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    for key in ("windows", "every", "mazes", "episode_length", "hidden", "lines"):
        if getattr(args, key) < 1:
            p.exit(2, f"error: --{key.replace('_', '-')} must be >= 1\n")     # bad input: one line, exit code 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                  # the recurrent models draw their weights from torch's generator
    model = build_model(args.model, RecurrentConfig(hidden_size=args.hidden, warp_hidden_size=args.hidden))
    meta = None
    if args.model == "warp-rnn":
        # φ = the parameters under ``warp.``; θ = everything else. Adam 1e-3 for both, as the paper (App. I).
        meta = ContinualWarpGrad(model, ContinualWarpConfig(objective="same_loss"), include=["warp."],
                                 meta_optimizer=MetaOptimizerConfig(name="adam", lr=1e-3))
        meta.prepare(model)                       # the model's φ *is* the meta-parameter: meta-steps move it
    task_params = meta.task_parameters(model) if meta is not None else list(model.parameters())
    optimizer = torch.optim.Adam(task_params, lr=1e-3)          # θ only: φ stays fixed within a window
    mazes = MazeBatch(args.mazes, MazeConfig(episode_length=args.episode_length), seed=args.seed)
    sampler = torch.Generator().manual_seed(args.seed)          # the action noise: a stream of its own
    loss_config = MazeA2CConfig()                               # γ 0.9, value 0.1, Σπ² 0.03 (docs/protocols.md §4)
    params = list(model.parameters())
    returns: list[float] = []                                   # mean episode return of every task step

    with (meta.watch(model, optimizer) if meta is not None else NULL_WATCH) as watch:
        for window in range(1, args.windows + 1):
            for _ in range(args.every):
                episodes = rollout(model, mazes, generator=sampler)     # one episode in each maze, with autograd
                loss = rollout_loss(episodes, loss_config).total
                # backward; watch.report(loss); optimizer.step(), the seam: before the step the meta-learner
                # adds g_φ = ∇_φ L(θ_i; φ) of this backward to the window's sum (and clears φ.grad). A loss or
                # gradient that is not finite skips the step (nothing is added).
                continual_update(loss, optimizer, watch, params)
                returns.append(episodes.mean_return)
            # Algorithm 3: every η task steps, φ ← Adam(φ, mean of the window's g_φ); θ is never reset
            logs = meta.meta_step() if meta is not None else {}
            if window % max(1, args.windows // args.lines) == 0 or window == args.windows:
                print(f"window {window}/{args.windows}: episodes {window * args.every * args.mazes}, mean return "
                      f"{np.mean(returns[-args.every:]):.2f}"
                      + (f", warp grad norm {logs['meta/grad_norm']:.3g}" if "meta/grad_norm" in logs else ""),
                      flush=True)

    # the return curve in --lines equal parts of the run, then its last tenth
    curve = [float(np.mean(part)) for part in np.array_split(np.array(returns), min(args.lines, len(returns)))]
    print("return curve: " + " ".join(f"{r:.2f}" for r in curve))
    last = returns[-max(1, len(returns) // 10):]
    print(f"result {args.model}: mean return {np.mean(last):.2f} over the last {len(last) * args.mazes} episodes "
          f"(random policy ≈ 5.4)")


if __name__ == "__main__":
    main()
