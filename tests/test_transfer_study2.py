"""The second Atari transfer study (issue 27): the two inner optimisers' first steps against hand-computed
values and their warm-up statistics, the consistency metrics against direct computations, the sized outer
step, and the fixed-template arm's encoder against the meta-training starting point."""

from __future__ import annotations

import math

import pytest
import torch

from agents.a2c import A2CConfig, RMSpropTF, make_optimizer, rmsprop_stats

LR, ALPHA, EPS = 7e-4, 0.99, 1e-5


def _one_step(optimizer_name: str, grad: list[float]) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.zeros(len(grad), dtype=torch.float64))
    opt = make_optimizer([p], A2CConfig(optimizer=optimizer_name, lr=LR, rms_alpha=ALPHA, rms_eps=EPS))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()
    return p.detach(), opt


def test_rmsprop_tf_first_step_starts_its_mean_square_at_one_with_eps_inside_the_root():
    theta, opt = _one_step("rmsprop_tf", [0.01, -0.002, 0.0])
    assert isinstance(opt, RMSpropTF)
    # v₁ = 0.99·1 + 0.01·g², θ₁ = −lr·g/√(v₁ + ε)
    expected = [-LR * g / math.sqrt(0.99 + 0.01 * g * g + EPS) for g in (0.01, -0.002, 0.0)]
    assert theta.tolist() == pytest.approx(expected, rel=1e-12, abs=0)
    assert expected[0] == pytest.approx(-7.0353e-6, rel=1e-4)          # ≈ lr·g: a damped first step


def test_torch_rmsprop_first_step_starts_at_zero_with_eps_outside_the_root():
    theta, opt = _one_step("rmsprop", [0.01, -0.002, 0.0])
    assert type(opt) is torch.optim.RMSprop
    # v₁ = 0.01·g², θ₁ = −lr·g/(√v₁ + ε): ≈ −10·lr·sign(g) whatever |g| is
    expected = [-LR * g / (math.sqrt(0.01 * g * g) + EPS) for g in (0.01, -0.002, 0.0)]
    assert theta.tolist() == pytest.approx(expected, rel=1e-12, abs=0)
    assert expected[0] == pytest.approx(-6.9307e-3, rel=1e-4)


@pytest.mark.parametrize("name", ["rmsprop_tf", "rmsprop"])
def test_rmsprop_stats_are_the_quantiles_of_the_mean_square_and_of_the_step_multiplier(name):
    grads = [0.0, 0.001, 0.01, 0.1, 1.0]
    _, opt = _one_step(name, grads)
    stats = rmsprop_stats(opt, quantiles=(0.0, 0.5, 1.0))
    start = 1.0 if name == "rmsprop_tf" else 0.0
    v = sorted(ALPHA * start + (1 - ALPHA) * g * g for g in grads)
    mult = sorted(1 / math.sqrt(x + EPS) if name == "rmsprop_tf" else 1 / (math.sqrt(x) + EPS) for x in v)
    assert [stats[f"square_avg_q{q}"] for q in ("00", "50", "100")] == pytest.approx([v[0], v[2], v[4]], rel=1e-5)
    assert [stats[f"step_multiplier_q{q}"] for q in ("00", "50", "100")] == \
        pytest.approx([mult[0], mult[2], mult[4]], rel=1e-5)
    assert rmsprop_stats(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)) == {}


def test_rmsprop_quantiles_of_a_large_model_come_from_a_uniform_draw_close_to_the_exact_ones():
    """Above QUANTILE_SAMPLE coordinates the figures are those of a uniform draw (every accumulator contributing
    in proportion to its size, each with its own ε), the same at every read: each figure's rank among all the
    coordinates is within half a percentile of the quantile asked for. No accumulator: no figures."""
    from agents.a2c import QUANTILE_SAMPLE, rmsprop_quantiles
    g = torch.Generator().manual_seed(0)
    accs = [torch.rand(1_500_000, generator=g) ** 4, torch.rand(300, 700, generator=g) * 1e-3]
    eps = [1e-5, 1e-1]        # far apart: a coordinate given the other accumulator's ε moves the figures
    assert sum(a.numel() for a in accs) > 4 * QUANTILE_SAMPLE
    got = rmsprop_quantiles(accs, eps, tf=False)
    assert rmsprop_quantiles(accs, eps, tf=False) == got                    # a fixed draw: reads compare
    assert rmsprop_quantiles([torch.zeros(0)], [1e-5], tf=False) == {}
    v = torch.cat([a.reshape(-1) for a in accs]).double()
    e = torch.cat([torch.full((a.numel(),), ep, dtype=torch.float64) for a, ep in zip(accs, eps)])
    for name, values in (("square_avg", v), ("step_multiplier", 1 / (v.sqrt() + e))):
        for q in (0.1, 0.5, 0.9):
            rank = (values <= got[f"{name}_q{round(q * 100)}"]).double().mean().item()
            assert abs(rank - q) < 0.005, (name, q, rank)


# -- the sized outer step (meta.optimizer.step_fraction) ---------------------------------------------------

def _meta_batch(meta, model, targets):
    """One meta-batch: per target, a few SGD steps on ‖w − target‖² from θ⁰ under the method's watch."""
    from torch import nn
    ends = []
    for target in targets:
        meta.load_init(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with meta.watch(model, opt) as watch:
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                loss = (model.weight - target).square().sum()
                loss.backward()
                watch.report(loss)
                opt.step()
            watch.finish((model.weight - target).square().sum())
        ends.append(model.weight.detach().clone())
    assert isinstance(model, nn.Linear)
    return ends


@pytest.mark.parametrize("method", ["reptile", "leap"])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_the_sized_outer_step_moves_the_init_by_the_chosen_fraction_of_a_visit(method, fraction):
    from torch import nn

    from metarl.base import MetaOptimizerConfig
    from metarl.leap import Leap, LeapConfig
    from metarl.reptile import Reptile

    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False).double()
    opt = MetaOptimizerConfig(name="sgd", lr=1.0, step_fraction=fraction)
    meta = (Reptile(model, meta_optimizer=opt) if method == "reptile"
            else Leap(model, LeapConfig(p=2, loss=True), meta_optimizer=opt))
    start = meta.params[0].detach().clone()
    targets = [torch.tensor([[1.0, 0.0, 0.0, 2.0]]), torch.tensor([[0.0, -1.0, 3.0, 0.0]])]
    ends = _meta_batch(meta, model, [t.double() for t in targets])
    logs = meta.meta_step()
    visits = [float((e - start).norm()) for e in ends]                  # ‖θᴷ − θ⁰‖ per task, directly
    moved = float((meta.params[0].detach() - start).norm())
    assert logs["meta/visit_displacement"] == pytest.approx(sum(visits) / 2, rel=1e-12)
    assert logs["meta/init_displacement"] == pytest.approx(moved, rel=1e-12)
    assert logs["meta/step_over_visit"] == pytest.approx(moved / (sum(visits) / 2), rel=1e-12)
    if fraction > 0:
        assert moved == pytest.approx(fraction * sum(visits) / 2, rel=1e-12)
    elif method == "reptile":                     # unsized, lr 1: θ⁰ moves to the mean of the tasks' θᴷ
        assert torch.allclose(meta.params[0].detach(), (ends[0] + ends[1]) / 2, rtol=0, atol=1e-12)
    assert meta.displacement == 0.0 and meta.tasks == 0


def test_the_sized_outer_step_refuses_a_method_that_does_not_measure_visits():
    from torch import nn

    from metarl.base import MetaOptimizerConfig
    from metarl.reptile import Reptile

    meta = Reptile(nn.Linear(2, 1), meta_optimizer=MetaOptimizerConfig(step_fraction=0.5))
    meta._task_acc[0].fill_(1.0)
    meta._merge_task()                 # a method running its own loop merges without θᴷ (MAML, continual)
    with pytest.raises(RuntimeError, match="step_fraction needs each task's displacement"):
        meta.meta_step()


# -- the study's metrics ----------------------------------------------------------------------------------

def test_consistency_metrics_against_direct_computations():
    import numpy as np

    from train.report import consistency

    base = np.array([[0.0, 10.0], [1.0, 12.0], [2.0, 14.0], [3.0, 16.0], [4.0, 18.0]])    # 5 seeds × 2 tasks
    tight = np.array([[1.9, 13.0], [2.0, 14.0], [2.1, 15.0], [2.0, 14.0], [0.5, 11.0]])
    out = consistency({"random": base, "meta": tight}, "random")
    # sample variances: base 2.5 and 10, tight 1.82/4 = 0.455 and 9.2/4 = 2.3
    assert out["random"]["std_ratio"] == pytest.approx(1.0)
    assert out["meta"]["std_ratio"] == pytest.approx(math.sqrt((0.455 + 2.3) / 2) / math.sqrt((2.5 + 10) / 2))
    # worst quarter of 5 seeds: the lowest ⌈5/4⌉ = 2 per task, then the mean over tasks
    assert out["random"]["cvar25"] == pytest.approx(((0.0 + 1.0) / 2 + (10 + 12) / 2) / 2)
    assert out["meta"]["cvar25"] == pytest.approx(((0.5 + 1.9) / 2 + (11 + 13) / 2) / 2)
    # the baseline's 25th percentiles are 1.0 and 12.0: below them, base has 1 + 1 of 10, tight 1 + 1 of 10
    assert out["random"]["p_failed"] == pytest.approx(0.2) and out["meta"]["p_failed"] == pytest.approx(0.2)
    # lower is better: the worst seeds are the highest, failure is above the baseline's 75th percentile
    low = consistency({"random": base, "meta": tight}, "random", lower=True)
    assert low["meta"]["cvar25"] == pytest.approx(((2.1 + 2.0) / 2 + (15 + 14) / 2) / 2)
    assert low["meta"]["p_failed"] == pytest.approx(0.0) and low["random"]["p_failed"] == pytest.approx(0.2)


def test_the_auc_leaves_out_the_warm_up_before_auc_start():
    import numpy as np

    from train.tasks.atari_eval import summarise

    grid = np.linspace(10, 100, 10)
    start = int(np.searchsorted(grid, 35))                    # first point at or after env step 35: 40
    assert grid[start] == 40
    seeds = np.array([np.arange(10.0), np.arange(10.0) * 2])
    finals = {("Pong", "meta_init"): [9.0, 18.0]}
    table = summarise(["Pong"], {("Pong", "meta_init"): seeds}, finals, start)
    row = table["Pong"]["meta_init"]
    assert row["auc_scores"] == pytest.approx([np.mean(range(3, 10)), 2 * np.mean(range(3, 10))])
    assert row["auc"] == pytest.approx(np.mean(row["auc_scores"]))
    hn = [(a - (-20.7)) / (14.6 - (-20.7)) for a in row["auc_scores"]]
    assert row["human_normalised_auc_scores"] == pytest.approx(hn)
    assert row["human_normalised_auc"] == pytest.approx(np.mean(hn))
    assert row["human_normalised_auc_std"] == pytest.approx(np.std(hn, ddof=1))


def test_the_auc_is_the_mean_over_seeds_of_each_seeds_auc_and_the_std_the_sample_std():
    """One AUC definition (train/stats.py): where seeds finish their first game at different points, the mean of
    the per-seed AUCs, not the AUC of the seed-mean curve; spreads with n − 1, none for one seed."""
    import numpy as np

    from train.tasks.atari_eval import summarise

    nan = np.nan
    seeds = np.array([[nan, nan, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    table = summarise(["Pong"], {("Pong", "meta_init"): seeds}, {("Pong", "meta_init"): [4.0, 1.0]})
    row = table["Pong"]["meta_init"]
    assert row["auc_scores"] == [3.0, 1.0] and row["auc"] == 2.0
    assert np.nanmean(np.nanmean(seeds, 0)) != 2.0               # the seed-mean curve's AUC would differ
    assert row["final_score_std"] == pytest.approx(np.std([4.0, 1.0], ddof=1))
    one = summarise(["Pong"], {("Pong", "meta_init"): seeds[:1]}, {("Pong", "meta_init"): [4.0]})["Pong"]["meta_init"]
    assert one["final_score_std"] is None and one["auc_std"] is None and one["human_normalised_auc_std"] is None


def test_minimum_detectable_effect_matches_a_simulated_power():
    import numpy as np
    from scipy import stats

    from train.power import detectable_effect

    d = detectable_effect(30, alpha=0.05, power=0.8)
    assert d == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * math.sqrt(2 / 30), rel=0.05)
    rng = np.random.default_rng(0)
    hits = [stats.ttest_ind(rng.normal(d, 1, 30), rng.normal(0, 1, 30)).pvalue < 0.05 for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.025)


# -- the study's arms ----------------------------------------------------------------------------------------

def test_the_fixed_template_arm_evaluates_the_meta_training_starting_point():
    from pathlib import Path

    from train.config import load_config
    from train.trainer import setup

    configs = Path(__file__).resolve().parent.parent / "configs"
    inits = {}
    for arm in ("template", "leap", "reptile", "pretrained"):
        _, meta = setup(load_config(configs / f"atari_transfer2_{arm}.yaml"))
        inits[arm] = {k: v for k, v in meta.init_state.items() if k.startswith("encoder.")}
    assert inits["template"] and set(inits["template"]) == set(inits["leap"])
    for arm in ("leap", "reptile", "pretrained"):      # before its first meta-step, every arm is at the template
        assert all(torch.equal(inits["template"][k], inits[arm][k]) for k in inits["template"])
    _, other = setup(load_config(configs / "atari_transfer2_template.yaml", ["seed=1"]))
    assert not torch.equal(other.init_state["encoder.conv.0.weight"], inits["template"]["encoder.conv.0.weight"])


def test_the_study_arms_differ_in_their_initialisation_only():
    from pathlib import Path

    from train.config import config_to_dict, load_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    flat = {}
    for arm in ("template", "leap", "reptile", "pretrained", "control"):
        d = config_to_dict(load_config(configs / f"atari_transfer2_{arm}.yaml"))
        flat[arm] = d
    shared = ("seed", "eval")
    for arm in ("leap", "reptile", "pretrained"):
        for key in shared:
            want = {k: v for k, v in flat["template"][key].items() if k != "random_init"} \
                if key == "eval" else flat["template"][key]
            got = {k: v for k, v in flat[arm][key].items() if k != "random_init"} if key == "eval" else flat[arm][key]
            assert got == want, (arm, key)
        assert flat[arm]["atari"] == flat["template"]["atari"]
        assert flat[arm]["inner"] == flat["template"]["inner"] and flat[arm]["meta"]["steps"] == 16
    # the control shares the held-out protocol (its random arm is the study's on its game): A2C, horizon, seeds
    atari = {k: v for k, v in flat["control"]["atari"].items() if not k.endswith("games")}
    assert atari == {k: v for k, v in flat["template"]["atari"].items() if not k.endswith("games")}
    def protocol(eval_section):
        return {k: v for k, v in eval_section.items() if k != "random_init"}
    assert protocol(flat["control"]["eval"]) == protocol(flat["template"]["eval"])
    assert flat["control"]["seed"] == flat["template"]["seed"]
    assert flat["template"]["atari"]["a2c"]["optimizer"] == "rmsprop"
    # the random arm is the controls' (same seeds and settings), evaluated once
    assert flat["control"]["eval"]["random_init"]
    assert not any(flat[arm]["eval"]["random_init"] for arm in ("template", "leap", "reptile", "pretrained"))


def test_the_report_keeps_each_held_out_runs_curve_as_csv(tmp_path):
    import csv
    import json

    import numpy as np

    from train.report import report
    from train.tasks.atari_eval import summarise

    run = tmp_path / "run"
    (run / "eval_parts" / "test").mkdir(parents=True)
    # trained with eval.split val, then `metarl eval --split test`: the curves are the test parts
    (run / "config.yaml").write_text("name: arm\nseed: 0\ntask: atari\nmethod: leap\neval: {split: val}\n")
    curves = {("Pong", "meta_init"): [[None, -20.0, -19.5, -19.0], [-21.0, -20.5, -20.0, -18.0]],
              ("Pong", "random_init"): [[None, -21.0, -20.5, -20.0], [-21.0, -21.0, -20.5, -20.0]]}
    for (game, init), seeds in curves.items():
        for k, c in enumerate(seeds):
            (run / "eval_parts" / "test" / f"{game}__{init}__{k}.json").write_text(json.dumps(
                {"format": 1, "game": game, "init": init, "seed": k, "curve": c, "settings": {"env_steps": 400}}))
    arrays = {key: np.array([[np.nan if v is None else v for v in c] for c in seeds]) for key, seeds in curves.items()}
    finals = {key: list(a[:, -1]) for key, a in arrays.items()}
    table = summarise(["Pong"], arrays, finals)
    (run / "eval_atari.json").write_text(json.dumps({"split": "test", "games": table}))
    report([run], tmp_path / "out", reps=50, figures=False)
    rows = list(csv.DictReader((tmp_path / "out" / "seed_curves.csv").open()))
    assert len(rows) == 4 * 4
    got = [(r["method"], r["seed"], float(r["step"]), r["value"]) for r in rows if r["task"] == "Pong"]
    assert got[:4] == [("Leap init", "0/0", 100.0, ""), ("Leap init", "0/0", 200.0, "-20"),
                       ("Leap init", "0/0", 300.0, "-19.5"), ("Leap init", "0/0", 400.0, "-19")]
    assert {r["method"] for r in rows} == {"Leap init", "random init"}
