"""Continual sine regression (WarpGrad App. J): the target and sub-interval batches, the continual
meta-objective's weights, its warp meta-gradient against an independent autograd computation, the
forgetting matrix on a scripted learner, the warp-vs-SGD comparison and Algorithm 3's flush."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from metarl.warpgrad import WarpGrad, WarpGradConfig
from train.tasks.continual_sine import (RANDOM_ORDER, ContinualMetaBatch, ContinualSineAdapter,
                                        ContinualSineConfig, ContinualSineTask, continual_weights, forgetting,
                                        mixture_target, sequence_matrices, subtask_bounds)

DT = torch.float64


@pytest.fixture(autouse=True)
def _float64_one_thread():
    """Tiny float64 models; one thread (shared machine)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(DT)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def tiny_config(**kw) -> ContinualSineConfig:
    base = dict(hidden=(4, 4), warp_hidden=3, subtasks=3, steps_per_subtask=2, batch_size=3, val_batch_size=2,
                test_points=4, warp_init="default")
    return ContinualSineConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# 1. target function and sub-interval batches


def test_target_hand_values():
    x = torch.tensor([[0.0], [1.0]])
    # o = 0 at x = 0: σ(0) = ½; f₁(0) = 2 sin(−π/2) = −2, f₂(0) = 3 sin 0 = 0  →  −1
    assert mixture_target(x[:1], 2.0, math.pi / 2, 3.0, 0.0, 0.0).item() == pytest.approx(-1.0, abs=1e-15)
    # o = −1 at x = 1: σ(0) = ½; f₁(1) = 2 sin(1 − π/2) = −2 cos 1, f₂(1) = 3 sin 1
    want = 0.5 * (-2 * math.cos(1.0)) + 0.5 * (3 * math.sin(1.0))
    assert mixture_target(x[1:], 2.0, math.pi / 2, 3.0, 0.0, -1.0).item() == pytest.approx(want, abs=1e-14)
    # far right of the gate, σ → 1: f ≈ f₁;  far left, σ → 0: f ≈ f₂
    big = torch.tensor([[30.0]])
    assert mixture_target(big, 1.5, 0.3, 4.0, 2.0, 0.0).item() == pytest.approx(1.5 * math.sin(29.7), abs=1e-12)
    assert mixture_target(-big, 1.5, 0.3, 4.0, 2.0, 0.0).item() == pytest.approx(4.0 * math.sin(-32.0), abs=1e-12)


def test_subtask_bounds_and_batches():
    assert subtask_bounds((-5.0, 5.0), 5) == [(-5.0, -3.0), (-3.0, -1.0), (-1.0, 1.0), (1.0, 3.0), (3.0, 5.0)]
    cfg = ContinualSineConfig(test_points=4)
    params = (2.0, 0.5, 1.0, 2.5, -1.0)
    task = ContinualSineTask(params, cfg, seed=3, key="t", order=RANDOM_ORDER)
    bounds = subtask_bounds((-5.0, 5.0), 5)
    for position, j in enumerate(RANDOM_ORDER):
        task.position = position
        assert task.subtask == j
        for _ in range(3):
            x, y = task.batch("train")
            lo, hi = bounds[j]
            assert x.shape == y.shape == (5, 1)
            assert bool(((x >= lo) & (x < hi)).all())
            torch.testing.assert_close(y, mixture_target(x, *params), rtol=0, atol=0)
    # evaluation grid: cell midpoints of the sub-interval
    x, y = task.test_batch(0)
    torch.testing.assert_close(x.squeeze(1), torch.tensor([-4.75, -4.25, -3.75, -3.25]), rtol=0, atol=1e-15)
    torch.testing.assert_close(y, mixture_target(x, *params))
    # the meta batch at position 2 holds val_batch_size points of each sub-task presented so far
    task.position = 2
    mb = task.batch("meta")
    assert isinstance(mb, ContinualMetaBatch) and mb.x.shape == (15, 1)
    assert mb.subtask.tolist() == [1] * 5 + [3] * 5 + [4] * 5
    for j in (1, 3, 4):
        lo, hi = bounds[j]
        xs = mb.x[mb.subtask == j]
        assert bool(((xs >= lo) & (xs < hi)).all())


def test_task_sampling_ranges_and_fixed_held_out():
    adapter = ContinualSineAdapter(ContinualSineConfig())
    tasks = adapter.sample_tasks("train", 200, np.random.default_rng(0))
    p = np.array([t.params for t in tasks])
    assert (p[:, [0, 2]] >= 0.1).all() and (p[:, [0, 2]] <= 5).all()
    assert (p[:, [1, 3]] >= 0).all() and (p[:, [1, 3]] <= math.pi).all()
    assert (p[:, 4] >= -5).all() and (p[:, 4] <= 5).all() and p[:, 4].min() < -4 and p[:, 4].max() > 4
    a = adapter.sample_tasks("test", 3, np.random.default_rng(1))
    b = adapter.sample_tasks("test", 3, np.random.default_rng(2))
    assert [t.params for t in a] == [t.params for t in b]
    assert all(t.order == (0, 1, 2, 3, 4) for t in a)


# ------------------------------------------------------------------------------------------------
# 2. the continual meta-objective's weights


def test_weights_hand_values():
    n, T = 20, 5
    assert continual_weights(3, T, n, "eq19") == pytest.approx([1 / 100, 1 / 80, 1 / 60])
    assert continual_weights(5, T, n, "eq19") == pytest.approx([1 / 100, 1 / 80, 1 / 60, 1 / 40, 1 / 20])
    assert continual_weights(3, T, n, "eq19_literal") == pytest.approx([1 / 60] * 3)
    assert continual_weights(1, T, n, "eq19_literal") == pytest.approx([1 / 100])
    assert continual_weights(3, T, n, "mean") == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError):
        continual_weights(6, T, n, "eq19")


def test_eq19_equalises_appearances():
    """Summed over the n points of every sub-task t ≥ i, sub-task i gets total weight 1 (eq19); the literal
    formula gives the harmonic number H_{T−i+1}; the App. C average gives Σ_{t≥i} n/t."""
    n, T = 20, 5
    for weighting, want in (("eq19", lambda i: 1.0),
                            ("eq19_literal", lambda i: sum(1 / k for k in range(1, T - i + 2))),
                            ("mean", lambda i: sum(n / t for t in range(i, T + 1)))):
        total = [0.0] * T
        for t in range(1, T + 1):
            for i, w in enumerate(continual_weights(t, T, n, weighting), start=1):
                total[i - 1] += n * w
        assert total == pytest.approx([want(i) for i in range(1, T + 1)]), weighting


class OffsetModel(nn.Module):
    """h(x) = f(x) + δ_j on sub-interval j: the loss on sub-task j is exactly δ_j²/2 on any batch."""

    def __init__(self, task: ContinualSineTask, delta) -> None:
        super().__init__()
        self.task = task
        self.delta = nn.Parameter(torch.as_tensor(delta, dtype=DT))

    def forward(self, x):
        j = ((x.squeeze(1) + 5.0) // 2.0).clamp(0, 4).long()
        return self.task.target(x) + self.delta[j].unsqueeze(1)


@pytest.mark.parametrize("weighting", ["eq19", "eq19_literal", "mean"])
def test_meta_loss_weights_known_subtask_losses(weighting):
    cfg = ContinualSineConfig(weighting=weighting)
    task = ContinualSineTask((2.0, 0.5, 1.0, 2.5, -1.0), cfg, seed=0, key="t", order=RANDOM_ORDER)
    delta = [0.3, -1.0, 2.0, 0.5, -0.7]
    model = OffsetModel(task, delta)
    L = [d * d / 2 for d in delta]                       # per-sub-interval losses
    for j in range(5):
        assert task.loss(model, task.test_batch(j)).item() == pytest.approx(L[j])
    n, T = 20, 5
    hand = {"eq19": lambda t, i: 1 / (n * (T - i + 1)), "eq19_literal": lambda t, i: 1 / (n * (T - t + 1)),
            "mean": lambda t, i: 1 / t}[weighting]
    for t in range(1, 6):
        task.position = t - 1
        want = sum(hand(t, i) * L[RANDOM_ORDER[i - 1]] for i in range(1, t + 1))
        assert task.loss(model, task.batch("meta")).item() == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# 3. the warp meta-gradient of the continual objective vs an independent computation


def _record_draws(task):
    log = []
    draw = task.draw

    def recording(j, m):
        x, y = draw(j, m)
        log.append((j, x, y))
        return x, y
    task.draw = recording
    return log


def _hand_forward(P, x, layers):
    h = x
    for i in range(layers):
        h = torch.relu(h @ P[f"body.{i}.weight"].T + P[f"body.{i}.bias"])
        u = torch.tanh(h @ P[f"warps.{i}.inner.weight"].T + P[f"warps.{i}.inner.bias"])
        h = h + u @ P[f"warps.{i}.outer.weight"].T + P[f"warps.{i}.outer.bias"]
    return h @ P["head.weight"].T + P["head.bias"]


@pytest.mark.parametrize("kind", ["full", "first_order"])
@pytest.mark.parametrize("weighting", ["eq19", "mean"])
def test_continual_warp_gradient_matches_independent_autograd(kind, weighting):
    cfg = tiny_config(weighting=weighting)
    adapter = ContinualSineAdapter(cfg)
    model = adapter.make_model(torch.Generator().manual_seed(0))
    assert next(model.parameters()).dtype == DT
    wg = WarpGrad(model, WarpGradConfig(objective=kind, algorithm="online", init_objective="none",
                                        final_point=False, meta_split="meta"))
    task = adapter.sample_tasks("train", 1, np.random.default_rng(5))[0]
    log = _record_draws(task)
    alpha = 0.05
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    wg.load_init(model)
    wg.prepare(model, task)
    opt = torch.optim.SGD(wg.task_parameters(model), lr=alpha)
    with wg.watch(model, opt, task) as watch:
        adapter.adapt(task, model, opt, cfg.steps, watch)
    wg.meta_step()
    got = wg.last_warp_grad

    # independent: replay the same draws with a hand-written forward and plain autograd
    layers, n, T, m = len(cfg.hidden), cfg.steps_per_subtask, cfg.subtasks, cfg.val_batch_size
    theta = {k: v for k, v in start.items() if not k.startswith("warps.")}
    phi = {k: v.clone().requires_grad_(True) for k, v in start.items() if k.startswith("warps.")}
    total = [torch.zeros_like(p) for p in phi.values()]
    draws = iter(log)
    for k in range(cfg.steps):
        t = k // n + 1
        _, xs, ys = next(draws)                                      # the real step's batch
        _, xb, yb = next(draws)                                      # the replayed step's batch
        val = [next(draws) for _ in range(t)]                        # D_val of sub-tasks 1..t
        th = {kk: v.detach().requires_grad_(True) for kk, v in theta.items()}
        task_loss = 0.5 * ((_hand_forward({**th, **phi}, xb, layers) - yb) ** 2).mean()
        g = torch.autograd.grad(task_loss, list(th.values()), create_graph=(kind == "full"))
        new = {kk: v - alpha * gi for (kk, v), gi in zip(th.items(), g)}
        if kind == "first_order":
            new = {kk: v.detach() for kk, v in new.items()}
        meta = 0.0
        for i, (_, xv, yv) in enumerate(val, start=1):
            w = 1 / (n * (T - i + 1)) if weighting == "eq19" else 1 / t
            meta = meta + w * ((_hand_forward({**new, **phi}, xv, layers) - yv) ** 2).sum() / (2 * m)
        for acc, gp in zip(total, torch.autograd.grad(meta, list(phi.values()))):
            acc += gp
        th0 = {kk: v.detach().requires_grad_(True) for kk, v in theta.items()}      # the real SGD step
        fixed = {kk: v.detach() for kk, v in phi.items()}
        loss = 0.5 * ((_hand_forward({**th0, **fixed}, xs, layers) - ys) ** 2).mean()
        gs = torch.autograd.grad(loss, list(th0.values()))
        theta = {kk: (v - alpha * gi).detach() for (kk, v), gi in zip(theta.items(), gs)}
    assert next(draws, None) is not None          # the final f(θ_K) batch, drawn after the last step
    named = dict(model.named_parameters())
    for kk, v in theta.items():                   # same trajectory
        torch.testing.assert_close(named[kk].detach(), v, rtol=1e-12, atol=1e-13)
    for g_got, g_want in zip(got, total):
        torch.testing.assert_close(g_got, g_want / cfg.steps, rtol=1e-9, atol=1e-13)
    assert sum(float(g.abs().sum()) for g in got) > 0


# ------------------------------------------------------------------------------------------------
# 4. the forgetting matrix on a scripted learner


class ScriptedLearner(nn.Module):
    """h(x) = f(x) + c_j + s on sub-interval j: on a batch of sub-task j the loss is (c_j + s)²/2 and the
    gradient is (c_j + s) for both c_j and the shared s, so learning one sub-task disturbs the others."""

    def __init__(self, task, c, s) -> None:
        super().__init__()
        self.task = task
        self.c = nn.Parameter(torch.tensor(c, dtype=DT))
        self.s = nn.Parameter(torch.tensor(s, dtype=DT))

    def forward(self, x):
        j = ((x.squeeze(1) + 5.0) // 2.0).clamp(0, 4).long()
        return self.task.target(x) + self.c[j].unsqueeze(1) + self.s


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4), RANDOM_ORDER])
def test_forgetting_matrix_on_scripted_learner(order):
    cfg = ContinualSineConfig(steps_per_subtask=3, test_points=7)
    adapter = ContinualSineAdapter(cfg)
    task = ContinualSineTask((1.0, 0.2, 3.0, 1.0, 0.5), cfg, seed=1, key="t", order=order)
    c0, s0, lr = [1.0, -2.0, 0.5, 1.5, -0.5], 0.8, 0.1
    model = ScriptedLearner(task, c0, s0)
    curve = adapter.adapt(task, model, torch.optim.SGD(model.parameters(), lr=lr), cfg.steps)
    assert len(curve) == cfg.steps + 1

    c, s = list(c0), s0                            # the same learning by hand
    want = np.zeros((5, 5))
    for i, j in enumerate(order):
        for _ in range(cfg.steps_per_subtask):
            r = c[j] + s
            c[j], s = c[j] - lr * r, s - lr * r
        want[i] = [(c[jj] + s) ** 2 / 2 for jj in order]
    np.testing.assert_allclose(task.matrix, want, rtol=1e-12, atol=1e-15)
    assert forgetting(task.matrix) == pytest.approx(np.mean([want[4, r] - want[r, r] for r in range(4)]))
    ev = adapter.evaluate(task, model)
    assert ev["test_loss"] == pytest.approx(want[4].mean())
    assert [ev[f"final_pos{r}"] for r in range(5)] == pytest.approx(list(want[4]))


def test_warp_and_sgd_coincide_at_identity_warps():
    """Fair comparison: with identity-initialised warps, the warp learner at φ⁰ and plain SGD on the MLP
    without warps (same θ⁰, same batches) produce the same matrices; trained warps change them."""
    cfg = tiny_config(hidden=(8, 8), warp_init="identity", steps_per_subtask=3, subtasks=5)
    adapter = ContinualSineAdapter(cfg)
    state = adapter.make_model(torch.Generator().manual_seed(0)).state_dict()
    tasks = adapter.sample_tasks("test", 2, np.random.default_rng(0), order=RANDOM_ORDER)
    warp = sequence_matrices(adapter, state, tasks, warp=True, lr=0.05)
    sgd = sequence_matrices(adapter, state, tasks, warp=False, lr=0.05)
    assert warp.shape == (2, 5, 5)
    np.testing.assert_allclose(warp, sgd, rtol=1e-12)
    state = {k: v + 0.3 if k.startswith("warps.") else v for k, v in state.items()}
    assert not np.allclose(sequence_matrices(adapter, state, tasks, warp=True, lr=0.05), sgd)


# ------------------------------------------------------------------------------------------------
# Algorithm 3: φ steps inside a running sequence


# Removed with MetaEvery / WarpGrad.flush(): continual mode is Algorithm 3 over one never-reset learner
# (method warpgrad_continual). That φ steps inside the running task, at meta-steps only, with the
# window's contributions, is checked through the trainer in
# tests/test_maze_training.py::test_trainer_moves_phi_exactly_at_meta_steps.


# ------------------------------------------------------------------------------------------------
# wiring: the configs through the generic trainer, then the full protocol (`metarl eval`)


def test_configs_train_and_evaluate_end_to_end(tmp_path):
    import json
    from pathlib import Path

    from train.config import load_config
    from train.evaluate import evaluate_run
    from train.continual_sine_report import table
    from train.trainer import train

    configs = Path(__file__).resolve().parent.parent / "configs"
    paper = load_config(configs / "continual_sine_warp.yaml")
    assert paper.meta.steps == 20000 and paper.task_config.weighting == "eq19"
    assert paper.method_config.algorithm == "online" and paper.method_config.init_objective == "none"
    torch.set_default_dtype(torch.float32)
    cfg = load_config(configs / "continual_sine_warp_cpu.yaml",
                      ["meta.steps=1", "eval.tasks=2", "continual_sine.hidden=[8, 8]", "continual_sine.warp_hidden=4",
                       "continual_sine.steps_per_subtask=2", "inner.steps=10", "warpgrad.stride=1"])
    keys = {"warp/train_order", "sgd/train_order", "warp/random_order", "sgd/random_order"}
    result = train(cfg, tmp_path)             # the trainer ends with the adapter's own protocol
    assert set(result["summary"]) == keys and (tmp_path / "forgetting.json").is_file()
    (tmp_path / "forgetting.json").unlink()
    summary = evaluate_run(tmp_path)          # `metarl eval RUN_DIR`
    assert set(summary["summary"]) == keys and summary["step"] == 1
    saved = json.loads((tmp_path / "forgetting.json").read_text())
    m = saved["matrices"]["warp/random_order"]["mean"]
    assert [sum(v is not None for v in row) for row in m] == [1, 2, 3, 4, 5]     # lower triangular
    rows = table([tmp_path, tmp_path])["rows"]
    assert rows["sgd/train_order"]["final_std"] == [0.0] * 5


def test_the_table_of_a_folder_without_forgetting_json_is_one_line_and_exit_2(tmp_path, capsys):
    from train.continual_sine_report import main
    assert main(["table", str(tmp_path / "no_such_run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m train.continual_sine_report: error: unreadable ") and err.count("\n") == 1
