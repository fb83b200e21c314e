"""The Miconi maze as a task family: continual A2C training of one never-reset recurrent agent.

Protocol (protocols.md §4, warpgrad.md §9): one agent (Warp-RNN, plain RNN, LSTM, ...) with hidden size 100
is trained on batches of B = 30 mazes × T = 200 steps. Every iteration is one such batch of episodes (a new
goal per maze), one A2C loss (agents.maze_a2c) and one Adam step (lr 1e-3) on the task parameters; the agent
is never reset between iterations. For a model with warp parameters (Warp-RNN, Warp-LSTM) the warps are
meta-learned by WarpGrad's Algorithm 3 (``metarl.continual.ContinualWarp``, attached to the task optimiser
through the seam): warp gradients accumulate at every task step and the warps take an Adam step (lr 1e-3)
every ``warp_every`` = 30 iterations. Baselines (rnn, lstm, plastic-rnn) run the same loop with no warps.

Run length: ``episodes`` / ``batch`` iterations, rounded up (100 000 episodes → 3334 iterations of 30).

The generic meta-batch trainer does not fit a learner that is never reset, so this task family has a loop of
its own (:func:`run_maze`, reached through ``MazeAdapter.run`` from ``train.trainer.train``); the config's
``method`` field is ignored. ``run.checkpoint_every`` counts iterations here.

Logged (TensorBoard, x-axis = task episodes so far): ``charts/episodic_return`` (mean return of the batch's
episodes, averaged over the ``log_every`` iterations since the last point), ``charts/episodic_length``,
``charts/SPS`` (task-batch environment steps per second), ``losses/{loss,policy_loss,value_loss,prob_sq_loss}``,
``losses/skipped_steps`` (iterations whose loss or task gradient was non-finite), and at every warp step
``meta/warp_grad_norm``, ``meta/warp_steps``, ``meta/warp_contributions``, ``meta/skipped_contributions``;
with ``warp_objective: meta_batch`` also ``meta/meta_batch_return`` (the extra rollout's episodes are not
counted on the x-axis: that objective sees twice the task episodes).

Seeding: ``cfg.seed`` seeds Python, NumPy and torch (the model's initialisation); the task mazes, the task
action sampler, the meta-batch mazes and the meta-batch action sampler each get their own stream derived
from it, so ``same_loss`` and ``meta_batch`` runs of one seed see the same task-maze goals.
Checkpoints (every ``run.checkpoint_every`` iterations and at the end) hold the model, both optimisers, the
warp observer's state, the mazes' NumPy generator states (as int64 tensors), the samplers' torch generator
states, the per-episode returns so far and the counters: a resumed run continues exactly.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss
from agents.recurrent import MODELS, RecurrentConfig, build_model
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch
from metarl.base import MetaOptimizerConfig
from metarl.continual import WARP_OBJECTIVES, ContinualWarp, ContinualWarpConfig, continual_update
from metarl.seam import NULL_WATCH

from ..checkpoint import load_latest, save_checkpoint

LOSS_KEYS = ("loss", "policy_loss", "value_loss", "prob_sq_loss")


@dataclass
class MazeTaskConfig:
    model: str = "warp-rnn"             # rnn | lstm | warp-rnn | warp-lstm | plastic-rnn
    hidden_size: int = 100
    warp_hidden_size: int = 100         # adaptation LSTM of the warp models
    batch: int = 30                     # mazes (episodes) per iteration
    episode_length: int = 200           # T
    maze_size: int = 13
    episodes: int = 100_000             # task episodes in total → ceil(episodes / batch) iterations
    wall_penalty: float = 0.0
    gamma: float = 0.9
    value_coef: float = 0.1
    prob_sq_coef: float = 0.03          # weight of the Σ_a π² penalty
    value_baseline: str = "per_element"  # per_element | element0 (the original codes' quirk)
    task_lr: float = 1e-3               # Adam on the task parameters, every iteration
    warp_lr: float = 1e-3               # Adam on the warp parameters, every warp_every iterations
    warp_every: int = 30                # η
    warp_objective: str = "same_loss"   # same_loss (original code) | meta_batch (Eq. 8, a second batch)
    burn_in: int = 0                    # first iterations without any update (original code: 100)
    fused: bool = True                  # Warp-RNN's fused training unroll
    log_every: int = 1                  # iterations per logged point
    final_window: int = 5000            # episodes averaged for the returned figure (the last ones)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {self.model!r}")
        if self.warp_objective not in WARP_OBJECTIVES:
            raise ValueError(f"warp_objective must be one of {', '.join(WARP_OBJECTIVES)}, "
                             f"got {self.warp_objective!r}")
        if self.value_baseline not in ("per_element", "element0"):
            raise ValueError(f"value_baseline must be per_element or element0, got {self.value_baseline!r}")
        for key in ("hidden_size", "warp_hidden_size", "batch", "episode_length", "episodes", "warp_every",
                    "log_every", "final_window"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("wall_penalty", "gamma", "value_coef", "prob_sq_coef", "task_lr", "warp_lr", "burn_in"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.maze_size < 5 or self.maze_size % 2 == 0:
            raise ValueError(f"maze_size must be odd and >= 5, got {self.maze_size}")

    @property
    def iterations(self) -> int:
        return -(-self.episodes // self.batch)


# ------------------------------------------------------------------------------------------------
# RNG states as tensors


def numpy_rng_state(rng: np.random.Generator) -> torch.Tensor:
    """A PCG64 Generator's state as int64 [state (4 × 32-bit limbs), inc (4 limbs), has_uint32, uinteger]."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators are checkpointed, got {st['bit_generator']}")
    limbs = [(st["state"][k] >> (32 * i)) & 0xFFFFFFFF for k in ("state", "inc") for i in range(4)]
    return torch.tensor([*limbs, st["has_uint32"], st["uinteger"]], dtype=torch.int64)


def set_numpy_rng_state(rng: np.random.Generator, t: torch.Tensor) -> None:
    v = [int(x) for x in t.tolist()]
    join = lambda xs: sum(x << (32 * i) for i, x in enumerate(xs))  # noqa: E731
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": join(v[0:4]), "inc": join(v[4:8])},
                               "has_uint32": v[8], "uinteger": v[9]}


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ------------------------------------------------------------------------------------------------
# the runner


class _Window:
    """Sums of the scalars logged every ``log_every`` iterations (checkpointed with the run)."""

    KEYS = ("iterations", "return", "skipped", *LOSS_KEYS, "seconds", "meta_return", "meta_rollouts")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.v = dict.fromkeys(self.KEYS, 0.0)

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.v[k] for k in self.KEYS], dtype=torch.float64)

    def load(self, t: torch.Tensor) -> None:
        self.v = dict(zip(self.KEYS, (float(x) for x in t)))


def _result(returns: torch.Tensor, done: int, mc: MazeTaskConfig, extra: dict[str, float]) -> dict[str, float]:
    flat = returns[:done].reshape(-1).double()
    last = flat[-mc.final_window:] if len(flat) else flat
    return {"return_last_mean": float(last.mean()) if len(last) else float("nan"),
            "return_last_std": float(last.std(unbiased=False)) if len(last) else float("nan"),
            "final_window_episodes": float(len(last)),
            "iterations": float(done), "episodes": float(done * mc.batch), **extra}


def run_maze(cfg: Any, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict[str, float]:
    """Train per ``cfg`` (its ``task_config`` a :class:`MazeTaskConfig`) in ``run_dir``; module docstring.

    ``stop_after`` ends this process after that many iterations (tests of resumption). Returns the mean
    and std of the last ``final_window`` episodes' returns (``return_last_mean`` / ``return_last_std``),
    the counters and the accumulated wall time; a finished run also writes them to ``result.json``."""
    from torch.utils.tensorboard import SummaryWriter

    from ..config import config_to_yaml

    mc: MazeTaskConfig = cfg.task_config
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)

    model = build_model(mc.model, RecurrentConfig(hidden_size=mc.hidden_size, warp_hidden_size=mc.warp_hidden_size))
    maze_config = MazeConfig(size=mc.maze_size, episode_length=mc.episode_length, wall_penalty=mc.wall_penalty)
    mazes = MazeBatch(mc.batch, maze_config, seed=_stream_seed(cfg.seed, 0))
    sampler = torch.Generator().manual_seed(_stream_seed(cfg.seed, 1))
    meta_mazes = MazeBatch(mc.batch, maze_config, seed=_stream_seed(cfg.seed, 2))
    meta_sampler = torch.Generator().manual_seed(_stream_seed(cfg.seed, 3))
    loss_config = MazeA2CConfig(gamma=mc.gamma, value_coef=mc.value_coef, prob_sq_coef=mc.prob_sq_coef,
                                value_baseline=mc.value_baseline)
    task_params = model.task_parameters()
    optimizer = torch.optim.Adam(task_params, lr=mc.task_lr)
    window = _Window()
    meta_logs: list[dict[str, float]] = []

    def meta_loss() -> torch.Tensor:
        batch = rollout(model, meta_mazes, generator=meta_sampler, fused=mc.fused)
        window.v["meta_return"] += batch.mean_return
        window.v["meta_rollouts"] += 1
        return rollout_loss(batch, loss_config).total

    warp = None
    if model.warp_parameters():
        warp = ContinualWarp(model.warp_parameters(),
                             ContinualWarpConfig(objective=mc.warp_objective, warp_every=mc.warp_every,
                                                 warp_optimizer=MetaOptimizerConfig(name="adam", lr=mc.warp_lr)),
                             meta_loss=meta_loss, on_meta_step=meta_logs.append)

    total = mc.iterations
    returns = torch.zeros(total, mc.batch, dtype=torch.float32)
    start, skipped, wall = 0, 0, 0.0
    loaded = load_latest(run_dir) if resume else None
    if loaded is not None:
        state = loaded[0]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["task_optimizer"])
        if warp is not None:
            warp.load_state_dict(state["warp"])
        set_numpy_rng_state(mazes.rng, state["maze_rng"])
        set_numpy_rng_state(meta_mazes.rng, state["meta_maze_rng"])
        sampler.set_state(state["sampler"])
        meta_sampler.set_state(state["meta_sampler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        returns[:start] = state["returns"][:start]
        skipped = int(state["counters"][0])
        wall = float(state["wall_time"])
        window.load(state["window"])

    def checkpoint(done: int) -> None:
        state = {"step": done, "model": model.state_dict(), "task_optimizer": optimizer.state_dict(),
                 "warp": warp.state_dict() if warp is not None else {},
                 "maze_rng": numpy_rng_state(mazes.rng), "meta_maze_rng": numpy_rng_state(meta_mazes.rng),
                 "sampler": sampler.get_state(), "meta_sampler": meta_sampler.get_state(),
                 "torch_rng": torch.get_rng_state(), "returns": returns[:done].clone(),
                 "counters": torch.tensor([skipped]), "wall_time": torch.tensor(wall, dtype=torch.float64),
                 "window": window.tensor()}
        save_checkpoint(run_dir, done, state, cfg.run.keep)

    def extra() -> dict[str, float]:
        return {"wall_time_s": wall, "skipped_steps": float(skipped),
                "warp_steps": float(warp.warp_steps if warp is not None else 0),
                "skipped_warp_contributions": float(warp.skipped if warp is not None else 0)}

    if start >= total:         # resumed a finished run
        result = _result(returns, start, mc, extra())
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        return result

    writer = SummaryWriter(str(run_dir), purge_step=start * mc.batch + 1 if loaded is not None else None)
    bar = None
    if cfg.run.progress:
        from tqdm import tqdm
        print(f"run directory: {run_dir}", file=sys.stderr)
        bar = tqdm(initial=start, total=total, desc=cfg.name, unit="it", dynamic_ncols=True)
    watch_cm = warp.watch(optimizer, task_params) if warp is not None else NULL_WATCH
    all_params = list(model.parameters())
    it = start
    try:
        with watch_cm as watch:
            while it < total and (stop_after is None or it - start < stop_after):
                t0 = time.perf_counter()
                burning_in = it < mc.burn_in
                with torch.set_grad_enabled(not burning_in):
                    batch = rollout(model, mazes, generator=sampler, fused=mc.fused)
                    loss = rollout_loss(batch, loss_config)
                outcome = continual_update(loss.total, optimizer, watch, all_params, burning_in)
                skipped += outcome == "non_finite"
                returns[it] = torch.from_numpy(batch.episode_returns.astype(np.float32))
                seconds = time.perf_counter() - t0
                wall += seconds
                it += 1
                episodes = it * mc.batch
                w = window.v
                w["iterations"] += 1
                w["return"] += batch.mean_return
                w["skipped"] += outcome == "non_finite"
                w["seconds"] += seconds
                for k, v in zip(LOSS_KEYS, (loss.total, loss.policy, loss.value, loss.prob_sq)):
                    w[k] += float(v.detach())
                for logs in meta_logs:
                    for k, v in logs.items():
                        writer.add_scalar(k, v, episodes)
                meta_logs.clear()
                if it % mc.log_every == 0 or it == total:
                    n = w["iterations"]
                    writer.add_scalar("charts/episodic_return", w["return"] / n, episodes)
                    writer.add_scalar("charts/episodic_length", float(mc.episode_length), episodes)
                    writer.add_scalar("charts/SPS", n * mc.batch * mc.episode_length / max(w["seconds"], 1e-9),
                                      episodes)
                    for k in LOSS_KEYS:
                        writer.add_scalar(f"losses/{k}", w[k] / n, episodes)
                    writer.add_scalar("losses/skipped_steps", float(skipped), episodes)
                    if w["meta_rollouts"]:
                        writer.add_scalar("meta/meta_batch_return", w["meta_return"] / w["meta_rollouts"], episodes)
                    if bar is not None:
                        bar.set_postfix(ret=f"{w['return'] / n:.1f}", refresh=False)
                    window.reset()
                if bar is not None:
                    bar.update(1)
                every = cfg.run.checkpoint_every
                if (every and it % every == 0) or it == total:
                    checkpoint(it)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    result = _result(returns, it, mc, extra())
    if it >= total:
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


class MazeAdapter:
    """Registry entry of the maze task family. It has a loop of its own: ``train.trainer.train`` calls
    ``run`` instead of the meta-batch loop."""

    head = ("policy_head.", "value_head.")
    splits = ("train",)

    def __init__(self, config: MazeTaskConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed

    def run(self, cfg: Any, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict[str, float]:
        return run_maze(cfg, run_dir, resume=resume, stop_after=stop_after)


# ------------------------------------------------------------------------------------------------
# results table: python -m train.tasks.maze table RUN_DIR ...


def results_table(run_dirs: list[Path]) -> str:
    """Markdown table over finished runs (``result.json``), grouped by the run-directory name before
    ``__`` (the config name): mean over seeds of each run's last-window mean return, the std across seeds,
    the per-seed values and the training wall time per run (minutes, summed over resumes)."""
    groups: dict[str, list[dict[str, float]]] = {}
    for d in run_dirs:
        path = Path(d) / "result.json"
        if path.is_file():
            groups.setdefault(Path(d).name.split("__")[0], []).append(json.loads(path.read_text()))
    lines = ["| run | seeds | return, last episodes: mean ± std over seeds | per seed | wall time per run (min) |",
             "|---|---|---|---|---|"]
    for name, rows in sorted(groups.items()):
        means = np.array([r["return_last_mean"] for r in rows])
        per_seed = ", ".join(f"{m:.1f}" for m in means)
        minutes = ", ".join(f"{r['wall_time_s'] / 60:.1f}" for r in rows)
        lines.append(f"| {name} | {len(rows)} | {means.mean():.1f} ± {means.std():.1f} | {per_seed} | {minutes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m train.tasks.maze")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="markdown table of finished maze runs")
    t.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print(results_table(args.run_dirs))
