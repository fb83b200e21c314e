"""Seeds as a batch dimension (maze.seeds): S seeds trained as one batch end where each would end alone — same
parameters (≤ 1e-6), same episode returns — for every maze model; per-seed Adam, clipping and non-finite
skipping; exact resume; per-seed run folders; the results table; the Backpropamine configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.recurrent import MODELS, RecurrentConfig, build_model
from agents.seed_batched import build_seed_batched
from metarl.seed_batch import SeedAdam, clip_grad_norm_seeds
from train.checkpoint import load_latest
from maze_fixture import tiny_maze_data
from train.config import build_config, load_config
from train.maze_report import results_table
from train.tasks.maze import MazeAdapter, MazeTaskConfig
from train.trainer import train

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SEEDS = [3, 1, 4]
TOL = 1e-6


# ------------------------------------------------------------------------------------------------
# per-seed pieces


def test_seed_adam_is_one_adam_per_seed_and_skips_inactive_seeds_exactly():
    torch.manual_seed(0)
    S = 3
    p = torch.nn.Parameter(torch.randn(S, 4, 5))
    singles = [torch.nn.Parameter(p.detach()[k].clone()) for k in range(S)]
    opt = SeedAdam([p], S, lr=1e-2, eps=1e-4)
    opts = [torch.optim.Adam([q], lr=1e-2, eps=1e-4) for q in singles]
    masks = [None, torch.tensor([True, False, True]), None, torch.tensor([False, False, True]), None]
    for mask in masks:
        g = torch.randn(S, 4, 5)
        p.grad = g.clone()
        opt.active = mask
        opt.step()
        for k, (q, o) in enumerate(zip(singles, opts)):
            if mask is None or mask[k]:
                q.grad = g[k].clone()
                o.step()
    for k, (q, o) in enumerate(zip(singles, opts)):
        assert torch.equal(p.detach()[k], q.detach()), k                  # bit for bit
        assert float(opt.state[p]["step"][k]) == float(o.state[q]["step"])
        assert torch.equal(opt.state[p]["exp_avg_sq"][k], o.state[q]["exp_avg_sq"])


def test_per_seed_clipping_is_clip_grad_norm_per_seed():
    torch.manual_seed(1)
    grads = [torch.randn(3, 6, 2) * torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1), torch.randn(3, 7)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    clip_grad_norm_seeds(params, 1.0, 3)
    for k in range(3):
        alone = [torch.nn.Parameter(torch.zeros_like(g[k])) for g in grads]
        for q, g in zip(alone, grads):
            q.grad = g[k].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for p, q in zip(params, alone):
            torch.testing.assert_close(p.grad[k], q.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stacked_models_are_the_seeds_models(name):
    config = RecurrentConfig(hidden_size=8, warp_hidden_size=6)
    batched = build_seed_batched(name, config, SEEDS)
    assert batched.seeds == len(SEEDS)
    for k, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        alone = build_model(name, config)
        assert list(batched.seed_state_dict(k)) == list(alone.state_dict())
        for n, v in alone.state_dict().items():
            assert torch.equal(batched.seed_state_dict(k)[n], v), n
    x = torch.rand(len(SEEDS), 2, 17)
    logits, value, _ = batched.forward_step(x, batched.initial_state(2))
    for k, alone in enumerate(batched.unstack()):
        lg, v, _ = alone.forward_step(x[k], alone.initial_state(2))
        torch.testing.assert_close(logits[k], lg, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(value[k], v, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# batched training = each seed alone


def tiny_cfg(model: str, seed: int, seeds: list[int], *overrides: str):
    return build_config(tiny_maze_data(model, seed, seeds), list(overrides))


def assert_seed_matches_alone(batched: dict, k: int, alone: dict) -> None:
    for n, v in alone["stream"]["model"].items():
        assert (batched["stream"]["model"][n][k] - v).abs().max() <= TOL, n
    for n, v in alone["meta"]["init"].items():          # the warps φ (and θ⁰)
        assert (batched["meta"]["init"][n][k] - v).abs().max() <= TOL, n
    assert torch.equal(batched["adapter"]["returns"][:, k], alone["adapter"]["returns"])
    assert int(batched["adapter"]["counters"][k]) == int(alone["adapter"]["counters"][0])     # skipped steps
    for i, s in alone["stream"]["optimizer"]["state"].items():
        assert float(batched["stream"]["optimizer"]["state"][i]["step"][k]) == float(s["step"])


@pytest.mark.parametrize("model", ["rnn", "lstm", "warp-rnn", "warp-lstm", "plastic-rnn", "plastic-rnn-retroactive"])
def test_seeds_trained_as_a_batch_end_where_each_alone_ends(tmp_path, model):
    """Three seeds × 9 iterations (1 burn-in, clipping at 0.5; the meta-batch warp objective for Warp-RNN;
    element-0 value baseline and Adam ε 1e-4 for the plastic RNNs)."""
    result = train(tiny_cfg(model, 0, SEEDS), tmp_path / "batch")
    batched = load_latest(tmp_path / "batch")[0]
    assert batched["adapter"]["returns"].shape == (9, len(SEEDS), 4)
    for k, seed in enumerate(SEEDS):
        alone_result = train(tiny_cfg(model, seed, []), tmp_path / f"alone{seed}")
        alone = load_latest(tmp_path / f"alone{seed}")[0]
        assert_seed_matches_alone(batched, k, alone)
        if model.startswith("warp"):
            assert int(batched["meta"]["seed_counters"][2][k]) == int(alone["meta"]["warp_steps"]) == 3
        per_seed = result["per_seed"][str(seed)]
        for key in ("return_last_mean", "iterations", "episodes", "skipped_steps"):
            assert per_seed[key] == alone_result[key], key
        # the seed's folder reads as its run alone
        folder = tmp_path / "batch" / f"seed_{seed}"
        saved = json.loads((folder / "eval.json").read_text())
        assert saved["seed"] == seed and saved["return_last_mean"] == alone_result["return_last_mean"]
        assert list((folder / "games").glob("events.out.tfevents.*"))     # its curves, where a run has them
        cfg = load_config(folder / "config.yaml")
        assert cfg.seed == seed and cfg.task_config.seeds == []
        split = load_latest(folder)[0]               # its final checkpoint, single-seed format
        for n, v in alone["stream"]["model"].items():
            assert (split["stream"]["model"][n] - v).abs().max() <= TOL, n
        assert torch.equal(split["adapter"]["returns"], alone["adapter"]["returns"])


def test_a_seed_split_from_a_batch_continues_alone_as_it_would_have(tmp_path):
    train(tiny_cfg("warp-rnn", 0, SEEDS), tmp_path / "batch")
    folder = tmp_path / "batch" / "seed_1"
    longer = tiny_cfg("warp-rnn", 1, [], "meta.steps=5")
    train(longer, folder, resume=True)                       # seed 1 alone from the batch's checkpoint
    train(longer, tmp_path / "alone")                         # seed 1 alone from the start
    a, b = load_latest(folder)[0], load_latest(tmp_path / "alone")[0]
    assert int(a["step"]) == int(b["step"]) == 5
    for n, v in b["stream"]["model"].items():
        assert (a["stream"]["model"][n] - v).abs().max() <= TOL, n
    assert torch.equal(a["adapter"]["returns"], b["adapter"]["returns"])


def test_a_non_finite_seed_is_skipped_and_the_others_train_on(tmp_path, monkeypatch):
    """Seed 1's recurrent weights are NaN: every one of its iterations is skipped (no task step, no warp
    contribution, no query rollout), exactly as when it runs alone; seeds 3 and 4 are unaffected."""
    from train.tasks.maze import SeedBatchedMazeAdapter
    real_alone, real_batched = MazeAdapter.make_model, SeedBatchedMazeAdapter.make_model

    def alone(self, generator, task=None):
        model = real_alone(self, generator, task)
        if self.seed == 1:
            with torch.no_grad():
                model.weight_hh.fill_(float("nan"))
        return model

    def batched(self, generator, task=None):
        model = real_batched(self, generator, task)
        if 1 in self.seeds:
            with torch.no_grad():
                model.weight_hh[self.seeds.index(1)] = float("nan")
        return model

    monkeypatch.setattr(MazeAdapter, "make_model", alone)
    monkeypatch.setattr(SeedBatchedMazeAdapter, "make_model", batched)
    result = train(tiny_cfg("warp-rnn", 0, SEEDS), tmp_path / "batch")
    batched = load_latest(tmp_path / "batch")[0]
    assert result["per_seed"]["1"]["skipped_steps"] == 8 and result["per_seed"]["3"]["skipped_steps"] == 0
    for k, seed in enumerate(SEEDS):
        train(tiny_cfg("warp-rnn", seed, []), tmp_path / f"alone{seed}")
        alone = load_latest(tmp_path / f"alone{seed}")[0]
        if seed == 1:
            for n, v in alone["stream"]["model"].items():
                assert torch.equal(batched["stream"]["model"][n][k].isnan(), v.isnan()), n
            assert torch.equal(batched["adapter"]["returns"][:, k], alone["adapter"]["returns"])
            assert torch.equal(batched["adapter"]["meta_maze_rng"][k], alone["adapter"]["meta_maze_rng"])
            assert torch.equal(batched["adapter"]["meta_sampler"][k], alone["adapter"]["meta_sampler"])
            assert int(batched["meta"]["seed_counters"][2][k]) == int(alone["meta"]["warp_steps"]) == 0
        else:
            assert_seed_matches_alone(batched, k, alone)
            assert torch.equal(batched["adapter"]["meta_maze_rng"][k], alone["adapter"]["meta_maze_rng"])


def test_batched_resume_is_exact(tmp_path):
    cfg = tiny_cfg("warp-rnn", 0, SEEDS, "meta.steps=4")
    full = train(cfg, tmp_path / "full")
    assert train(cfg, tmp_path / "split", stop_after=3) == {}
    resumed = train(cfg, tmp_path / "split", resume=True)
    a, b = load_latest(tmp_path / "full")[0], load_latest(tmp_path / "split")[0]

    def same(x, y, path=""):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for key in x:
                same(x[key], y[key], f"{path}.{key}")
        elif isinstance(x, (list, tuple)):
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{path}[{i}]")
        elif isinstance(x, torch.Tensor) and not path.endswith(("wall_time", "window")):
            assert torch.equal(x, y), path

    same({k: a[k] for k in ("stream", "meta", "adapter")}, {k: b[k] for k in ("stream", "meta", "adapter")})
    assert full["per_seed"] == {k: {**v, "wall_time_s": full["per_seed"][k]["wall_time_s"]}
                                for k, v in resumed["per_seed"].items()}

    # a finished batched run extended by raising meta.steps (how longer runs are made in parts) ends as the
    # longer run does
    train(tiny_cfg("warp-rnn", 0, SEEDS, "meta.steps=2"), tmp_path / "extended")
    extended = train(cfg, tmp_path / "extended", resume=True)
    c = load_latest(tmp_path / "extended")[0]
    same({k: a[k] for k in ("stream", "meta", "adapter")}, {k: c[k] for k in ("stream", "meta", "adapter")})
    assert {k: v["return_last_mean"] for k, v in extended["per_seed"].items()} == \
        {k: v["return_last_mean"] for k, v in full["per_seed"].items()}
    assert int(c["step"]) == int(a["step"]) == 4
    for seed in SEEDS:
        saved = json.loads((tmp_path / "extended" / f"seed_{seed}" / "eval.json").read_text())
        assert saved["return_last_mean"] == full["per_seed"][str(seed)]["return_last_mean"]
        mine, theirs = (load_latest(tmp_path / run / f"seed_{seed}")[0] for run in ("extended", "full"))
        assert int(mine["step"]) == int(theirs["step"]) == 4
        same(mine["stream"], theirs["stream"], f"seed_{seed}")


# ------------------------------------------------------------------------------------------------
# results table, configs


def test_results_table_gives_a_batched_run_one_value_per_seed(tmp_path):
    single = tmp_path / "maze_x__0__1"
    single.mkdir()
    (single / "eval.json").write_text(json.dumps({"return_last_mean": 10.0, "wall_time_s": 60.0}))
    batch = tmp_path / "maze_x__0__2"
    (batch / "seed_1").mkdir(parents=True)
    (batch / "eval.json").write_text(json.dumps({
        "seeds": [1, 2], "return_last_mean": 25.0, "wall_time_s": 120.0,
        "per_seed": {"1": {"return_last_mean": 20.0}, "2": {"return_last_mean": 30.0}}}))
    (batch / "seed_1" / "eval.json").write_text(json.dumps({"name": "maze_x", "seed": 1, "return_last_mean": 20.0,
                                                            "wall_time_s": 120.0}))
    table = results_table([single, batch, batch / "seed_1"])     # the seed folder is not counted twice
    assert "| maze_x | 3 | 20.0 ± 10.0 | 10.0, 20.0, 30.0 | 1.0, 2.0 for 2 batched |" in table
    alone = results_table([batch / "seed_1"])                     # a seed folder alone: grouped by its name
    assert "| maze_x | 1 | 20.0 ± — | 20.0 |" in alone


def test_seed_batched_runs_of_one_config_name_are_one_group(tmp_path):
    """Seeds 0–1 and 2–3 trained as two batched runs of one experiment (config ``name``) report as 4 seeds."""
    for folder, seeds in (("plastic_s0-1", (0, 1)), ("plastic_s2-3", (2, 3))):
        d = tmp_path / folder
        d.mkdir()
        (d / "config.yaml").write_text("name: maze_plastic\nseed: 0\n")
        (d / "eval.json").write_text(json.dumps({
            "seeds": list(seeds), "return_last_mean": 0.0, "wall_time_s": 60.0,
            "per_seed": {str(k): {"return_last_mean": 10.0 * (k + 1)} for k in seeds}}))
    table = results_table(sorted(tmp_path.iterdir()))
    assert "| maze_plastic | 4 | 25.0 ± 12.9 | 10.0, 20.0, 30.0, 40.0 | 1.0 for 2 batched, 1.0 for 2 batched |" in table


def test_maze_report_with_an_unreadable_config_is_one_line_and_exit_2(tmp_path, capsys):
    from train.maze_report import main
    d = tmp_path / "maze_x__0"
    d.mkdir()
    (d / "config.yaml").write_text("name: [unclosed\n")
    (d / "eval.json").write_text(json.dumps({"return_last_mean": 1.0, "wall_time_s": 1.0}))
    with pytest.raises(SystemExit) as e:
        main(["table", str(d)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unreadable" in err and "Traceback" not in err and err.count("\n") == 1


def test_maze_report_with_a_corrupt_eval_json_is_one_line_and_exit_2(tmp_path, capsys):
    from train.maze_report import main
    d = tmp_path / "maze_x__0"
    d.mkdir()
    (d / "eval.json").write_text("{truncated")
    with pytest.raises(SystemExit) as e:
        main(["table", str(d)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unreadable {d / 'eval.json'}" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", (["table"], ["curves", "--out", "x.png"], ["areas"]))
def test_maze_report_on_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys, command):
    from train.maze_report import main
    with pytest.raises(SystemExit) as e:
        main([*(str(tmp_path / c) if c.endswith(".png") else c for c in command), str(tmp_path / "no_such_run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("python -m train.maze_report: error: ") and "no_such_run" in err
    assert err.count("\n") == 1


def test_maze_report_curves_of_a_folder_without_returns_is_one_line_and_exit_2(tmp_path, capsys):
    from train.maze_report import main
    (tmp_path / "not_a_maze_run").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["curves", "--out", str(tmp_path / "x.png"), str(tmp_path / "not_a_maze_run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no episode returns logged" in err and err.count("\n") == 1


def test_backpropamine_configs_hold_its_settings():
    for name, model in (("maze_rnn_backpropamine", "rnn"), ("maze_plastic_simple", "plastic-rnn"),
                        ("maze_plastic_retroactive", "plastic-rnn-retroactive")):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        mc: MazeTaskConfig = cfg.task_config
        assert mc.model == model and cfg.method == "no_pretraining", name
        assert (mc.task_lr, mc.adam_eps, mc.clip_grad_norm, mc.burn_in) == (1e-4, 1e-4, 4.0, 100), name
        assert (mc.value_baseline, mc.init, mc.hidden_size, mc.batch, mc.episode_length) == \
            ("element0", "backpropamine", 100, 30, 200), name
        assert len(mc.seeds) >= 5 and cfg.meta.steps * cfg.meta.every >= 10_080, name
    for name in ("maze_warp_rnn_10seeds", "maze_rnn_10seeds", "maze_lstm_10seeds", "maze_warp_lstm_10seeds"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        mc = cfg.task_config
        assert mc.seeds == list(range(10)) and cfg.meta.steps * cfg.meta.every >= 10_080, name   # issue 33
        assert (mc.task_lr, mc.adam_eps, mc.clip_grad_norm, mc.burn_in, mc.value_baseline) == \
            (1e-3, 1e-8, 0.0, 0, "per_element"), name


def test_backpropamine_init_of_the_plain_rnn():
    torch.manual_seed(0)
    m = build_model("rnn", RecurrentConfig(init="backpropamine"))
    w = m.weight_hh.detach()
    assert 0.0 <= float(w.min()) and float(w.max()) <= 0.01 and float(w.mean()) == pytest.approx(0.005, abs=5e-4)
    with pytest.raises(ValueError):
        MazeTaskConfig(model="lstm", init="backpropamine")
    assert float(build_model("plastic-rnn-retroactive").eta.detach()) == pytest.approx(0.1)
    assert np.isfinite(float(build_model("rnn").weight_hh.detach().abs().max()))


def test_maze_iteration_benchmark_reports_single_and_batched_costs():
    from train.benchmarks.maze_iteration import run

    result = run(["--models", "rnn,warp-rnn", "--mazes", "2", "--steps", "4", "--seeds", "2", "--warmup", "0",
                  "--iterations", "1"])
    assert result["batched_seeds"] == 2 and result["device"] == "cpu"
    for key in ("ms_per_iteration", "ms_per_seed_iteration_batched", "cpu_ms_per_seed_iteration_batched",
                "batched_per_seed_ratio"):
        assert set(result[key]) == {"rnn", "warp-rnn"} and all(v > 0 for v in result[key].values()), key


def test_maze_curves_are_the_mean_and_quartiles_over_seeds(tmp_path):
    """curves: a batched run's seed folders and single-seed runs grouped by name, smoothed per seed, then
    the mean and the 25th/75th percentiles over seeds, equal to a direct computation."""
    from torch.utils.tensorboard import SummaryWriter

    from train.maze_report import plot_curves, seed_curves
    rng = np.random.default_rng(0)
    returns = rng.normal(10, 5, size=(4, 50))
    batch = tmp_path / "maze_x_4seeds"
    for k in range(3):                                  # three seeds of a batched run
        with SummaryWriter(str(batch / f"seed_{k}" / "games")) as w:
            for i, r in enumerate(returns[k]):
                w.add_scalar("charts/episodic_return", r, 30 * (i + 1))
    single = tmp_path / "maze_y__0"                    # a single-seed run of another config
    with SummaryWriter(str(single / "games")) as w:
        for i, r in enumerate(returns[3]):
            w.add_scalar("charts/episodic_return", r, 30 * (i + 1))
    curves = seed_curves([batch, single], window=10)
    assert set(curves) == {"maze_x_4seeds", "maze_y"} and curves["maze_x_4seeds"][1].shape == (3, 50)
    summary = plot_curves([batch, single], tmp_path / "curves.png", window=10)
    last = returns[:3, -10:].mean(1)                   # the last point: each seed's last 10 iterations
    assert summary["maze_x_4seeds"]["mean"] == pytest.approx(last.mean(), rel=1e-6)
    assert summary["maze_x_4seeds"]["q25"] == pytest.approx(np.percentile(last, 25), rel=1e-6)
    assert summary["maze_x_4seeds"]["q75"] == pytest.approx(np.percentile(last, 75), rel=1e-6)
    assert summary["maze_y"]["seeds"] == 1 and summary["maze_x_4seeds"]["episodes"] == 1500
    assert summary["maze_y"]["window_iterations"] == 10
    # curves shorter than the window are left unsmoothed, and said to be
    assert plot_curves([batch, single], tmp_path / "short.png", window=100)["maze_y"]["window_iterations"] == 0
    assert (tmp_path / "curves.png").stat().st_size > 0

    # a run logging every 5 iterations: its window of 10 iterations is 2 logged points
    coarse = tmp_path / "maze_z__0"
    with SummaryWriter(str(coarse / "games")) as w:
        for i, r in enumerate(returns[3, :10]):
            w.add_scalar("charts/episodic_return", r, 150 * (i + 1))
    (coarse / "config.yaml").write_text("name: maze_z\nmaze:\n  log_every: 5\n")
    assert seed_curves([coarse], window=10)["maze_z"][1][0, -1] == pytest.approx(returns[3, 8:10].mean(), rel=1e-6)


def test_maze_crossings_and_curves_csv_equal_a_direct_computation(tmp_path, capsys):
    """crossings: the episodes at which the mean over seeds of the smoothed curves, and each seed's own, first
    reach a return (None / "not reached" where they never do); curves --csv: each seed's smoothed curve, the
    points of the figure. Bad --levels: one line, exit 2."""
    from torch.utils.tensorboard import SummaryWriter

    from train.maze_report import crossings, main
    ramps = [np.linspace(0, 30, 40), np.linspace(0, 50, 40), np.linspace(0, 60, 40)]   # three seeds
    batch = tmp_path / "maze_ramp_3seeds"
    for k, ramp in enumerate(ramps):
        with SummaryWriter(str(batch / f"seed_{k}" / "games")) as w:
            for i, r in enumerate(ramp):
                w.add_scalar("charts/episodic_return", r, 30 * (i + 1))
    found = crossings([batch], levels=(20.0, 40.0), window=1)                     # unsmoothed: exact crossings
    episodes = 30 * np.arange(1, 41)
    first = [lambda y, lv=lv: episodes[np.flatnonzero(y >= lv)[0]] if (y >= lv).any() else None for lv in (20, 40)]
    for level, reach in zip(("20", "40"), first):
        c = found["maze_ramp_3seeds"][level]
        assert c["seeds"] == [reach(r) for r in ramps]
        assert c["mean_curve"] == reach(np.mean(ramps, 0))
    assert found["maze_ramp_3seeds"]["40"]["seeds"][0] is None                    # seed 0 peaks at 30
    main(["crossings", str(batch), "--levels", "20,40", "--window", "1", "--json", str(tmp_path / "x.json")])
    table = capsys.readouterr().out
    assert "| maze_ramp_3seeds | 40 |" in table and "| 2 of 3 |" in table
    assert json.loads((tmp_path / "x.json").read_text()) == found
    main(["curves", str(batch), "--window", "1", "--out", str(tmp_path / "c.png"), "--csv", str(tmp_path / "c.csv")])
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0] == "run,seed,episodes,return" and len(rows) == 1 + 3 * 40
    assert rows[1 + 40 + 39] == f"maze_ramp_3seeds,1,1200,{ramps[1][-1]:.6g}"
    with pytest.raises(SystemExit) as e:
        main(["crossings", str(batch), "--levels", "twenty"])
    assert e.value.code == 2 and "--levels takes numbers" in capsys.readouterr().err


def test_maze_learning_areas_are_each_seeds_mean_return_over_the_run_and_its_start(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from train.maze_report import learning_areas
    returns = np.random.default_rng(1).normal(10, 5, size=(3, 40))
    batch = tmp_path / "maze_x_3seeds"
    for k, n in enumerate((40, 40, 30)):               # seed 2 stopped early: "whole run" is its 30 iterations
        with SummaryWriter(str(batch / f"seed_{k}" / "games")) as w:
            for i in range(n):
                w.add_scalar("charts/episodic_return", returns[k, i], 30 * (i + 1))
    whole = np.array([returns[0, :30].mean(), returns[1, :30].mean(), returns[2, :30].mean()])
    first = returns[:, :10].mean(1)                     # 300 episodes: the first 10 iterations
    table = learning_areas([batch], early=300)
    assert f"| maze_x_3seeds | 3 | 900 | {whole.mean():.1f} ± {whole.std(ddof=1):.1f} | " \
           f"{first.mean():.1f} ± {first.std(ddof=1):.1f} |" in table
    # a start past the shortest seed's end covers what every seed has; its seed folder listed too counts once
    # a start past the shortest seed's end has no value of its own (it would be the whole run); its seed folder
    # listed too counts once
    assert f"| maze_x_3seeds | 3 | 900 | {whole.mean():.1f} ± {whole.std(ddof=1):.1f} | — (the run ends at 900) |" \
        in learning_areas([batch, batch / "seed_0"], early=2000)
    from train.errors import UserError
    with pytest.raises(UserError, match="no episode returns logged within the first 10 episodes"):
        learning_areas([batch], early=10)


def test_one_seed_and_a_batch_of_seeds_are_two_adapters_not_branches():
    """maze.seeds builds the seed-batched adapter; one seed keeps its own (the S = 1 batch is not that run bit
    for bit), and neither asks ``if self.seeds``."""
    import re

    import train.tasks.maze as maze
    from train.tasks import build_adapter
    single = build_adapter("maze", MazeTaskConfig(batch=2, episode_length=4), 0)
    batch = build_adapter("maze", MazeTaskConfig(batch=2, episode_length=4, seeds=[0, 1]), 0)
    assert type(single) is MazeAdapter and type(batch) is maze.SeedBatchedMazeAdapter
    assert not re.search(r"if (not )?(self|a)\.seeds", Path(maze.__file__).read_text())


def test_the_rollout_and_the_continual_learner_take_seeds_by_entry_point_not_by_branch():
    """One seed and a batch of seeds are two entry points of one rollout loop (rollout / rollout_seeds) and two
    classes of the continual learner (the batch's picked once, in ``build``), so no condition in the maze's
    rollout and loss, or in the single learner past ``build``, asks whether a model stacks seeds."""
    import ast

    import agents.maze_a2c as maze_a2c
    import metarl.continual as continual
    from metarl.continual_seeds import SeedBatchedContinualWarpGrad
    from train.trainer import setup

    def conditions_on_seeds(module) -> list[str]:
        """The conditions naming seeds that choose a path (not those that refuse bad input)."""
        source = Path(module.__file__).read_text()
        return [ast.get_source_segment(source, node.test) for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.If, ast.IfExp)) and "seeds" in ast.get_source_segment(source, node.test)
                and not (isinstance(node, ast.If) and [type(n) for n in node.body] == [ast.Raise])]

    assert conditions_on_seeds(maze_a2c) == []
    assert conditions_on_seeds(continual) == ['getattr(model, "seeds", 0)']      # ContinualWarpGrad.build
    for seeds, kind in (([], continual.ContinualWarpGrad), ([0, 1], SeedBatchedContinualWarpGrad)):
        _, meta = setup(build_config(tiny_maze_data("warp-rnn", 0, seeds), []))
        assert type(meta) is kind
