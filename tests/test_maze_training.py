"""Continual maze training: WarpGrad Algorithm 3 timing, the two warp objectives, exact resume, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss
from agents.recurrent import RecurrentConfig, build_model
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch
from metarl.continual import ContinualWarp, ContinualWarpConfig, continual_update
from train.checkpoint import list_checkpoints, load_latest
from train.config import build_config, load_config
from train.tasks.maze import MazeTaskConfig, numpy_rng_state, set_numpy_rng_state
from train.trainer import train

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = MazeConfig(episode_length=12)


def tiny_model(seed: int = 0, name: str = "warp-rnn"):
    torch.manual_seed(seed)
    return build_model(name, RecurrentConfig(hidden_size=8, warp_hidden_size=6))


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params))


def test_warps_step_every_eta_iterations_and_task_parameters_every_iteration():
    eta = 3
    model = tiny_model()
    theta, phi = model.task_parameters(), model.warp_parameters()
    mazes = MazeBatch(4, TINY, seed=0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(theta, lr=1e-3)
    cw = ContinualWarp(phi, ContinualWarpConfig(warp_every=eta))
    with cw.watch(opt, theta) as watch:
        for i in range(2 * eta + 1):
            t0, p0 = snapshot(theta), snapshot(phi)
            loss = rollout_loss(rollout(model, mazes, generator=gen)).total
            assert continual_update(loss, opt, watch, list(model.parameters())) == "step"
            assert changed(t0, theta)
            assert changed(p0, phi) == ((i + 1) % eta == 0), f"iteration {i}"
            assert cw.window == (i + 1) % eta
    assert cw.task_steps == 2 * eta + 1 and cw.warp_steps == 2
    assert all(p.grad is None for p in phi)            # φ.grad never left behind for the next backward


def test_burn_in_takes_no_step_and_keeps_no_gradient():
    model = tiny_model()
    theta, phi = model.task_parameters(), model.warp_parameters()
    opt = torch.optim.Adam(theta, lr=1e-3)
    cw = ContinualWarp(phi, ContinualWarpConfig(warp_every=1))
    before = snapshot(model.parameters())
    with cw.watch(opt, theta) as watch:
        with torch.no_grad():
            loss = rollout_loss(rollout(model, MazeBatch(4, TINY, seed=0))).total
        assert continual_update(loss, opt, watch, list(model.parameters()), burning_in=True) == "burn_in"
    assert not changed(before, model.parameters()) and cw.task_steps == 0
    assert all(p.grad is None for p in model.parameters())


def _one_step_warp_gradient(objective: str):
    """The accumulated warp gradient after one task step, and what it should equal, computed apart."""
    model = tiny_model(1)
    theta, phi = model.task_parameters(), model.warp_parameters()
    mazes, gen = MazeBatch(5, TINY, seed=3), torch.Generator().manual_seed(3)
    meta_mazes, meta_gen = MazeBatch(5, TINY, seed=4), torch.Generator().manual_seed(4)
    meta_rng, meta_gen_state = numpy_rng_state(meta_mazes.rng), meta_gen.get_state()
    config = MazeA2CConfig()

    def meta_loss():
        return rollout_loss(rollout(model, meta_mazes, generator=meta_gen, fused=False), config).total

    opt = torch.optim.Adam(theta, lr=1e-2)
    cw = ContinualWarp(phi, ContinualWarpConfig(objective=objective, warp_every=10), meta_loss=meta_loss)
    with cw.watch(opt, theta) as watch:
        loss = rollout_loss(rollout(model, mazes, generator=gen, fused=False), config).total
        expected = torch.autograd.grad(loss, phi, retain_graph=True) if objective == "same_loss" else None
        assert continual_update(loss, opt, watch, list(model.parameters())) == "step"
    if objective == "meta_batch":           # a fresh batch's loss at the updated θ' (replayed from its seeds)
        set_numpy_rng_state(meta_mazes.rng, meta_rng)
        meta_gen.set_state(meta_gen_state)
        expected = torch.autograd.grad(meta_loss(), phi)
    return cw.accumulated(), list(expected), cw


@pytest.mark.parametrize("objective", ["same_loss", "meta_batch"])
def test_warp_objectives_give_their_gradient(objective):
    acc, expected, cw = _one_step_warp_gradient(objective)
    assert cw.window == 1
    assert all(a.isfinite().all() for a in acc)
    assert float(torch.stack([a.norm() for a in acc]).norm()) > 0
    for a, e in zip(acc, expected):
        torch.testing.assert_close(a, e)


def test_meta_batch_objective_differs_from_same_loss():
    same, _, _ = _one_step_warp_gradient("same_loss")
    meta, _, _ = _one_step_warp_gradient("meta_batch")
    diff = torch.stack([(a - b).norm() for a, b in zip(same, meta)]).norm()
    assert diff > 1e-3 * torch.stack([a.norm() for a in same]).norm()


def test_non_finite_contributions_are_skipped_and_counted():
    model = tiny_model()
    phi = model.warp_parameters()
    cw = ContinualWarp(phi, ContinualWarpConfig(warp_every=2))
    before = snapshot(phi)
    assert not cw.add([torch.full_like(p, float("nan")) for p in phi])
    assert cw.skipped == 1 and cw.window == 0
    logs = cw.meta_step()                       # nothing finite in the window: no φ step
    assert not changed(before, phi) and logs["meta/skipped_contributions"] == 1 and cw.warp_steps == 0
    assert cw.add([torch.ones_like(p) for p in phi])
    cw.meta_step()
    assert changed(before, phi) and cw.warp_steps == 1


def tiny_cfg(*overrides: str):
    data = {"name": "maze_tiny", "seed": 5, "task": "maze", "method": "no_pretraining",
            "maze": {"model": "warp-rnn", "hidden_size": 8, "warp_hidden_size": 6, "batch": 4,
                     "episode_length": 12, "episodes": 36, "warp_every": 3, "log_every": 2,
                     "warp_objective": "meta_batch", "burn_in": 1},
            "run": {"checkpoint_every": 4, "progress": False, "threads": 1}}
    return build_config(data, list(overrides))


def test_resume_after_stop_is_exact(tmp_path):
    cfg = tiny_cfg()                            # 9 iterations; warp steps at 4, 7 (after 1 burn-in)
    full = train(cfg, tmp_path / "full")
    split = train(cfg, tmp_path / "split", stop_after=6)     # stopped after 6; last checkpoint at 4 (mid-window)
    assert split["iterations"] == 6
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["checkpoint-0000004.pt"]
    resumed = train(cfg, tmp_path / "split", resume=True)
    a, b = load_latest(tmp_path / "full")[0], load_latest(tmp_path / "split")[0]
    assert int(a["step"]) == int(b["step"]) == 9
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["returns"], b["returns"])
    assert all(torch.equal(x, y) for x, y in zip(a["warp"]["acc"], b["warp"]["acc"]))
    for name in ("task_optimizer",):
        for i, s in a[name]["state"].items():
            assert all(torch.equal(s[k], b[name]["state"][i][k]) for k in s)
    assert full["warp_steps"] == resumed["warp_steps"] == 2
    assert full["return_last_mean"] == resumed["return_last_mean"]
    assert (tmp_path / "split" / "result.json").is_file()


def test_numpy_rng_state_round_trip():
    rng = np.random.default_rng(123)
    rng.random(7)
    state = numpy_rng_state(rng)
    expected = rng.integers(1 << 62, size=5)
    other = np.random.default_rng(0)
    set_numpy_rng_state(other, state)
    assert (other.integers(1 << 62, size=5) == expected).all()


def test_configs_hold_the_paper_protocol():
    for name, model in (("maze_warp_rnn", "warp-rnn"), ("maze_rnn", "rnn"), ("maze_lstm", "lstm"),
                        ("maze_warp_lstm", "warp-lstm")):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        mc: MazeTaskConfig = cfg.task_config
        assert (mc.model, mc.batch, mc.episode_length, mc.episodes, mc.hidden_size) == (model, 30, 200, 100_000, 100)
        assert (mc.task_lr, mc.warp_lr, mc.warp_every, mc.iterations) == (1e-3, 1e-3, 30, 3334)


def random_policy_return(episodes: int, seed: int = 0) -> float:
    mazes = MazeBatch(episodes, MazeConfig(), seed=seed)
    rng = np.random.default_rng(seed + 1)
    mazes.reset()
    info: dict = {}
    for _ in range(mazes.episode_length):
        *_, info = mazes.step(rng.integers(4, size=episodes))
    return float(info["episode_return"].mean())


def test_short_training_beats_the_random_policy(tmp_path):
    # A small LSTM with a large learning rate learns within 3000 episodes (100 iterations of 30 mazes,
    # full 13 × 13 maze, T = 200): the last 600 episodes average ≈ 12-14 vs ≈ 5.6 for uniform actions.
    cfg = build_config({"name": "maze_learn", "seed": 0, "task": "maze", "method": "no_pretraining",
                        "maze": {"model": "lstm", "hidden_size": 32, "episodes": 3000, "task_lr": 0.01,
                                 "final_window": 600},
                        "run": {"checkpoint_every": 0, "progress": False, "threads": 1}})
    result = train(cfg, tmp_path / "run")
    random_return = random_policy_return(3000)
    assert 5.0 < random_return < 6.5
    assert result["return_last_mean"] > random_return + 3.0, (result, random_return)


def test_results_table_groups_seeds(tmp_path):
    import json

    from train.tasks.maze import results_table
    for seed, ret in ((0, 10.0), (1, 20.0)):
        d = tmp_path / f"maze_x__{seed}"
        d.mkdir()
        (d / "result.json").write_text(json.dumps({"return_last_mean": ret, "wall_time_s": 120.0}))
    table = results_table(sorted(tmp_path.iterdir()))
    assert "| maze_x | 2 | 15.0 ± 5.0 | 10.0, 20.0 | 2.0, 2.0 |" in table
