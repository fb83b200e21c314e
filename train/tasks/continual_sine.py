"""Continual sine regression (WarpGrad, arXiv:1909.00025 App. J; docs/protocols.md §5).

A *task* is one target function over [−5, 5], a gated mixture of two sines,

    f(x) = σ(x + o)·f₁(x) + (1 − σ(x + o))·f₂(x),   f_i(x) = a_i·sin(x − b_i),
    a_i ~ U[0.1, 5],  b_i ~ U[0, π],  o ~ U[−5, 5]

(the paper gives the range of o but not its distribution: uniform is our reading). The input interval is
split evenly into T = 5 consecutive sub-intervals — the sub-tasks — which the learner sees one at a time,
left to right during meta-training: n = 20 SGD steps per sub-task on fresh batches of 5 points drawn from
the current sub-interval only, K = nT = 100 steps per sequence, always from the same fixed random
initialisation θ⁰ (λC = 0: only the warps are meta-learned). Task loss (App. J Eq. 18):

    L_task(θ, D) = 1/(2|D|) Σ_{x∈D} (h(x; θ, φ) − f(x))²

Learner (:class:`ContinualMLP`): a 4-layer MLP 1-200-200-200-1 with ReLU (we read "4-layer" as four
linear layers, i.e. three hidden layers of 200), each ReLU followed by a residual warp block
z + W₂ tanh(W₁ z + b₁) + b₂ with 100 hidden units (``metarl.warp_layers.make_warp("residual_mlp")``).
The output layer is ``head``; the warps live under ``warps.``.

Continual meta-objective (App. J Eq. 19, App. C Eq. 15). A trajectory point θ belongs to sub-task t (1-based
position in the presentation order) when the step taken from it is a step on sub-task t, so with the
points θ_0 … θ_{K−1} each sub-task owns exactly n points. Its meta-loss is a weighted sum of validation
losses (fresh batches, ``val_batch_size`` points each) of the current and all previously presented
sub-tasks, evaluated at the one-step-updated parameters θ' = θ − α∇L_task(θ) by the WarpGrad objective:

    L_meta(θ; φ) = Σ_{i=1..t} w_{t,i} · L_task(θ', D_val^i; φ)

``weighting`` chooses w:

- ``eq19`` (default): w_{t,i} = 1 / (n (T − i + 1)). Here n is the number of steps (trajectory points) per
  sub-task, 20, and T the number of sub-tasks in the sequence, 5. Eq. 19 prints the denominator with the
  *current* index t, but its stated purpose — "equal weight to all the tasks in the sequence", normalising
  each sub-task by its number of appearances (the first sub-task appears in the meta-loss nT times, the
  last n times) — holds only when the denominator uses the index i of the sub-task being weighted: then
  the weights of sub-task i over the whole sequence sum to n(T − i + 1)·1/(n(T − i + 1)) = 1 for every i.
  We read the t as a typo for i.
- ``eq19_literal``: w_{t,i} = 1 / (n (T − t + 1)), the formula exactly as printed (sub-task i then gets a
  total weight H_{T−i+1}, a harmonic number: 2.28 for the first, 1 for the last).
- ``mean``: w_{t,i} = 1/t, the plain average of App. C (Eq. 15).

The objective reaches WarpGrad through the task, with no change to the meta-learner: during the inner loop
the task knows its current position, ``task.batch("meta")`` returns a :class:`ContinualMetaBatch` (the
validation points of sub-tasks 1…t with per-point weights w_{t,i}/(2m)) and ``task.loss`` scores it as the
weighted sum above in one forward pass. Run it with ``metarl.warpgrad.WarpGrad`` online (Algorithm 1: one φ
step per meta-batch of sequences, as the paper trains this experiment), ``init_objective: none``,
``final_point: false``, ``meta_split: meta`` — see ``configs/continual_sine_warp.yaml`` — or with
``WarpGrad`` (online) with ``meta.every`` for Algorithm 3's timing.

Evaluation: after each sub-task the loss on every sub-task (an evenly spaced grid of ``test_points`` points
per sub-interval) is recorded, giving per sequence a T×T matrix M[i, r] = loss on the r-th presented
sub-task after finishing the i-th; its lower triangle (r ≤ i) is the forgetting matrix. ``evaluate_run``
(the trainer's end-of-run evaluation, and ``metarl eval RUN_DIR``) runs the protocol — warps vs plain SGD
from the same θ⁰, in training order and in the random order [1, 3, 4, 2, 0] — and writes
``forgetting.json``. The SGD baseline is the same MLP with the warp blocks removed, from the same task-layer
θ⁰, on the same batches; with ``warp_init: identity`` it is exactly the warp learner before meta-training.
Reproduction over seeds and the table of several runs: ``python -m train.continual_sine_report``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from metarl.warp_layers import make_warp

from ..checkpoint import write_json_atomic
from ..stats import curve_mean_std
from .base import NULL_WATCH, TaskAdapter, finish_task, supervised_step

WEIGHTINGS = ("eq19", "eq19_literal", "mean")
WARPS = ("residual_mlp", "none")
RANDOM_ORDER = (1, 3, 4, 2, 0)          # the paper's random evaluation order (App. J, Fig. 10b)


# ------------------------------------------------------------------------------------------------
# configuration


@dataclass
class ContinualSineConfig:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    offset: tuple[float, float] = (-5.0, 5.0)     # o ~ U[offset] (uniform: our reading)
    x_range: tuple[float, float] = (-5.0, 5.0)
    subtasks: int = 5                   # T
    steps_per_subtask: int = 20         # n; inner.steps must equal n·T
    batch_size: int = 5                 # points per inner step (and per replayed task step)
    val_batch_size: int = 5             # validation points per sub-task in the meta-loss
    test_points: int = 100              # evaluation grid points per sub-task
    weighting: str = "eq19"             # eq19 | eq19_literal | mean (see the module docstring)
    hidden: tuple[int, ...] = (200, 200, 200)
    warp: str = "residual_mlp"          # residual_mlp | none (the plain MLP)
    warp_hidden: int = 100
    warp_activation: str = "tanh"
    warp_init: str = "identity"         # identity: the warp model at φ⁰ computes exactly the plain MLP
    eval_order: tuple[int, ...] = ()    # presentation order of held-out tasks (empty: left to right)
    split_seed: int = 1234              # fixed validation / held-out draws

    def __post_init__(self) -> None:
        for name in ("amplitude", "phase", "offset", "x_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be an increasing pair, got {getattr(self, name)}")
        for name in ("subtasks", "steps_per_subtask", "batch_size", "val_batch_size", "test_points",
                     "warp_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) <= 0:
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.warp not in WARPS:
            raise ValueError(f"warp must be one of {', '.join(WARPS)}, got {self.warp!r}")
        if self.warp_init not in ("identity", "default"):
            raise ValueError(f"warp_init must be identity or default, got {self.warp_init!r}")
        self.hidden = tuple(self.hidden)
        self.eval_order = tuple(self.eval_order)
        if self.eval_order:
            check_order(self.eval_order, self.subtasks)

    @property
    def steps(self) -> int:
        """K = n·T: task steps per sequence."""
        return self.steps_per_subtask * self.subtasks


def check_order(order: Sequence[int], subtasks: int) -> None:
    if sorted(order) != list(range(subtasks)):
        raise ValueError(f"order must be a permutation of 0..{subtasks - 1}, got {list(order)}")


# ------------------------------------------------------------------------------------------------
# the maths


def mixture_target(x: Tensor, a1: float, b1: float, a2: float, b2: float, o: float) -> Tensor:
    """f(x) = σ(x + o)·a₁ sin(x − b₁) + (1 − σ(x + o))·a₂ sin(x − b₂) (App. J Eq. 17)."""
    gate = torch.sigmoid(x + o)
    return gate * (a1 * torch.sin(x - b1)) + (1.0 - gate) * (a2 * torch.sin(x - b2))


def subtask_bounds(x_range: tuple[float, float], subtasks: int) -> list[tuple[float, float]]:
    """The ``subtasks`` consecutive equal sub-intervals of ``x_range``, left to right."""
    lo, hi = x_range
    edges = [lo + (hi - lo) * j / subtasks for j in range(subtasks + 1)]
    return [(edges[j], edges[j + 1]) for j in range(subtasks)]


def continual_weights(t: int, subtasks: int, steps_per_subtask: int, weighting: str = "eq19") -> list[float]:
    """w_{t,1} … w_{t,t}: the weights of the validation losses of the sub-tasks presented 1st … t-th in the
    meta-loss of a point of the t-th sub-task (t is 1-based). See the module docstring."""
    T, n = subtasks, steps_per_subtask
    if not 1 <= t <= T:
        raise ValueError(f"sub-task position t must be in 1..{T}, got {t}")
    if weighting == "eq19":
        return [1.0 / (n * (T - i + 1)) for i in range(1, t + 1)]
    if weighting == "eq19_literal":
        return [1.0 / (n * (T - t + 1))] * t
    if weighting == "mean":
        return [1.0 / t] * t
    raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


class ContinualMetaBatch(NamedTuple):
    """Validation points of several sub-tasks in one batch; ``task.loss`` returns Σ_s weight_s·(h(x_s) − y_s)².
    ``weight`` already holds w_{t,i}/(2 m_i) for a point of sub-task i with m_i points, so the loss is
    Σ_i w_{t,i}·L_task(θ, D_val^i)."""
    x: Tensor                 # [N, 1]
    y: Tensor                 # [N, 1]
    weight: Tensor            # [N, 1]
    subtask: Tensor           # [N] long: the sub-interval index of each point (diagnostics)


def regression_loss(model: nn.Module, batch: tuple[Tensor, Tensor] | ContinualMetaBatch) -> Tensor:
    """1/(2|D|) Σ (h(x) − f(x))² for an ``(x, y)`` batch; the weighted sum for a :class:`ContinualMetaBatch`."""
    if isinstance(batch, ContinualMetaBatch):
        return (batch.weight * (model(batch.x) - batch.y).pow(2)).sum()
    x, y = batch
    return 0.5 * (model(x) - y).pow(2).mean()


# ------------------------------------------------------------------------------------------------
# the task


class ContinualSineTask:
    """One target function and its presentation ``order`` (sub-interval indices, 0 = leftmost).

    ``position`` (0-based) is the sub-task currently being learned; the adapter sets it. Batches:
    ``"train"`` — ``batch_size`` fresh points of the current sub-task; ``"meta"`` (or ``"val"``) — the
    :class:`ContinualMetaBatch` of the sub-tasks presented so far, weighted per ``config.weighting``;
    :meth:`test_batch` — the fixed evaluation grid of one sub-interval. After :meth:`ContinualSineAdapter.adapt`
    ``matrix`` holds M[i, r] (see the module docstring)."""

    def __init__(self, params: tuple[float, float, float, float, float], config: ContinualSineConfig,
                 seed: int, key: str, order: Sequence[int] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.params, self.config, self.seed, self.key = tuple(float(p) for p in params), config, seed, key
        self.device = torch.device(device)      # points are drawn on the CPU, delivered here
        self.order = tuple(order) if order else tuple(range(config.subtasks))
        check_order(self.order, config.subtasks)
        self.bounds = subtask_bounds(config.x_range, config.subtasks)
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0
        self.matrix: np.ndarray | None = None
        self._tests = [self._grid(j) for j in range(config.subtasks)]

    def with_order(self, order: Sequence[int]) -> "ContinualSineTask":
        """The same function with another presentation order and a fresh copy of its batch stream."""
        return ContinualSineTask(self.params, self.config, self.seed, self.key, order, self.device)

    def target(self, x: Tensor) -> Tensor:
        return mixture_target(x, *self.params)

    @property
    def subtask(self) -> int:
        """The sub-interval being learned now."""
        return self.order[self.position]

    def _grid(self, j: int) -> tuple[Tensor, Tensor]:
        lo, hi = self.bounds[j]
        m = self.config.test_points
        x = lo + (torch.arange(m, dtype=torch.get_default_dtype()) + 0.5) * ((hi - lo) / m)
        x = x.unsqueeze(1)
        return x.to(self.device), self.target(x).to(self.device)

    def draw(self, j: int, m: int) -> tuple[Tensor, Tensor]:
        """``m`` points uniform on sub-interval ``j`` with their targets."""
        lo, hi = self.bounds[j]
        x = torch.rand(m, 1, generator=self.generator, dtype=torch.get_default_dtype()) * (hi - lo) + lo
        return x.to(self.device), self.target(x).to(self.device)

    def meta_batch(self, position: int | None = None) -> ContinualMetaBatch:
        c = self.config
        p = self.position if position is None else position
        weights = continual_weights(p + 1, c.subtasks, c.steps_per_subtask, c.weighting)
        xs, ys, ws, js = [], [], [], []
        for i, w in enumerate(weights):
            j = self.order[i]
            x, y = self.draw(j, c.val_batch_size)
            xs.append(x)
            ys.append(y)
            ws.append(torch.full_like(x, w / (2.0 * c.val_batch_size)))
            js.append(torch.full((len(x),), j, dtype=torch.long, device=x.device))
        return ContinualMetaBatch(torch.cat(xs), torch.cat(ys), torch.cat(ws), torch.cat(js))

    def batch(self, split: str) -> Any:
        if split == "train":
            return self.draw(self.subtask, self.config.batch_size)
        if split in ("meta", "val"):
            return self.meta_batch()
        if split == "test":
            return self._tests[self.subtask]
        raise ValueError(f"unknown split {split!r} (train, meta, val, test)")

    def test_batch(self, j: int) -> tuple[Tensor, Tensor]:
        return self._tests[j]

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        return regression_loss(model, batch)

    @torch.no_grad()
    def losses(self, model: nn.Module) -> list[float]:
        """Evaluation loss on every sub-task, in presentation order."""
        return [float(self.loss(model, self._tests[j])) for j in self.order]


# ------------------------------------------------------------------------------------------------
# the learner


class ContinualMLP(nn.Module):
    """1 → hidden… → 1 with ReLU; after each ReLU a warp (``residual_mlp``) or nothing (``none``).

    Task layers are drawn before the warps from ``generator`` (PyTorch's default uniform scheme), so the
    same generator state gives the same θ⁰ with and without warps."""

    def __init__(self, hidden: Sequence[int], warp: str = "residual_mlp", warp_hidden: int = 100,
                 warp_activation: str = "tanh", warp_init: str = "identity",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        widths = [1, *hidden]
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], 1)
        kind = "identity" if warp == "none" else warp
        self.warps = nn.ModuleList(make_warp(kind, h, activation=warp_activation, hidden=warp_hidden,
                                             init="default") for h in hidden)
        if generator is not None:
            _uniform_init([*self.body, self.head], generator)
            _uniform_init([m for w in self.warps for m in w.modules() if isinstance(m, nn.Linear)], generator)
        if warp_init == "identity":         # zero each block's last layer: ω = identity at φ⁰
            with torch.no_grad():
                for w in self.warps:
                    if hasattr(w, "outer"):
                        w.outer.weight.zero_()
                        w.outer.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        for layer, warp in zip(self.body, self.warps):
            x = warp(torch.relu(layer(x)))
        return self.head(x)


@torch.no_grad()
def _uniform_init(layers: Sequence[nn.Linear], generator: torch.Generator) -> None:
    for m in layers:
        bound = 1.0 / math.sqrt(m.in_features)
        m.weight.uniform_(-bound, bound, generator=generator)
        m.bias.uniform_(-bound, bound, generator=generator)


# ------------------------------------------------------------------------------------------------
# the adapter


class ContinualSineAdapter(TaskAdapter):
    config: ContinualSineConfig
    periodic_evaluation = False         # the whole protocol (evaluate_run) runs once, at the end

    def make_model(self, generator: torch.Generator, task: Any = None, *, warp: str | None = None) -> ContinualMLP:
        c = self.config
        return ContinualMLP(c.hidden, warp or c.warp, c.warp_hidden, c.warp_activation, c.warp_init, generator)

    def _task(self, rng: np.random.Generator, key: str, order: Sequence[int] | None) -> ContinualSineTask:
        c = self.config
        a1, b1 = rng.uniform(*c.amplitude), rng.uniform(*c.phase)
        a2, b2 = rng.uniform(*c.amplitude), rng.uniform(*c.phase)
        o = rng.uniform(*c.offset)
        return ContinualSineTask((a1, b1, a2, b2, o), c, int(rng.integers(2**62)), key, order, self.device)

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator,
                     order: Sequence[int] | None = None) -> list[ContinualSineTask]:
        """Meta-train tasks: fresh draws from ``rng``, presented left to right. Held-out tasks: fixed
        draws from the split seed, presented in ``order`` (default ``config.eval_order`` or left to right)."""
        if split == "train":
            return [self._task(rng, f"csine-{i}", order) for i in range(n)]
        offset = {"val": 1, "test": 2}[split]
        order = order or self.config.eval_order or None
        return [self._task(np.random.default_rng([self.config.split_seed, offset, i]), f"{split}-{i}", order)
                for i in range(n)]

    def adapt(self, task: ContinualSineTask, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
              watch: Any = NULL_WATCH, clip_grad_norm: float | None = None) -> list[float]:
        """n steps on each sub-task in the task's order. Records ``task.matrix`` (T×T, presentation order)
        and returns the training-loss curve f(θ_0) … f(θ_{K−1}), f(θ_K) (the last on a fresh batch of the
        last sub-task; it closes the trajectory for the meta-learner)."""
        c = self.config
        if steps != c.steps:
            raise ValueError(f"continual sine runs {c.subtasks} sub-tasks × {c.steps_per_subtask} steps: "
                             f"inner.steps must be {c.steps}, got {steps}")
        model.train()
        curve: list[Tensor] = []
        rows = []
        for position in range(c.subtasks):
            task.position = position
            curve += [supervised_step(task, model, optimizer, watch, clip_grad_norm)
                      for _ in range(c.steps_per_subtask)]
            rows.append(task.losses(model))
        final = finish_task(task, model, watch)
        curve.append(final)
        task.matrix = np.asarray(rows, dtype=np.float64)
        return torch.stack(curve).tolist()

    def evaluate(self, task: ContinualSineTask, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of the last :meth:`adapt`: mean final loss over all sub-tasks (``test_loss``),
        the final loss per presented sub-task, and the mean forgetting of the earlier sub-tasks."""
        m = task.matrix
        if m is None:
            raise RuntimeError("evaluate() reads the matrix recorded by adapt(); adapt the task first")
        out = {"test_loss": float(m[-1].mean()), "forgetting": forgetting(m)}
        out.update({f"final_pos{r}": float(m[-1, r]) for r in range(m.shape[1])})
        return out

    # -- the full protocol: `metarl eval RUN_DIR` ---------------------------------------------------------
    def evaluate_run(self, cfg: Any, meta: Any, run_dir: Path, step: int, logger: Any = None,
                     world: Any = None) -> dict[str, Any]:
        """Warp vs SGD from the same θ⁰, training order and the random order, on ``cfg.eval.tasks`` held-out
        sequences of ``cfg.eval.split``. Writes ``forgetting.json`` (with the mean and std matrices), logs the
        mean matrices to ``logger`` (tag ``eval/continual_sine/<method>/<order>/pos<r>``, x-axis: the
        sub-task just finished) and returns the summary (JSON-serialisable)."""
        tasks = self.sample_tasks(cfg.eval.split, cfg.eval.tasks, np.random.default_rng(0),
                                  order=tuple(range(self.config.subtasks)))
        result = forgetting_protocol(self, meta.init_state, tasks, lr=cfg.inner.lr, momentum=cfg.inner.momentum)
        result.update({"step": step, "split": cfg.eval.split, "tasks": len(tasks)})
        write_json_atomic(Path(run_dir) / "forgetting.json", result)
        if logger is not None:
            for key, mats in result["matrices"].items():
                for i, row in enumerate(mats["mean"]):
                    logger.scalars({f"eval/continual_sine/{key}/pos{r}": v for r, v in enumerate(row)
                                    if v is not None}, i)
        return {k: v for k, v in result.items() if k != "matrices"}


# ------------------------------------------------------------------------------------------------
# evaluation protocol


def forgetting(matrix: np.ndarray) -> float:
    """Mean over the sub-tasks before the last of (final loss − loss right after learning it)."""
    T = matrix.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([matrix[-1, r] - matrix[r, r] for r in range(T - 1)]))


def sequence_matrices(adapter: ContinualSineAdapter, state: dict[str, Tensor], tasks: Sequence[ContinualSineTask],
                      warp: bool = True, lr: float = 0.001, momentum: float = 0.0) -> np.ndarray:
    """[N, T, T] matrices of ``tasks`` learned with SGD from ``state`` (θ⁰ and, with ``warp``, φ).

    ``warp=False`` is the plain SGD baseline: the same MLP with the warp blocks removed, starting from the
    same task-layer parameters θ⁰ (the warp entries of ``state`` are ignored). Each task is learned from a
    fresh copy of its batch stream, so both learners see the same batches."""
    c = adapter.config
    out = []
    for task in tasks:
        model = adapter.make_model(torch.Generator().manual_seed(0), warp=None if warp else "none").to(adapter.device)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"state lacks {missing[:3]}")
        model.load_state_dict({k: state[k] for k in own})
        params = [p for n, p in model.named_parameters() if not n.startswith("warps.")]
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith("warps."))
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
        fresh = task.with_order(task.order)
        adapter.adapt(fresh, model, opt, c.steps)
        out.append(fresh.matrix)
    return np.stack(out)


def forgetting_protocol(adapter: ContinualSineAdapter, state: dict[str, Tensor],
                        tasks: Sequence[ContinualSineTask], lr: float = 0.001, momentum: float = 0.0,
                        orders: dict[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Matrices and summaries for {warp, sgd} × {train_order, random_order}."""
    T = adapter.config.subtasks
    orders = orders or {"train_order": tuple(range(T)), "random_order": RANDOM_ORDER}
    result: dict[str, Any] = {"orders": {k: list(v) for k, v in orders.items()}, "summary": {}, "matrices": {}}
    for oname, order in orders.items():
        ordered = [t.with_order(order) for t in tasks]
        for method, warp in (("warp", True), ("sgd", False)):
            mats = sequence_matrices(adapter, state, ordered, warp=warp, lr=lr, momentum=momentum)
            mean = mats.mean(0)
            key = f"{method}/{oname}"
            result["matrices"][key] = {"mean": lower_triangle(mean), "std": lower_triangle(curve_mean_std(mats)[1])}
            result["summary"][key] = {
                "final": mean[-1].tolist(),                 # loss on each presented sub-task after all T
                "final_mean": float(mean[-1].mean()),
                "forgetting": float(np.mean([forgetting(m) for m in mats])),
                "diagonal": np.diag(mean).tolist(),         # loss on each sub-task right after learning it
            }
    return result


def lower_triangle(m: np.ndarray) -> list[list[float | None]]:
    """A T×T matrix as JSON rows: entries above the diagonal (sub-tasks not yet presented) are None."""
    return [[float(m[i, r]) if r <= i else None for r in range(m.shape[1])] for i in range(m.shape[0])]
