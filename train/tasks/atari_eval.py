"""Held-out Atari evaluation: every held-out game is trained from the meta-learned initialisation and from a
random initialisation, over several seeds, with the same A2C settings and the same seeds for both.

Outputs in the run directory:
- TensorBoard ``eval/<game>/<init>/episodic_return`` (mean over seeds of the running mean of the last
  ``window`` finished games, on a grid of env steps) and ``…/episodic_return_std``;
- ``eval_atari.png``: mean ± std per game, both initialisations;
- ``eval_atari.json`` and ``eval_atari.md``: per game and initialisation, the normalised AUC and the final
  score (mean ± std over seeds).

Normalisation: per game, the two mean curves are mapped to [0, 1] by the lowest and highest point either
reaches, and the normalised AUC is the mean of that curve over the horizon. It compares the two
initialisations on one game; it is not a human-normalised score. The final score is the mean true game
score (raw reward over whole games) of the last ``eval_games`` games of each seed's run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..seeding import FIXED, step_generators

INITS = ("meta_init", "random_init")


def running_curve(steps: np.ndarray, returns: np.ndarray, grid: np.ndarray, window: int) -> np.ndarray:
    """At each grid step, the mean return of the last ``window`` games finished by then (NaN before any)."""
    out = np.full(len(grid), np.nan)
    for i, g in enumerate(grid):
        done = returns[steps <= g]
        if len(done):
            out[i] = done[-window:].mean()
    return out


def evaluate_atari(cfg: Any, adapter: Any, meta: Any, run_dir: Path, step: int, logger: Any = None,
                   points: int = 50, window: int = 10) -> dict[str, Any]:
    """Run the protocol with ``adapter`` (an :class:`~train.tasks.atari.AtariAdapter`: ``games``, ``game``,
    ``make_model``, ``make_optimizer``, ``adapt``, ``drain_games``, ``evaluate``) and write the outputs."""
    games = adapter.games[cfg.eval.split] or adapter.games["test"]
    seeds = cfg.eval.tasks
    horizon = cfg.eval.steps or cfg.inner.steps
    grid = np.linspace(horizon / points, horizon, points)
    curves: dict[tuple[str, str], np.ndarray] = {}
    finals: dict[tuple[str, str], list[float]] = {}
    for game in games:
        for init in INITS:
            per_seed, final = [], []
            for seed in range(seeds):
                # The same env seed and the same head draw for both initialisations of a (game, seed).
                rng, generator = step_generators(cfg.seed, FIXED, 1000 + seed)
                task = adapter.game(game, int(rng.integers(2**31 - 1)))
                model = adapter.make_model(generator, task)
                if init == "meta_init":
                    meta.load_init(model, skip=tuple(adapter.head))
                optimizer = adapter.make_optimizer(model, meta.task_parameters(model), cfg.inner)
                adapter.drain_games()
                start = adapter.global_step
                adapter.adapt(task, model, optimizer, horizon)
                played = adapter.drain_games()
                s = np.array([g.global_step - start for g in played], dtype=np.float64)
                r = np.array([g.episodic_return for g in played], dtype=np.float64)
                per_seed.append(running_curve(s, r, grid, window))
                final.append(adapter.evaluate(task, model)["score"])
            stacked = np.stack(per_seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                curves[(game, init)] = np.stack([np.nanmean(stacked, 0), np.nanstd(stacked, 0)])
            finals[(game, init)] = final
    with warnings.catch_warnings():      # games with no finished episode yet give all-NaN slices
        warnings.simplefilter("ignore", RuntimeWarning)
        table = summarise(games, curves, finals)
    write_outputs(run_dir, games, grid, curves, table, logger)
    return {"step": step, "horizon_env_steps": horizon, "seeds": seeds, "games": table}


def summarise(games: list[str], curves: dict, finals: dict) -> dict[str, dict[str, dict[str, float]]]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for game in games:
        both = np.concatenate([curves[(game, i)][0] for i in INITS])
        lo, hi = (np.nanmin(both), np.nanmax(both)) if np.isfinite(both).any() else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        table[game] = {}
        for init in INITS:
            mean = curves[(game, init)][0]
            final = np.asarray(finals[(game, init)], dtype=np.float64)
            table[game][init] = {
                "normalised_auc": float(np.nanmean((mean - lo) / span)) if np.isfinite(mean).any() else float("nan"),
                "final_score": float(np.nanmean(final)), "final_score_std": float(np.nanstd(final))}
    return table


def write_outputs(run_dir: Path, games: list[str], grid: np.ndarray, curves: dict, table: dict, logger: Any) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if logger is not None:
        for (game, init), (mean, std) in curves.items():
            for x, m, s in zip(grid, mean, std):
                if np.isfinite(m):
                    logger.scalars({f"eval/{game}/{init}/episodic_return": float(m),
                                    f"eval/{game}/{init}/episodic_return_std": float(s)}, int(x))
    fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 3.8), squeeze=False)
    for ax, game in zip(axes[0], games):
        for init in INITS:
            mean, std = curves[(game, init)]
            ax.plot(grid, mean, label=init.replace("_", " "))
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        ax.set_title(game)
        ax.set_xlabel("env steps")
        ax.set_ylabel("episodic return (true score)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "eval_atari.png", dpi=110)
    plt.close(fig)
    lines = ["| game | init | normalised AUC | final score (mean ± std over seeds) |", "|---|---|---|---|"]
    for game, rows in table.items():
        for init, r in rows.items():
            lines.append(f"| {game} | {init.replace('_', ' ')} | {r['normalised_auc']:.3f} | "
                         f"{r['final_score']:.1f} ± {r['final_score_std']:.1f} |")
    (run_dir / "eval_atari.md").write_text("\n".join(lines) + "\n")
    (run_dir / "eval_atari.json").write_text(json.dumps(table, indent=2))
