"""The Miconi maze as a task family: continual A2C training of one never-reset recurrent agent.

Protocol (docs/protocols.md §4, docs/warpgrad.md §9): one agent (Warp-RNN, plain RNN, LSTM, ...) with hidden
size 100 is trained on batches of B = 30 mazes × T = 200 steps. Every task step is one such batch of episodes
(a new goal per maze), one A2C loss (agents.maze_a2c) and one Adam step (lr 1e-3) on the task parameters; the
agent is never reset. The maze runs through the trainer's continual mode (``meta.every`` > 0, WarpGrad's
Algorithm 3): the whole run is one task, adapted ``meta.every`` task steps at a time, with a meta-step after
each window. With ``method: warpgrad_continual`` (metarl.continual) that meta-step moves the warps φ
(``meta.include: [warp.]``; Adam 1e-3 every 30 task steps); the baselines (rnn, lstm, plastic-rnn,
plastic-rnn-retroactive) run ``method: no_pretraining``, whose meta-step does nothing. Run length:
``meta.steps`` × ``meta.every`` task steps (112 × 30 = 3,360 iterations ≈ 100k episodes).

Backpropamine's settings are switches (docs/protocols.md §4): ``task_lr`` 1e-4, ``adam_eps`` 1e-4,
``clip_grad_norm`` 4.0 (the task gradient's norm, per seed), ``burn_in`` 100, ``value_baseline: element0`` and
``init: backpropamine`` (the plain RNN's recurrent weights ~ 0.01·U(0, 1); the plastic models always are).

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

Seeds as a batch dimension (``maze.seeds: [0, 1, ...]``, :class:`SeedBatchedMazeAdapter`; empty: the run's ``seed``
alone, as above, :class:`MazeAdapter`): one process trains S independent agents stacked along a leading dimension
of every parameter (agents.seed_batched), on S × B mazes.
Seed k gets everything it would get as a run with ``seed: k`` alone — its initialisation (drawn after
``torch.manual_seed(k)``), its maze and sampler streams, its own Adam (metarl.seed_batch.SeedAdam: per-seed step
counts), its own warps and warp optimiser, per-seed gradient clipping and non-finite skipping. Over a short run it
ends where that run would (up to floating-point summation order: ≤ 1e-6 in the tests, 9 iterations); over a long
one a last-bit difference in a batched sum can flip a sampled action, and from there the two runs part (the plain
RNN: seed 0 at iteration 149, seed 2 at 52), so batched seeds are the same in distribution, not run for run
(docs/RESULTS.md; ``python -m train.maze_report compare`` tests it). Batched seeds need ``meta.head: learned``: under
``reset`` a run alone keeps a second draw's heads, which the batched build does not reproduce. Its curves go to
``run_dir/seed_<k>/games/`` (where a run of its own has them), their mean over seeds to the run's own ``games/``
(with the sample std of the return over seeds as ``charts_std/episodic_return``); at the end each
``run_dir/seed_<k>/`` also gets the seed's ``eval.json``, ``config.yaml`` (``seed: k``, no ``seeds``) and final
checkpoint in the single-seed format, so it reads — and resumes — as a separate run; ``run_dir/eval.json`` holds
the per-seed results and their mean. The run's own checkpoints hold the stacked state: it resumes exactly, batched.
The run's ``seed`` is not used by the maze when ``seeds`` is given. The per-seed folders, configs and checkpoints
are written by train/tasks/maze_seeds.py.

Devices: the agent, its optimiser, the rollouts and the loss live on ``run.device``; the mazes step in NumPy on
the CPU and the action samplers stay CPU generators on every device (agents.maze_a2c, "Devices": a CPU run is
unchanged bit for bit, a GPU run of a seed draws the same noise). The configs keep ``run.device: cpu`` (their
results are CPU runs; GPU speed is not measured: at 30 mazes × 100 units a step is a few small kernels and one
device → host sync, and Warp-RNN's fused unroll is CPU only); ``run.device=cuda`` runs the maze on a GPU.

Results table of finished runs: ``python -m train.tasks.maze table RUN_DIR ...`` (train/maze_report.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss, rollout_seeds
from agents.recurrent import INITS, MODELS, RecurrentConfig, build_model
from agents.seed_batched import build_seed_batched
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch, SeedMazeBatch
from metarl.continual import continual_update
from metarl.continual_seeds import continual_update_seeds
from metarl.seam import NULL_WATCH
from metarl.seed_batch import SeedAdam

from ..stats import sample_std
from .base import TaskAdapter
from .maze_seeds import seed_folder, write_seed_runs

LOSS_KEYS = ("loss", "policy_loss", "value_loss", "prob_sq_loss")


@dataclass
class MazeTaskConfig:
    model: str = "warp-rnn"             # rnn | lstm | warp-rnn | warp-lstm | plastic-rnn | plastic-rnn-retroactive
    seeds: list[int] = field(default_factory=list)   # seeds trained as one batch ([]: the run's seed alone)
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
    task_lr: float = 1e-3               # Adam on the task parameters, every iteration (Backpropamine: 1e-4)
    adam_eps: float = 1e-8              # the task Adam's ε (torch's default; Backpropamine: 1e-4)
    clip_grad_norm: float = 0.0         # > 0: clip the task gradient's norm, per seed (Backpropamine: 4.0)
    init: str = "default"               # default | backpropamine (plain RNN: W_hh ~ 0.01·U(0, 1))
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
        for key in ("wall_penalty", "gamma", "value_coef", "prob_sq_coef", "task_lr", "adam_eps", "clip_grad_norm",
                    "burn_in"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.gamma > 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.maze_size < 5 or self.maze_size % 2 == 0:
            raise ValueError(f"maze_size must be odd and >= 5, got {self.maze_size}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "backpropamine" and self.model not in BACKPROPAMINE_INIT_MODELS:
            raise ValueError(f"init: backpropamine applies to {', '.join(BACKPROPAMINE_INIT_MODELS)}, "
                             f"not {self.model!r}")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")


# The plain RNN takes Backpropamine's initialisation on request; the plastic RNNs always have it.
BACKPROPAMINE_INIT_MODELS = ("rnn", "plastic-rnn", "plastic-rnn-retroactive")


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


class LogWindow:
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
    meta-batch warp objective, Eq. 8) from a second, independent set of mazes. Seed-batched: one loss per
    seed, (S,)."""

    key = "maze"

    def __init__(self, adapter: "MazeAdapter") -> None:
        self.adapter = adapter

    def batch(self, split: str) -> str:
        return split

    def loss(self, model: nn.Module, batch: str) -> torch.Tensor:
        a = self.adapter
        if batch == "query":
            episodes = a.query_rollout(model)
        else:
            episodes = a.episodes(model, a.mazes, a.sampler)
        return rollout_loss(episodes, a.loss_config).total


def seed_mean(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """A log window's scalars averaged over the seeds of a seed-batched run, with the sample std over seeds of the
    return in a section of its own (``charts_std/episodic_return``: train/stats.py)."""
    out = {k: float(np.mean([logs[k] for logs in per_seed])) for k in per_seed[0] if all(k in x for x in per_seed)}
    if len(per_seed) > 1:
        out["charts_std/episodic_return"] = float(np.std([x["charts/episodic_return"] for x in per_seed], ddof=1))
    return out


class MazeAdapter(TaskAdapter):
    """The never-reset maze learner of one seed (module docstring). Runs in the trainer's continual mode only.
    ``maze.seeds`` builds :class:`SeedBatchedMazeAdapter` instead (:meth:`build`): the S = 1 batch is not this
    run bit for bit (its batched kernels, per-seed norms and per-seed Adam sum in another order: ≈ 3e-8 apart
    after 9 iterations), so one seed keeps this path and the batch is a class of its own, not a branch."""

    head = ("policy_head.", "value_head.")
    splits = ("train",)
    periodic_evaluation = False        # the result is the training curve itself
    steps_name, record_name = "episodes", "iteration"      # the progress bar's words (train/progress.py)
    # The agent, rollouts and losses on ``run.device``; the NumPy mazes and the samplers' CPU generators on the
    # CPU (agents.maze_a2c, "Devices").
    device_types = ("cpu", "cuda")
    continual_only = True
    clip_key = "maze.clip_grad_norm"   # the one clip key (TaskAdapter.clip_key)

    @classmethod
    def unused_keys(cls, cfg: Any) -> dict[str, str]:
        out = {k: v for k, v in super().unused_keys(cfg).items() if not k.startswith("eval.")}
        for k in ("optimizer", "lr", "momentum", "steps"):
            out[f"inner.{k}"] = ("the maze's learner is Adam with maze.task_lr and maze.adam_eps, "
                                 "meta.every task steps per meta-step")
        out["eval"] = "the maze has no held-out evaluation: its result is its training curve (maze.final_window)"
        return out

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        # Under meta.head: reset a single run's learner keeps the heads of a second draw from its seed's stream;
        # the seed-batched build re-seeds each agent, so its heads would be the first draw's: every seed would
        # part from its run alone at iteration 0. The maze's one learner needs no re-drawn head: refuse.
        if cfg.task_config.seeds and cfg.meta.head == "reset":
            raise ValueError("maze.seeds needs meta.head: learned (the maze trains one never-reset learner; "
                             "under reset the batched seeds' heads would not be their single runs')")

    @classmethod
    def build(cls, config: MazeTaskConfig, seed: int = 0) -> "MazeAdapter":
        return (SeedBatchedMazeAdapter if config.seeds else cls)(config, seed=seed)

    def __init__(self, config: MazeTaskConfig, seed: int = 0) -> None:
        super().__init__(config, seed)
        mc = config
        self.loss_config = MazeA2CConfig(gamma=mc.gamma, value_coef=mc.value_coef, prob_sq_coef=mc.prob_sq_coef,
                                         value_baseline=mc.value_baseline)
        self.returns: list[torch.Tensor] = []     # per iteration: the B episodes' returns ((S, B) seed-batched)
        self.wall = 0.0
        self._logs: list[tuple] = []
        self.open_streams(MazeConfig(size=mc.maze_size, episode_length=mc.episode_length,
                                     wall_penalty=mc.wall_penalty))

    def open_streams(self, maze_config: MazeConfig) -> None:
        """The task mazes, the task action sampler, the meta-batch mazes and their sampler, each its own stream
        derived from the seed; the log window and the skipped-step count."""
        mc, seed = self.config, self.seed
        self.mazes = MazeBatch(mc.batch, maze_config, seed=_stream_seed(seed, 0))
        self.sampler = torch.Generator().manual_seed(_stream_seed(seed, 1))
        self.meta_mazes = MazeBatch(mc.batch, maze_config, seed=_stream_seed(seed, 2))
        self.meta_sampler = torch.Generator().manual_seed(_stream_seed(seed, 3))
        self.window = LogWindow()
        self.skipped = 0

    @property
    def global_step(self) -> int:                 # task episodes so far (each seed's): the x-axis of the curves
        return len(self.returns) * self.config.batch

    def _recurrent_config(self) -> RecurrentConfig:
        mc = self.config
        return RecurrentConfig(hidden_size=mc.hidden_size, warp_hidden_size=mc.warp_hidden_size, init=mc.init)

    def make_model(self, generator: torch.Generator, task: Any = None) -> nn.Module:
        """The agent; its initialisation comes from torch's global generator, seeded by the trainer."""
        return build_model(self.config.model, self._recurrent_config())

    def make_optimizer(self, model: nn.Module, params, inner: Any) -> torch.optim.Optimizer:
        mc = self.config
        return torch.optim.Adam(params, lr=mc.task_lr, eps=mc.adam_eps)

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[MazeStream]:
        return [MazeStream(self) for _ in range(n)]

    def adapt(self, task: MazeStream, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch=NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
        """``steps`` more iterations of the never-reset learner; returns their losses (no final point: the
        task does not end; seed-batched: the mean over the seeds with a finite loss)."""
        mc = self.config
        if clip_grad_norm:
            raise ValueError("the maze clips at maze.clip_grad_norm only; inner.clip_grad_norm is refused")
        clip = mc.clip_grad_norm or None
        all_params = list(model.parameters())
        curve = []
        for _ in range(steps):
            t0 = time.perf_counter()
            burning_in = len(self.returns) < mc.burn_in
            with torch.set_grad_enabled(not burning_in):        # no autograd while burning in
                episodes = self.episodes(model, self.mazes, self.sampler)
                loss = rollout_loss(episodes, self.loss_config)
            skipped = self.task_step(loss.total, optimizer, watch, all_params, burning_in, clip)
            self.returns.append(torch.from_numpy(episodes.episode_returns.astype(np.float32)))
            seconds = time.perf_counter() - t0
            self.wall += seconds
            curve.append(self.curve_point(loss.total.detach()))
            self.record(episodes, loss, skipped, seconds)
        return curve

    def episodes(self, model: nn.Module, mazes: MazeBatch, sampler: Any) -> Any:
        """One episode in each of ``mazes``, actions drawn from ``sampler`` (agents.maze_a2c.rollout)."""
        return rollout(model, mazes, generator=sampler, fused=self.config.fused)

    def task_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, watch: Any, params: list,
                  burning_in: bool, clip: float | None) -> Any:
        """One update of the task parameters (metarl.continual); returns whether it was skipped (non-finite)."""
        skipped = continual_update(loss, optimizer, watch, params, burning_in, clip) == "non_finite"
        self.skipped += skipped
        return skipped

    def curve_point(self, loss: torch.Tensor) -> float:
        return float(loss)

    def query_rollout(self, model: nn.Module) -> Any:
        """The meta-batch objective's rollout on the query mazes, its return counted in the log window."""
        episodes = self.episodes(model, self.meta_mazes, self.meta_sampler)
        self.window.v["meta_return"] += episodes.mean_return
        self.window.v["meta_rollouts"] += 1
        return episodes

    def record(self, episodes: Any, loss: Any, skipped: Any, seconds: float) -> None:
        """Add the iteration to the log window; every ``log_every`` iterations, log it and start a new one."""
        _add(self.window.v, episodes.mean_return, skipped, seconds,
             [float(t.detach()) for t in (loss.total, loss.policy, loss.value, loss.prob_sq)])
        self._report_progress(episodes.mean_return)
        if len(self.returns) % self.config.log_every:
            return
        self._logs.append((self.global_step, self._window_logs(self.window, self.skipped)))
        self.window.reset()

    def _window_logs(self, window: LogWindow, skipped: int) -> dict[str, float]:
        mc, w = self.config, window.v
        n = w["iterations"]
        logs = {"charts/episodic_return": w["return"] / n, "charts/episodic_length": float(mc.episode_length),
                "charts/SPS": n * mc.batch * mc.episode_length / max(w["seconds"], 1e-9),
                **{f"losses/{k}": w[k] / n for k in LOSS_KEYS}, "losses/skipped_steps": float(skipped)}
        if w["meta_rollouts"]:
            logs["meta/meta_batch_return"] = w["meta_return"] / w["meta_rollouts"]
        return logs

    def _report_progress(self, mean_return: float) -> None:
        """The live-progress hooks (train/progress.py): an iteration's mean return (over its mazes; seed-batched,
        over the seeds too) and the episodes so far."""
        if self.on_game is not None:
            self.on_game(SimpleNamespace(task="maze", episodic_return=mean_return))
        if self.on_progress is not None:
            self.on_progress("maze", self.global_step)

    def drain_logs(self) -> list[tuple]:
        """(step, scalars) for the run's games/ TensorBoard run; seed-batched (step, scalars,
        "seed_<k>/games"): the games/ run of each seed's own run folder, and (step, scalars) of the seed mean
        (:func:`seed_mean`) for the run's own games/ run."""
        out, self._logs = self._logs, []
        return out

    def evaluate(self, task: Any, model: nn.Module) -> dict[str, float]:
        return self.result()

    def evaluate_run(self, cfg: Any, meta: Any, run_dir: Path, step: int, logger: Any = None,
                     world: Any = None) -> dict:
        return self.result()

    def result(self) -> dict[str, float]:
        """Mean and std of the last ``final_window`` episodes' returns, the counters and the wall time."""
        returns = torch.stack(self.returns) if self.returns else torch.zeros(0, self.config.batch)
        return self._result(returns, self.skipped)

    def _result(self, returns: torch.Tensor, skipped: int) -> dict[str, float]:
        mc = self.config
        flat = returns.reshape(-1).double()
        last = flat[-mc.final_window:]
        return {"return_last_mean": float(last.mean()) if len(last) else float("nan"),
                "return_last_std": float(last.std()) if len(last) > 1 else float("nan"),      # sample std
                "final_window_episodes": float(len(last)), "iterations": float(len(returns)),
                "episodes": float(self.global_step), "wall_time_s": self.wall, "skipped_steps": float(skipped)}

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


def _add(w: dict[str, float], mean_return: float, skipped: Any, seconds: float, losses: list[float]) -> None:
    """One iteration into a log window's sums."""
    w["iterations"] += 1
    w["return"] += mean_return
    w["skipped"] += skipped
    w["seconds"] += seconds
    for k, v in zip(LOSS_KEYS, losses):
        w[k] += v


class SeedBatchedMazeAdapter(MazeAdapter):
    """``maze.seeds``: S independent seeds as one stacked agent (module docstring, "Seeds as a batch
    dimension"). Seed k's streams, initialisation, Adam, clipping and skipping are those of a run with
    ``seed: k`` alone; its curves, result, config and final checkpoint go to its own run folder (maze_seeds)."""

    def open_streams(self, maze_config: MazeConfig) -> None:
        mc = self.config
        self.seeds: list[int] = list(mc.seeds)
        # Seed k's streams are those of a run with ``seed: k`` alone.
        self.mazes = SeedMazeBatch([_stream_seed(k, 0) for k in self.seeds], mc.batch, maze_config)
        self.sampler = [torch.Generator().manual_seed(_stream_seed(k, 1)) for k in self.seeds]
        self.meta_mazes = SeedMazeBatch([_stream_seed(k, 2) for k in self.seeds], mc.batch, maze_config)
        self.meta_sampler = [torch.Generator().manual_seed(_stream_seed(k, 3)) for k in self.seeds]
        self.windows = [LogWindow() for _ in self.seeds]
        self.seed_skipped = np.zeros(len(self.seeds), dtype=np.int64)
        self._query_state: tuple | None = None
        self._query_returns: np.ndarray | None = None

    def make_model(self, generator: torch.Generator, task: Any = None) -> nn.Module:
        """Seed k's agent drawn after ``torch.manual_seed(k)``, the S agents stacked."""
        return build_seed_batched(self.config.model, self._recurrent_config(), self.seeds)

    def make_optimizer(self, model: nn.Module, params, inner: Any) -> torch.optim.Optimizer:
        mc = self.config
        return SeedAdam(params, len(self.seeds), lr=mc.task_lr, eps=mc.adam_eps)

    def episodes(self, model: nn.Module, mazes: MazeBatch, sampler: Any) -> Any:
        """One episode in each of the S × B ``mazes``, seed k's actions drawn from ``sampler[k]``."""
        return rollout_seeds(model, mazes, generators=sampler, fused=self.config.fused)

    def task_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, watch: Any, params: list,
                  burning_in: bool, clip: float | None) -> Any:
        """Per seed; returns the (S,) mask of skipped seeds. A seed whose task step is skipped takes no query
        rollout alone: its query streams are put back and its query return is not counted."""
        self._query_state, self._query_returns = None, None
        outcomes = continual_update_seeds(loss, optimizer, watch, params, len(self.seeds), burning_in, clip)
        skipped = np.array([o == "non_finite" for o in outcomes])
        self._query_finished(~skipped)
        self.seed_skipped += skipped
        return skipped

    def curve_point(self, loss: torch.Tensor) -> float:
        finite = loss[torch.isfinite(loss)]         # the mean over the seeds with a finite loss
        return float(finite.mean()) if len(finite) else float("nan")

    def query_rollout(self, model: nn.Module) -> Any:
        if self._query_state is None:
            self._query_state = ([numpy_rng_state(r) for r in self.meta_mazes.rngs],
                                 [g.get_state() for g in self.meta_sampler])
        episodes = self.episodes(model, self.meta_mazes, self.meta_sampler)
        self._query_returns = episodes.seed_mean_returns    # committed per seed once the step's outcome is known
        return episodes

    def _query_finished(self, stepped: np.ndarray) -> None:
        if self._query_state is None:
            return
        for k in np.flatnonzero(~stepped):
            set_numpy_rng_state(self.meta_mazes.rngs[k], self._query_state[0][k])
            self.meta_sampler[k].set_state(self._query_state[1][k])
        if self._query_returns is not None:
            for k in np.flatnonzero(stepped):
                self.windows[k].v["meta_return"] += float(self._query_returns[k])
                self.windows[k].v["meta_rollouts"] += 1
        self._query_state, self._query_returns = None, None

    def record(self, episodes: Any, loss: Any, skipped: Any, seconds: float) -> None:
        terms = [t.detach() for t in (loss.total, loss.policy, loss.value, loss.prob_sq)]
        for k, window in enumerate(self.windows):
            _add(window.v, float(episodes.seed_mean_returns[k]), bool(skipped[k]), seconds,
                 [float(v[k]) for v in terms])
        self._report_progress(float(np.mean(episodes.seed_mean_returns)))
        if len(self.returns) % self.config.log_every:
            return
        per_seed = []
        for k, (seed, window) in enumerate(zip(self.seeds, self.windows)):
            per_seed.append(self._window_logs(window, int(self.seed_skipped[k])))
            self._logs.append((self.global_step, per_seed[-1], f"{seed_folder(seed)}/games"))
            window.reset()
        self._logs.append((self.global_step, seed_mean(per_seed)))         # the batch's own games/ run

    def evaluate_run(self, cfg: Any, meta: Any, run_dir: Path, step: int, logger: Any = None,
                     world: Any = None) -> dict:
        """Write every seed's run folder (eval.json, config.yaml, final single-seed checkpoint; maze_seeds) and
        return the batch's result."""
        result = self.result()
        write_seed_runs(cfg, Path(run_dir), self.seeds, result)
        return result

    def result(self) -> dict[str, float]:
        """The mean over seeds of their ``return_last_mean``, its sample std over seeds and each seed's result
        under ``per_seed``."""
        rows = self.seed_results()
        means = np.array([r["return_last_mean"] for r in rows])
        return {"seeds": list(self.seeds), "return_last_mean": float(means.mean()),
                "return_last_mean_std_over_seeds": sample_std(means),      # None (null) for one seed
                "final_window_episodes": rows[0]["final_window_episodes"], "iterations": float(len(self.returns)),
                "episodes": float(self.global_step), "wall_time_s": self.wall,
                "skipped_steps": float(self.seed_skipped.sum()),
                "per_seed": {str(k): r for k, r in zip(self.seeds, rows)}}

    def seed_results(self) -> list[dict[str, float]]:
        """Each seed's :meth:`result` as its run alone would report it (the batch's wall time)."""
        returns = torch.stack(self.returns) if self.returns else torch.zeros(0, len(self.seeds), self.config.batch)
        return [self._result(returns[:, k], int(self.seed_skipped[k])) for k in range(len(self.seeds))]

    def state_dict(self) -> dict[str, Any]:
        return {"maze_rng": torch.stack([numpy_rng_state(r) for r in self.mazes.rngs]),
                "meta_maze_rng": torch.stack([numpy_rng_state(r) for r in self.meta_mazes.rngs]),
                "sampler": torch.stack([g.get_state() for g in self.sampler]),
                "meta_sampler": torch.stack([g.get_state() for g in self.meta_sampler]),
                "returns": (torch.stack(self.returns) if self.returns
                            else torch.zeros(0, len(self.seeds), self.config.batch)),
                "counters": torch.from_numpy(self.seed_skipped.copy()),
                "wall_time": torch.tensor(self.wall, dtype=torch.float64),
                "window": torch.stack([w.tensor() for w in self.windows])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        S = len(self.seeds)
        if state["maze_rng"].dim() != 2 or state["maze_rng"].shape[0] != S:
            raise ValueError(f"checkpoint is not a run of {S} batched seeds")
        for k in range(S):
            set_numpy_rng_state(self.mazes.rngs[k], state["maze_rng"][k])
            set_numpy_rng_state(self.meta_mazes.rngs[k], state["meta_maze_rng"][k])
            self.sampler[k].set_state(state["sampler"][k].clone())
            self.meta_sampler[k].set_state(state["meta_sampler"][k].clone())
            self.windows[k].load(state["window"][k])
        self.returns = list(state["returns"].unbind(0))
        self.seed_skipped = state["counters"].numpy().astype(np.int64).copy()
        self.wall = float(state["wall_time"])


if __name__ == "__main__":
    from train.maze_report import main

    main(prog="python -m train.tasks.maze")
