"""The Miconi maze as a task family: continual A2C training of one never-reset recurrent agent.

Protocol (docs/protocols.md §4, docs/warpgrad.md §9): one agent (Warp-RNN, plain RNN, LSTM, ...) with hidden
size 100 is trained on batches of B = 30 mazes × T = 200 steps. Every task step is one such batch of episodes
(a new goal per maze), one A2C loss (agents.maze_a2c) and one Adam step (lr 1e-3) on the task parameters; the
agent is never reset. The maze runs through the trainer's continual mode (``meta.every`` > 0, WarpGrad's
Algorithm 3): the whole run is one task, adapted ``meta.every`` task steps at a time, with a meta-step after
each window. With ``method: warpgrad_continual`` (metarl.continual) that meta-step moves the warps φ
(``meta.include: [warp.]``; Adam 1e-3 every 30 task steps); the baselines (rnn, lstm, plastic-rnn) run
``method: no_pretraining``, whose meta-step does nothing. Run length: ``meta.steps`` × ``meta.every`` task
steps (112 × 30 = 3,360 iterations ≈ 100k episodes).

Logged on the episode axis (the run's ``games/`` TensorBoard run, x = task episodes so far), every
``log_every`` iterations: ``charts/episodic_return`` (mean return of the window's episodes),
``charts/episodic_length``, ``charts/SPS``, ``losses/{loss,policy_loss,value_loss,prob_sq_loss}``,
``losses/skipped_steps`` (iterations whose loss or task gradient was non-finite) and, with the meta-batch warp
objective, ``meta/meta_batch_return``. The meta-steps' ``meta/*`` go on the meta-step axis.

Seeding: the trainer seeds torch with ``seed`` before it builds the agent (the recurrent models draw their
initialisation from torch's global generator); the task mazes, the task action sampler, the meta-batch mazes
and the meta-batch action sampler each get their own stream derived from ``seed``, so ``same_loss`` and
``meta_batch`` runs of one seed see the same task-maze goals. ``state_dict`` holds the mazes' NumPy generator
states (as int64 tensors), the samplers' states, the per-episode returns so far, the log window and the
counters; the trainer adds the agent and its optimiser: a resumed run continues exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss
from agents.recurrent import MODELS, RecurrentConfig, build_model
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch
from metarl.continual import continual_update
from metarl.seam import NULL_WATCH

from .base import TaskAdapter

LOSS_KEYS = ("loss", "policy_loss", "value_loss", "prob_sq_loss")


@dataclass
class MazeTaskConfig:
    model: str = "warp-rnn"             # rnn | lstm | warp-rnn | warp-lstm | plastic-rnn
    hidden_size: int = 100
    warp_hidden_size: int = 100         # adaptation LSTM of the warp models
    batch: int = 30                     # mazes (episodes) per iteration
    episode_length: int = 200           # T
    maze_size: int = 13
    wall_penalty: float = 0.0
    gamma: float = 0.9
    value_coef: float = 0.1
    prob_sq_coef: float = 0.03          # weight of the Σ_a π² penalty
    value_baseline: str = "per_element"  # per_element | element0 (the original codes' quirk)
    task_lr: float = 1e-3               # Adam on the task parameters, every iteration
    burn_in: int = 0                    # first iterations without any update (original code: 100)
    fused: bool = True                  # Warp-RNN's fused training unroll
    log_every: int = 1                  # iterations per logged point
    final_window: int = 5000            # episodes averaged for the returned figure (the last ones)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {self.model!r}")
        if self.value_baseline not in ("per_element", "element0"):
            raise ValueError(f"value_baseline must be per_element or element0, got {self.value_baseline!r}")
        for key in ("hidden_size", "warp_hidden_size", "batch", "episode_length", "log_every", "final_window"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("wall_penalty", "gamma", "value_coef", "prob_sq_coef", "task_lr", "burn_in"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.maze_size < 5 or self.maze_size % 2 == 0:
            raise ValueError(f"maze_size must be odd and >= 5, got {self.maze_size}")


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
# the task family


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


class MazeStream:
    """The one task of the family: an endless stream of maze batches. Rollouts are on-policy, so a batch
    is only a split name and ``loss`` draws the episodes: "train" from the task mazes, "query" (the
    meta-batch warp objective, Eq. 8) from a second, independent set of mazes."""

    key = "maze"

    def __init__(self, adapter: "MazeAdapter") -> None:
        self.adapter = adapter

    def batch(self, split: str) -> str:
        return split

    def loss(self, model: nn.Module, batch: str) -> torch.Tensor:
        a = self.adapter
        if batch == "query":
            episodes = rollout(model, a.meta_mazes, generator=a.meta_sampler, fused=a.config.fused)
            a.window.v["meta_return"] += episodes.mean_return
            a.window.v["meta_rollouts"] += 1
        else:
            episodes = rollout(model, a.mazes, generator=a.sampler, fused=a.config.fused)
        return rollout_loss(episodes, a.loss_config).total


class MazeAdapter(TaskAdapter):
    """The never-reset maze learner (module docstring). Runs in the trainer's continual mode only."""

    head = ("policy_head.", "value_head.")
    splits = ("train",)
    periodic_evaluation = False        # the result is the training curve itself
    continual_only = True

    def __init__(self, config: MazeTaskConfig, seed: int = 0) -> None:
        super().__init__(config, seed)
        mc = config
        maze_config = MazeConfig(size=mc.maze_size, episode_length=mc.episode_length, wall_penalty=mc.wall_penalty)
        self.mazes = MazeBatch(mc.batch, maze_config, seed=_stream_seed(seed, 0))
        self.sampler = torch.Generator().manual_seed(_stream_seed(seed, 1))
        self.meta_mazes = MazeBatch(mc.batch, maze_config, seed=_stream_seed(seed, 2))
        self.meta_sampler = torch.Generator().manual_seed(_stream_seed(seed, 3))
        self.loss_config = MazeA2CConfig(gamma=mc.gamma, value_coef=mc.value_coef, prob_sq_coef=mc.prob_sq_coef,
                                         value_baseline=mc.value_baseline)
        self.window = _Window()
        self.returns: list[torch.Tensor] = []     # per iteration: the B episodes' returns
        self.skipped = 0
        self.wall = 0.0
        self._logs: list[tuple[int, dict[str, float]]] = []

    @property
    def global_step(self) -> int:                 # task episodes so far: the x-axis of the curves
        return len(self.returns) * self.config.batch

    def make_model(self, generator: torch.Generator, task: Any = None) -> nn.Module:
        """The agent; its initialisation comes from torch's global generator, seeded by the trainer."""
        mc = self.config
        return build_model(mc.model, RecurrentConfig(hidden_size=mc.hidden_size, warp_hidden_size=mc.warp_hidden_size))

    def make_optimizer(self, model: nn.Module, params, inner: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.config.task_lr)

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[MazeStream]:
        return [MazeStream(self) for _ in range(n)]

    def adapt(self, task: MazeStream, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
        """``steps`` more iterations of the never-reset learner; returns their losses (no final point: the
        task does not end)."""
        mc = self.config
        all_params = list(model.parameters())
        curve = []
        for _ in range(steps):
            t0 = time.perf_counter()
            burning_in = len(self.returns) < mc.burn_in
            with torch.set_grad_enabled(not burning_in):
                episodes = rollout(model, self.mazes, generator=self.sampler, fused=mc.fused)
                loss = rollout_loss(episodes, self.loss_config)
            outcome = continual_update(loss.total, optimizer, watch, all_params, burning_in)
            self.skipped += outcome == "non_finite"
            self.returns.append(torch.from_numpy(episodes.episode_returns.astype(np.float32)))
            seconds = time.perf_counter() - t0
            self.wall += seconds
            curve.append(float(loss.total.detach()))
            self._record(episodes.mean_return, loss, outcome == "non_finite", seconds)
        return curve

    def _record(self, mean_return: float, loss: Any, skipped: bool, seconds: float) -> None:
        mc, w = self.config, self.window.v
        w["iterations"] += 1
        w["return"] += mean_return
        w["skipped"] += skipped
        w["seconds"] += seconds
        for k, v in zip(LOSS_KEYS, (loss.total, loss.policy, loss.value, loss.prob_sq)):
            w[k] += float(v.detach())
        if len(self.returns) % mc.log_every:
            return
        n = w["iterations"]
        logs = {"charts/episodic_return": w["return"] / n, "charts/episodic_length": float(mc.episode_length),
                "charts/SPS": n * mc.batch * mc.episode_length / max(w["seconds"], 1e-9),
                **{f"losses/{k}": w[k] / n for k in LOSS_KEYS}, "losses/skipped_steps": float(self.skipped)}
        if w["meta_rollouts"]:
            logs["meta/meta_batch_return"] = w["meta_return"] / w["meta_rollouts"]
        self._logs.append((self.global_step, logs))
        self.window.reset()

    def drain_logs(self) -> list[tuple[int, dict[str, float]]]:
        out, self._logs = self._logs, []
        return out

    def evaluate(self, task: Any, model: nn.Module) -> dict[str, float]:
        return self.result()

    def evaluate_run(self, cfg: Any, meta: Any, run_dir: Path, step: int, logger: Any = None) -> dict:
        return self.result()

    def result(self) -> dict[str, float]:
        """Mean and std of the last ``final_window`` episodes' returns, the counters and the wall time."""
        mc = self.config
        flat = torch.stack(self.returns).reshape(-1).double() if self.returns else torch.zeros(0, dtype=torch.float64)
        last = flat[-mc.final_window:]
        return {"return_last_mean": float(last.mean()) if len(last) else float("nan"),
                "return_last_std": float(last.std(unbiased=False)) if len(last) else float("nan"),
                "final_window_episodes": float(len(last)), "iterations": float(len(self.returns)),
                "episodes": float(self.global_step), "wall_time_s": self.wall, "skipped_steps": float(self.skipped)}

    def state_dict(self) -> dict[str, Any]:
        return {"maze_rng": numpy_rng_state(self.mazes.rng), "meta_maze_rng": numpy_rng_state(self.meta_mazes.rng),
                "sampler": self.sampler.get_state(), "meta_sampler": self.meta_sampler.get_state(),
                "returns": torch.stack(self.returns) if self.returns else torch.zeros(0, self.config.batch),
                "counters": torch.tensor([self.skipped]), "wall_time": torch.tensor(self.wall, dtype=torch.float64),
                "window": self.window.tensor()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_numpy_rng_state(self.mazes.rng, state["maze_rng"])
        set_numpy_rng_state(self.meta_mazes.rng, state["meta_maze_rng"])
        self.sampler.set_state(state["sampler"])
        self.meta_sampler.set_state(state["meta_sampler"])
        self.returns = list(state["returns"].unbind(0))
        self.skipped = int(state["counters"][0])
        self.wall = float(state["wall_time"])
        self.window.load(state["window"])


# ------------------------------------------------------------------------------------------------
# results table: python -m train.tasks.maze table RUN_DIR ...


def results_table(run_dirs: list[Path]) -> str:
    """Markdown table over finished runs (``eval.json``), grouped by the run-directory name before
    ``__`` (the config name): mean over seeds of each run's last-window mean return, the std across seeds,
    the per-seed values and the training wall time per run (minutes, summed over resumes)."""
    groups: dict[str, list[dict[str, float]]] = {}
    for d in run_dirs:
        path = Path(d) / "eval.json"
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
