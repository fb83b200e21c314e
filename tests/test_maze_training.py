"""Continual maze training: WarpGrad Algorithm 3 timing (metarl.continual.ContinualWarpGrad), the two warp
objectives, the trainer's continual mode (φ moves exactly at meta-steps, exact resume), learning, configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.maze_a2c import MazeA2CConfig, rollout, rollout_loss
from agents.recurrent import RecurrentConfig, build_model
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch
from metarl.base import MetaOptimizerConfig
from metarl.continual import ContinualWarpConfig, ContinualWarpGrad, continual_update
from train.checkpoint import list_checkpoints, load_latest
from train.config import build_config, load_config
from train.maze_report import results_table
from train.tasks.maze import MazeTaskConfig, numpy_rng_state, set_numpy_rng_state
from train.trainer import train

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = MazeConfig(episode_length=12)


def tiny_model(seed: int = 0, name: str = "warp-rnn"):
    torch.manual_seed(seed)
    return build_model(name, RecurrentConfig(hidden_size=8, warp_hidden_size=6))


def continual_warp(model, objective: str = "same_loss", lr: float = 1e-3) -> ContinualWarpGrad:
    """Algorithm 3 over φ = warp.* of a running ``model`` (tied to the meta-parameters), as the trainer sets it up."""
    meta = ContinualWarpGrad(model, ContinualWarpConfig(objective=objective),
                             meta_optimizer=MetaOptimizerConfig(name="adam", lr=lr), include=["warp."])
    meta.load_init(model)
    meta.prepare(model)
    return meta


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params))


def test_phi_is_the_warps_and_theta_the_rest():
    model = tiny_model()
    meta = continual_warp(model)
    theta, phi = meta.task_parameters(model), meta.watched(model)
    assert [id(p) for p in phi] == [id(p) for p in model.warp_parameters()]
    assert [id(p) for p in theta] == [id(p) for p in model.task_parameters()]
    # prepare ties the running model's φ to the meta-parameters: a meta-step moves the learner
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(phi, meta.params))
    with pytest.raises(ValueError):          # the task optimiser must not step φ
        meta.watch(model, torch.optim.Adam(model.parameters(), lr=1e-3))


def test_warps_step_every_eta_iterations_and_task_parameters_every_iteration():
    eta = 3
    model = tiny_model()
    meta = continual_warp(model)
    theta, phi = meta.task_parameters(model), meta.watched(model)
    mazes = MazeBatch(4, TINY, seed=0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(theta, lr=1e-3)
    with meta.watch(model, opt) as watch:
        for i in range(2 * eta + 1):
            t0, p0 = snapshot(theta), snapshot(phi)
            loss = rollout_loss(rollout(model, mazes, generator=gen)).total
            assert continual_update(loss, opt, watch, list(model.parameters())) == "step"
            assert all(p.grad is None for p in phi)     # moved into the window at once
            assert changed(t0, theta)
            assert not changed(p0, phi), f"iteration {i}: φ moved by a task step"
            if (i + 1) % eta == 0:
                assert meta.tasks == eta                  # the window's contributions
                logs = meta.meta_step()
                assert logs["meta/tasks"] == eta and logs["meta/warp_steps"] == (i + 1) // eta
            assert changed(p0, phi) == ((i + 1) % eta == 0), f"iteration {i}"
            assert meta.tasks == (i + 1) % eta
    assert watch.steps == 2 * eta + 1 and meta.warp_steps == 2 and meta.meta_steps == 2
    assert all(p.grad is None for p in phi)              # φ.grad never left behind for the next backward
    assert all(p.grad is None for p in meta.params)


def test_burn_in_takes_no_step_and_keeps_no_gradient():
    model = tiny_model()
    meta = continual_warp(model)
    opt = torch.optim.Adam(meta.task_parameters(model), lr=1e-3)
    before = snapshot(model.parameters())
    with meta.watch(model, opt) as watch:
        with torch.no_grad():
            loss = rollout_loss(rollout(model, MazeBatch(4, TINY, seed=0))).total
        assert continual_update(loss, opt, watch, list(model.parameters()), burning_in=True) == "burn_in"
        assert watch.steps == 0 and meta.tasks == 0
        logs = meta.meta_step()                 # a window of burn-in only: nothing contributed, no φ step
    assert not changed(before, model.parameters())
    assert logs["meta/tasks"] == 0 and meta.warp_steps == 0
    assert all(p.grad is None for p in model.parameters())


class MetaRollout:
    """The meta-batch objective's task: ``loss(model, batch("query"))`` rolls out a fresh batch of mazes."""

    def __init__(self, mazes: MazeBatch, generator: torch.Generator, config: MazeA2CConfig) -> None:
        self.mazes, self.generator, self.config = mazes, generator, config

    def batch(self, split: str) -> str:
        return split

    def loss(self, model, batch: str) -> torch.Tensor:
        assert batch == "query"
        return rollout_loss(rollout(model, self.mazes, generator=self.generator, fused=False), self.config).total


def _one_step_warp_gradient(objective: str):
    """The accumulated warp gradient after one task step, and what it should equal, computed apart."""
    model = tiny_model(1)
    meta = continual_warp(model, objective)
    theta, phi = meta.task_parameters(model), meta.watched(model)
    mazes, gen = MazeBatch(5, TINY, seed=3), torch.Generator().manual_seed(3)
    meta_mazes, meta_gen = MazeBatch(5, TINY, seed=4), torch.Generator().manual_seed(4)
    meta_rng, meta_gen_state = numpy_rng_state(meta_mazes.rng), meta_gen.get_state()
    config = MazeA2CConfig()
    task = MetaRollout(meta_mazes, meta_gen, config)

    opt = torch.optim.Adam(theta, lr=1e-2)
    with meta.watch(model, opt, task) as watch:
        loss = rollout_loss(rollout(model, mazes, generator=gen, fused=False), config).total
        expected = torch.autograd.grad(loss, phi, retain_graph=True) if objective == "same_loss" else None
        assert continual_update(loss, opt, watch, list(model.parameters())) == "step"
    assert all(p.grad is None for p in phi)
    if objective == "meta_batch":           # a fresh batch's loss at the updated θ' (replayed from its seeds)
        set_numpy_rng_state(meta_mazes.rng, meta_rng)
        meta_gen.set_state(meta_gen_state)
        expected = torch.autograd.grad(task.loss(model, "query"), phi)
    return [a.clone() for a in meta._acc], list(expected), meta


@pytest.mark.parametrize("objective", ["same_loss", "meta_batch"])
def test_warp_objectives_give_their_gradient(objective):
    acc, expected, meta = _one_step_warp_gradient(objective)
    assert meta.tasks == 1 and meta.skipped == 0
    for a, t in zip(acc, meta._task_acc):        # one step: the window's sum is the latest contribution
        assert torch.equal(a, t)
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
    meta = continual_warp(model)
    phi = meta.watched(model)
    before = snapshot(phi)
    assert not meta.contribute([torch.full_like(p, float("nan")) for p in phi])
    assert meta.skipped == 1 and meta.tasks == 0
    logs = meta.meta_step()                     # nothing finite in the window: no φ step
    assert not changed(before, phi) and logs["meta/skipped_tasks"] == 1 and meta.warp_steps == 0
    assert logs["meta/warp_steps"] == 0 and meta.skipped == 0
    # the step uses the mean of the window's finite contributions; the non-finite one is dropped
    assert meta.contribute([torch.ones_like(p) for p in phi])
    assert not meta.contribute([torch.full_like(p, float("inf")) for p in phi])
    assert meta.contribute([3 * torch.ones_like(p) for p in phi])
    assert meta.tasks == 2 and meta.skipped == 1
    for g in meta.meta_gradient():
        torch.testing.assert_close(g, torch.full_like(g, 2.0))
    logs = meta.meta_step()
    assert changed(before, phi) and meta.warp_steps == 1 and logs["meta/skipped_tasks"] == 1


# ------------------------------------------------------------------------------------------------
# the trainer's continual mode


def tiny_cfg(*overrides: str):
    data = {"name": "maze_tiny", "seed": 5, "task": "maze", "method": "warpgrad_continual",
            "warpgrad_continual": {"objective": "meta_batch"},
            "maze": {"model": "warp-rnn", "hidden_size": 8, "warp_hidden_size": 6, "batch": 4,
                     "episode_length": 12, "log_every": 2, "burn_in": 1},
            "meta": {"every": 3, "steps": 4, "include": ["warp."], "head": "learned",
                     "optimizer": {"name": "adam", "lr": 1e-3}},
            "run": {"checkpoint_every": 2, "progress": False, "threads": 1}}
    return build_config(data, list(overrides))


@pytest.mark.parametrize("objective", ["same_loss", "meta_batch"])
def test_trainer_moves_phi_exactly_at_meta_steps(tmp_path, monkeypatch, objective):
    """Algorithm 3 through the trainer: φ steps inside the one running task, at meta-steps only, with the
    window's contributions of that task; θ steps every iteration; the model's φ is the meta-parameter."""
    import train.tasks.maze as maze

    events: list[tuple] = []
    real_update, real_meta_step = maze.continual_update, ContinualWarpGrad.meta_step

    def update(loss, optimizer, watch, params, burning_in=False, clip_grad_norm=None):
        stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        theta0 = snapshot(p for p in params if id(p) in stepped)
        out = real_update(loss, optimizer, watch, params, burning_in, clip_grad_norm)
        phi = [p for p in params if id(p) not in stepped]
        theta = [p for p in params if id(p) in stepped]
        events.append(("task", out, snapshot(phi), changed(theta0, theta), all(p.grad is None for p in phi)))
        return out

    def meta_step(self):
        tasks = self.tasks
        logs = real_meta_step(self)
        events.append(("meta", tasks, snapshot(self.params), logs["meta/warp_steps"]))
        return logs

    monkeypatch.setattr(maze, "continual_update", update)
    monkeypatch.setattr(ContinualWarpGrad, "meta_step", meta_step)
    # 3 windows of η = 3; the first is all burn-in (no contribution: no φ step)
    cfg = tiny_cfg("meta.steps=3", "maze.burn_in=3", f"warpgrad_continual.objective={objective}")
    result = train(cfg, tmp_path / "run")
    assert [e[0] for e in events] == ["task", "task", "task", "meta"] * 3
    assert [e[1] for e in events if e[0] == "task"] == ["burn_in"] * 3 + ["step"] * 6
    assert [e[3] for e in events if e[0] == "task"] == [False] * 3 + [True] * 6      # θ: every task step
    assert all(e[4] for e in events if e[0] == "task")                              # φ.grad never left behind
    assert [(e[1], e[3]) for e in events if e[0] == "meta"] == [(0, 0.0), (3, 1.0), (3, 2.0)]
    phi = [e[2] for e in events if e[0] == "task"][0]                               # φ⁰ as the run saw it
    for k, e in enumerate(events):
        if e[0] == "task":
            assert not changed(phi, e[2]), f"event {k}: φ moved by a task step"
        else:
            assert changed(phi, e[2]) == (e[1] > 0), f"event {k}"
            if k + 1 < len(events):         # the learner runs on with the stepped meta-parameters
                assert not changed(e[2], events[k + 1][2])
        phi = e[2]
    state = load_latest(tmp_path / "run")[0]
    assert int(state["meta"]["warp_steps"]) == 2 and int(state["step"]) == 3
    model = state["stream"]["model"]
    for name, v in state["meta"]["init"].items():
        if name.startswith("warp."):
            assert torch.equal(model[name], v), name
    assert result["iterations"] == 9 and (tmp_path / "run" / "eval.json").is_file()


def test_resume_after_stop_is_exact(tmp_path):
    cfg = tiny_cfg()                            # 4 windows × 3 = 12 iterations (1 burn-in): 4 warp steps
    full = train(cfg, tmp_path / "full")
    split = train(cfg, tmp_path / "split", stop_after=3)     # stopped after 3 meta-steps; checkpoint at 2
    assert split == {}                                       # not finished: no result
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["checkpoint-0000002.pt"]
    stopped = load_latest(tmp_path / "split")[0]
    assert stopped["adapter"]["returns"].shape == (6, 4) and not (tmp_path / "split" / "eval.json").exists()
    resumed = train(cfg, tmp_path / "split", resume=True)
    a, b = load_latest(tmp_path / "full")[0], load_latest(tmp_path / "split")[0]
    assert int(a["step"]) == int(b["step"]) == 4
    for k, v in a["stream"]["model"].items():
        assert torch.equal(v, b["stream"]["model"][k]), k
    for k, v in a["meta"]["init"].items():
        assert torch.equal(v, b["meta"]["init"][k]), k
    assert a["adapter"]["returns"].shape == (12, 4)
    assert torch.equal(a["adapter"]["returns"], b["adapter"]["returns"])
    assert all(torch.equal(x, y) for x, y in zip(a["meta"]["acc"], b["meta"]["acc"]))
    assert torch.equal(a["meta"]["counters"], b["meta"]["counters"])
    for opt_a, opt_b in ((a["stream"]["optimizer"], b["stream"]["optimizer"]),
                         (a["meta"]["meta_optimizer"], b["meta"]["meta_optimizer"])):
        assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
        for i, s in opt_a["state"].items():
            assert all(torch.equal(s[k], opt_b["state"][i][k]) for k in s)
    assert int(a["meta"]["warp_steps"]) == int(b["meta"]["warp_steps"]) == 4
    assert full["return_last_mean"] == resumed["return_last_mean"]
    assert full["iterations"] == resumed["iterations"] == 12
    assert (tmp_path / "split" / "eval.json").is_file()


def test_numpy_rng_state_round_trip():
    rng = np.random.default_rng(123)
    rng.random(7)
    state = numpy_rng_state(rng)
    expected = rng.integers(1 << 62, size=5)
    other = np.random.default_rng(0)
    set_numpy_rng_state(other, state)
    assert (other.integers(1 << 62, size=5) == expected).all()


def test_configs_hold_the_paper_protocol():
    for name, model, method in (("maze_warp_rnn", "warp-rnn", "warpgrad_continual"),
                                ("maze_rnn", "rnn", "no_pretraining"), ("maze_lstm", "lstm", "no_pretraining"),
                                ("maze_warp_lstm", "warp-lstm", "warpgrad_continual")):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        mc: MazeTaskConfig = cfg.task_config
        assert (mc.model, mc.batch, mc.episode_length, mc.hidden_size) == (model, 30, 200, 100), name
        assert mc.task_lr == 1e-3 and cfg.method == method and cfg.meta.head == "learned", name
        assert cfg.meta.every == 30, name                                   # η
        iterations = cfg.meta.steps * cfg.meta.every
        assert iterations >= 3334 and iterations * mc.batch >= 100_000, name    # ≥ 100k episodes
        if method == "warpgrad_continual":
            assert list(cfg.meta.include) == ["warp."], name
            assert (cfg.meta.optimizer.name, cfg.meta.optimizer.lr) == ("adam", 1e-3), name


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
                        "maze": {"model": "lstm", "hidden_size": 32, "task_lr": 0.01, "final_window": 600},
                        "meta": {"every": 10, "steps": 10, "head": "learned"},
                        "run": {"checkpoint_every": 0, "progress": False, "threads": 1}})
    result = train(cfg, tmp_path / "run")
    assert result["iterations"] == 100 and result["episodes"] == 3000
    random_return = random_policy_return(3000)
    assert 5.0 < random_return < 6.5
    assert result["return_last_mean"] > random_return + 3.0, (result, random_return)


def test_results_table_groups_seeds(tmp_path):
    for seed, ret in ((0, 10.0), (1, 20.0)):
        d = tmp_path / f"maze_x__{seed}"
        d.mkdir()
        (d / "eval.json").write_text(json.dumps({"return_last_mean": ret, "wall_time_s": 120.0}))
    (tmp_path / "maze_y__0").mkdir()            # unfinished run (no eval.json): left out
    (tmp_path / "maze_y__0" / "result.json").write_text(json.dumps({"return_last_mean": 1.0, "wall_time_s": 1.0}))
    table = results_table(sorted(tmp_path.iterdir()))
    assert "| maze_x | 2 | 15.0 ± 7.1 | 10.0, 20.0 | 2.0, 2.0 |" in table     # the sample std
    assert "maze_y" not in table


def test_the_maze_clips_at_maze_clip_grad_norm_only(tmp_path, monkeypatch):
    """One clip key per task (TaskAdapter.clip_key): every task step of the maze is clipped at
    maze.clip_grad_norm, and a clip handed to its inner loop from elsewhere is an error, not silently lost
    (inner.clip_grad_norm is refused at config time: tests/test_cli_habits.py)."""
    import train.tasks.maze as maze
    from train.config_usage import unused_keys

    seen = []
    real_update = maze.continual_update

    def update(loss, optimizer, watch, params, burning_in=False, clip_grad_norm=None):
        seen.append(clip_grad_norm)
        return real_update(loss, optimizer, watch, params, burning_in, clip_grad_norm)

    monkeypatch.setattr(maze, "continual_update", update)
    cfg = tiny_cfg("meta.steps=1", "maze.burn_in=0", "maze.clip_grad_norm=0.5")
    assert "maze.clip_grad_norm only" in unused_keys(cfg)["inner.clip_grad_norm"]
    train(cfg, tmp_path / "run")
    assert seen == [0.5] * 3
    from train.trainer import setup
    adapter, meta = setup(cfg)
    task = adapter.sample_tasks("train", 1, np.random.default_rng(0))[0]
    model = adapter.make_model(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="maze.clip_grad_norm only"):
        adapter.adapt(task, model, adapter.make_optimizer(model, meta.task_parameters(model), cfg.inner), 1,
                      clip_grad_norm=1.0)
