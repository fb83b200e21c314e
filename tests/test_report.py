"""`metarl report` on small synthetic run directories written in the real formats (Atari: the evaluation's own
summarise/write_outputs; maze and supervised eval.json as their code writes them): its aggregate
numbers equal a direct computation, its intervals contain them; human normalisation; one-line CLI errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from train.atari_scores import REFERENCE, human_normalised
from train.cli import main
from train.tasks.atari_eval import summarise, write_outputs
from train.trainer import Logger

GAMES = ("Breakout", "Pong")
GRID = np.linspace(100, 1000, 10)


def atari_run(root: Path, name: str, finals: dict, seed: int = 0) -> Path:
    """A finished Atari run: config.yaml, eval.json, eval_atari.json and TensorBoard eval curves, written by
    train/tasks/atari_eval.py's own functions from ``finals[(game, init)]`` (raw final score per seed)."""
    d = root / f"{name}__{seed}__1"
    d.mkdir(parents=True)
    method = {"leap": "leap", "reptile": "reptile", "pretrained": "finetune"}[name.split("_")[-1]]
    (d / "config.yaml").write_text(f"name: {name}\nseed: {seed}\ntask: atari\nmethod: {method}\n")
    seed_curves, curves = {}, {}
    for key, f in finals.items():
        seed_curves[key] = np.array([np.linspace(0.2, 1.0, len(GRID)) * v for v in f])      # (seeds, points)
        curves[key] = np.stack([seed_curves[key].mean(0), seed_curves[key].std(0, ddof=1)])
    table = summarise(list(GAMES), seed_curves, finals)
    logger = Logger(d, purge_step=None)         # the trainer's: eval/<init> runs of their own
    write_outputs(d, list(GAMES), GRID, curves, table, logger, seed_curves=seed_curves)
    logger.close()
    (d / "eval.json").write_text(json.dumps({"step": 4, "horizon_env_steps": 1000, "seeds": 5, "window": 10,
                                             "games": table}))
    return d


@pytest.fixture(scope="module")
def atari_runs(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("atari")
    rand = {(g, "random_init"): list(rng.uniform(*REFERENCE[g], size=5)) for g in GAMES}
    leap = {(g, "meta_init"): list(rng.uniform(*REFERENCE[g], size=5) * 1.2) for g in GAMES}
    reptile = {(g, "meta_init"): list(rng.uniform(*REFERENCE[g], size=5)) for g in GAMES}
    dirs = [atari_run(root, "atari_leap", {**leap, **rand}), atari_run(root, "atari_reptile", {**reptile, **rand})]
    return root, dirs, {"atari_leap": leap, "atari_reptile": reptile, "random_init": rand}


def hns_matrix(finals: dict) -> np.ndarray:
    """seeds × games human-normalised scores, computed directly."""
    return np.array([[(finals[k][s] - REFERENCE[k[0]][0]) / (REFERENCE[k[0]][1] - REFERENCE[k[0]][0])
                      for k in sorted(finals)] for s in range(5)])


def run_report(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(["report", *args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_human_normalisation_maps_random_to_0_and_human_to_1():
    for game, (random, human) in REFERENCE.items():
        assert human_normalised(game, random) == 0.0
        assert human_normalised(game, human) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(human_normalised("AirRaid", 1000.0))       # no published human score


def test_atari_eval_records_per_seed_normalised_scores_beside_raw(atari_runs):
    _, dirs, finals = atari_runs
    data = json.loads((dirs[0] / "eval_atari.json").read_text())
    assert data["split"] == "test"
    row = data["games"]["Breakout"]["meta_init"]
    assert row["final_scores"] == pytest.approx(finals["atari_leap"][("Breakout", "meta_init")])
    assert row["final_human_normalised_scores"] == pytest.approx(
        [human_normalised("Breakout", f) for f in row["final_scores"]])
    assert row["final_human_normalised"] == pytest.approx(np.mean(row["final_human_normalised_scores"]))
    assert len(row["auc_scores"]) == len(row["human_normalised_auc_scores"]) == 5


def test_atari_report_aggregates_equal_direct_computation(atari_runs, tmp_path, capsys):
    root, dirs, finals = atari_runs
    out = tmp_path / "report"
    code, stdout, err = run_report([*map(str, dirs), "--out", str(out), "--reps", "300"], capsys)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out / 'report.md'}"
    atari = json.loads((out / "report.json").read_text())["suites"]["atari"]
    assert atari["metric"] == "human_normalised" and atari["tasks"] == sorted(GAMES)
    assert atari["baseline"] == "random init"               # --baseline random_init: its name
    # the random init evaluated by both runs (same config seed, same games) is counted once
    assert np.array(atari["matrices"]["random init"]).shape == (5, 2)
    for method, name in (("atari_leap", "Leap init"), ("atari_reptile", "Reptile init"),
                         ("random_init", "random init")):
        x = hns_matrix(finals[method])
        np.testing.assert_allclose(atari["matrices"][name], x, rtol=1e-12)
        agg = atari["aggregates"][name]
        assert agg["underpowered"] is False                  # 5 runs each
        direct = {"IQM": scipy.stats.trim_mean(x.ravel(), 0.25), "median": np.median(x.mean(0)), "mean": x.mean()}
        for name, value in direct.items():
            assert agg[name]["value"] == pytest.approx(value, rel=1e-12)
            lo, hi = agg[name]["ci"]
            assert lo <= value <= hi and lo < hi
    # probability of improvement: per game P(X > Y) + ½ P(X = Y) over all seed pairs, averaged over games
    x, y = hns_matrix(finals["atari_leap"]), hns_matrix(finals["random_init"])
    poi = np.mean([np.mean((x[:, [g]] > y[:, g]) + 0.5 * (x[:, [g]] == y[:, g])) for g in range(2)])
    agg = atari["aggregates"]["Leap init"]["P(improvement)"]
    assert agg["value"] == pytest.approx(poi) and agg["ci"][0] <= poi <= agg["ci"][1]
    assert "P(improvement)" not in atari["aggregates"]["random init"]
    assert atari["underpowered"] == []
    md = (out / "report.md").read_text()
    assert "| Breakout | Leap init | 5 |" in md and "human-normalised final score" in md and "final score (raw)" in md
    raw = np.mean(finals["atari_leap"][("Breakout", "meta_init")])
    assert f"{raw:.1f}" in md or f"{raw:.3f}" in md                                      # the raw score is kept
    for png in ("curves_atari.png", "aggregates_atari.png", "profile_atari.png"):
        assert (out / png).stat().st_size > 1000


def test_a_study_compares_every_method_with_the_one_run_that_evaluated_random_init(tmp_path, capsys):
    """The transfer study: only the Leap run evaluates the random init (eval.random_init: false in the others);
    its random_init rows are the baseline of every method, and nothing is said about the runs without them."""
    rng = np.random.default_rng(1)
    rand = {(g, "random_init"): list(rng.uniform(*REFERENCE[g], size=5)) for g in GAMES}
    inits = {name: {(g, "meta_init"): list(rng.uniform(*REFERENCE[g], size=5) * 1.1) for g in GAMES}
             for name in ("atari_transfer_leap", "atari_transfer_reptile", "atari_transfer_pretrained")}
    dirs = [atari_run(tmp_path / "runs", name, {**finals, **(rand if name.endswith("leap") else {})})
            for name, finals in inits.items()]
    assert set(json.loads((dirs[1] / "eval.json").read_text())["games"]["Pong"]) == {"meta_init"}
    out = tmp_path / "report"
    code, _, err = run_report([*map(str, dirs), "--out", str(out), "--reps", "200"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    atari = report["suites"]["atari"]
    assert atari["baseline"] == "random init" and atari["tasks"] == sorted(GAMES)
    np.testing.assert_allclose(atari["matrices"]["random init"], hns_matrix(rand), rtol=1e-12)
    names = {"atari_transfer_leap": "Leap init", "atari_transfer_reptile": "Reptile init",
             "atari_transfer_pretrained": "pretrained init"}
    for name, finals in inits.items():
        x, y = hns_matrix(finals), hns_matrix(rand)
        poi = np.mean([np.mean((x[:, [g]] > y[:, g]) + 0.5 * (x[:, [g]] == y[:, g])) for g in range(2)])
        assert atari["aggregates"][names[name]]["P(improvement)"]["value"] == pytest.approx(poi)
    assert atari["notes"] == [] and report["notes"] == []
    md = (out / "report.md").read_text()
    assert "| Pong | random init | 5 |" in md and not [line for line in md.splitlines() if line.startswith("- ")]
    # --baseline takes a config name too; configs sharing a method are told apart by their names
    code, _, err = run_report([*map(str, dirs), "--out", str(out), "--reps", "50",
                               "--baseline", "atari_transfer_reptile"], capsys)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["suites"]["atari"]["baseline"] == "Reptile init"
    # consistency against each baseline named, not only the first (a fixed template beside the random encoder)
    code, _, err = run_report([*map(str, dirs), "--out", str(out), "--reps", "50", "--baseline", "random_init",
                               "--baseline", "atari_transfer_reptile"], capsys)
    assert code == 0, err
    atari = json.loads((out / "report.json").read_text())["suites"]["atari"]
    x, y = hns_matrix(inits["atari_transfer_leap"]), hns_matrix(inits["atari_transfer_reptile"])
    ratio = math.sqrt(np.mean(x.var(axis=0, ddof=1)) / np.mean(y.var(axis=0, ddof=1)))
    assert set(atari["consistency_vs"]) == {"Reptile init"} and atari["consistency"]["random init"]["std_ratio"] == 1
    assert atari["consistency_vs"]["Reptile init"]["Leap init"]["std_ratio"] == pytest.approx(ratio)
    assert "Consistency over seeds against Reptile init" in (out / "report.md").read_text()
    from train.names import init_names
    assert init_names({"a": "finetune", "b": "finetune", "c": "leap"}) == {
        "a": "pretrained init (a)", "b": "pretrained init (b)", "c": "Leap init", "random_init": "random init"}
    # without the Leap run there is no baseline, and the note says where it is
    code, _, err = run_report([str(dirs[1]), str(dirs[2]), "--out", str(tmp_path / "r2"), "--reps", "50"], capsys)
    assert code == 0, err
    [note] = json.loads((tmp_path / "r2" / "report.json").read_text())["suites"]["atari"]["notes"]
    assert note.startswith("no baseline among the methods (random init) (runs with eval.random_init: false")


def test_atari_curves_pool_mean_and_std_over_seeds(atari_runs):
    from train.report import pooled
    from train.report_data import load_runs

    _, dirs, finals = atari_runs
    runs = load_runs(dirs)
    [curve] = [c for c in runs.curves if c.method == "Leap init" and c.task == "Pong"]
    seeds = np.array([np.linspace(0.2, 1.0, len(GRID)) * v for v in finals["atari_leap"][("Pong", "meta_init")]])
    np.testing.assert_allclose(curve.x, GRID.astype(int))
    np.testing.assert_allclose(curve.mean, seeds.mean(0), rtol=1e-5)
    np.testing.assert_allclose(curve.std, seeds.std(0), rtol=1e-5)      # over n, from TensorBoard's sample std
    # two halves of the seeds as two runs pool back to the mean and the sample std over all seeds
    halves = [type(curve)(**{**curve.__dict__, "mean": s.mean(0), "std": s.std(0), "n": len(s)})
              for s in (seeds[:2], seeds[2:])]
    _, m, s, n = pooled(halves)
    np.testing.assert_allclose(m, seeds.mean(0), rtol=1e-9)
    np.testing.assert_allclose(s, seeds.std(0, ddof=1), rtol=1e-9)
    assert n == 5


def supervised_run(root: Path, name: str, seed: int, acc: float) -> Path:
    d = root / f"{name}__{seed}__1"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"name: {name}\nseed: {seed}\ntask: omniglot\nmethod: leap\n")
    result = {"auc": 1.0 - acc, "final_loss": 0.5, "test_loss": 1.0 - acc, "test_accuracy": acc}
    result.update({f"{k}_std": 0.01 for k in list(result)})
    (d / "eval.json").write_text(json.dumps({**result, "curve": list(np.linspace(2.0, 1.0 - acc, 20))}))
    return d


def maze_runs(root: Path) -> tuple[list[Path], dict]:
    """A seed-batched run (per_seed, seed folders with TensorBoard curves) and two single-seed runs."""
    from torch.utils.tensorboard import SummaryWriter

    batched = root / "maze_warp_rnn__0__1"
    per_seed = {str(k): {"return_last_mean": 10.0 + 3 * k, "wall_time_s": 60.0} for k in range(3)}
    for k in range(3):
        (batched / f"seed_{k}").mkdir(parents=True)
        (batched / f"seed_{k}" / "eval.json").write_text(
            json.dumps({"name": "maze_warp_rnn", "seed": k, **per_seed[str(k)]}))
        w = SummaryWriter(str(batched / f"seed_{k}"))
        for step in range(0, 300, 30):
            w.add_scalar("charts/episodic_return", step / 30 + k, step)
        w.close()
    (batched / "config.yaml").write_text("name: maze_warp_rnn\nseed: 0\ntask: maze\nmethod: warpgrad_continual\n")
    (batched / "eval.json").write_text(json.dumps({"seeds": [0, 1, 2], "return_last_mean": 13.0,
                                                   "wall_time_s": 60.0, "per_seed": per_seed}))
    singles = []
    for k, v in enumerate((5.0, 7.0)):
        d = root / f"maze_rnn__{k}__1"
        d.mkdir()
        (d / "config.yaml").write_text(f"name: maze_rnn\nseed: {k}\ntask: maze\nmethod: no_pretraining\n")
        (d / "eval.json").write_text(json.dumps({"return_last_mean": v, "wall_time_s": 30.0}))
        singles.append(d)
    # the batched run's seed folders listed beside it are not counted twice
    return [batched, *[batched / f"seed_{k}" for k in range(3)], *singles], {"maze_warp_rnn": [10.0, 13.0, 16.0],
                                                                            "maze_rnn": [5.0, 7.0]}


def test_omniglot_and_maze_report(tmp_path, capsys):
    accs = {"omniglot_leap": [0.8, 0.7, 0.9, 0.75], "omniglot_no_pretraining": [0.5, 0.6, 0.55, 0.4]}
    for name, v in accs.items():
        for seed, acc in enumerate(v):
            supervised_run(tmp_path / "runs", name, seed, acc)          # the report is given their parent folder
    mdirs, returns = maze_runs(tmp_path / "maze")
    out = tmp_path / "report"
    code, _, err = run_report([str(tmp_path / "runs"), *map(str, mdirs), "--out", str(out), "--reps", "200",
                               "--baseline", "omniglot_no_pretraining", "--baseline", "maze_rnn"], capsys)
    assert code == 0, err
    suites = json.loads((out / "report.json").read_text())["suites"]
    omni, maze = suites["omniglot"], suites["maze"]
    assert omni["metric"] == "test_accuracy" and maze["metric"] == "return_last_mean"
    for suite, scores in ((omni, accs), (maze, returns)):
        for method, values in scores.items():
            x = np.array(values)
            assert suite["aggregates"][method]["IQM"]["value"] == pytest.approx(scipy.stats.trim_mean(x, 0.25))
            assert suite["aggregates"][method]["mean"]["value"] == pytest.approx(x.mean())
            lo, hi = suite["aggregates"][method]["IQM"]["ci"]
            assert lo <= scipy.stats.trim_mean(x, 0.25) <= hi
    assert omni["aggregates"]["omniglot_leap"]["P(improvement)"]["value"] == pytest.approx(1.0)
    assert maze["aggregates"]["maze_warp_rnn"]["P(improvement)"]["value"] == pytest.approx(1.0)
    assert np.array(maze["matrices"]["maze_warp_rnn"]).shape == (3, 1)
    for png in ("curves_omniglot.png", "curves_maze.png", "profile_maze.png"):
        assert (out / png).is_file()
    # a lower-is-better score: the probability of improvement counts lower losses as better
    code, _, err = run_report([str(tmp_path / "runs"), "--out", str(out), "--reps", "50", "--metric", "test_loss",
                               "--baseline", "omniglot_no_pretraining"], capsys)
    assert code == 0, err
    omni = json.loads((out / "report.json").read_text())["suites"]["omniglot"]
    assert omni["lower_is_better"] and omni["aggregates"]["omniglot_leap"]["P(improvement)"]["value"] == 1.0


def test_a_run_trained_on_the_val_split_reports_its_test_result_or_none(tmp_path, capsys):
    """A sweep run (eval.split: val) has the validation score in eval.json: the report takes its test score
    from eval_test.json (metarl eval --split test), and skips a sweep run that has none."""
    for seed, acc in enumerate([0.6, 0.7]):
        supervised_run(tmp_path / "runs", "omniglot_reptile", seed, acc)
    tested = supervised_run(tmp_path / "runs", "omniglot_reptile", 2, 0.99)     # 0.99: the val score
    untested = supervised_run(tmp_path / "runs", "omniglot_reptile", 3, 0.98)
    for d in (tested, untested):
        (d / "config.yaml").write_text((d / "config.yaml").read_text() + "eval: {split: val}\n")
    (tested / "eval_test.json").write_text(json.dumps({"split": "test", "test_accuracy": 0.8, "curve": [1.0]}))
    # an eval.json that says its split outranks the config (a run resumed with another eval.split)
    said = supervised_run(tmp_path / "runs", "omniglot_reptile", 4, 0.97)
    (said / "eval.json").write_text(json.dumps({**json.loads((said / "eval.json").read_text()), "split": "val"}))
    out = tmp_path / "report"
    code, _, err = run_report([str(tmp_path / "runs"), "--out", str(out), "--reps", "50"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    mean = report["suites"]["omniglot"]["aggregates"]["omniglot_reptile"]["mean"]["value"]
    assert mean == pytest.approx(np.mean([0.6, 0.7, 0.8]))
    assert any(str(untested) in n and "skipped" in n for n in report["notes"])
    assert any(str(said) in n and "on the val split" in n for n in report["notes"])
    assert any(str(tested) in n and "eval_test.json" in n for n in report["notes"])


def test_report_of_the_val_split_reads_each_supervised_runs_val_result(tmp_path, capsys):
    """--split val: a sweep run's eval.json (eval.split: val), a test-trained run's eval_val.json (`metarl eval
    --split val`), a run with test results only skipped with a note; a maze run has no val split. With no val
    result at all: one line naming the split and why the runs were skipped."""
    runs = tmp_path / "runs"
    sweep = supervised_run(runs, "omniglot_reptile", 0, 0.6)                 # trained on val
    (sweep / "config.yaml").write_text((sweep / "config.yaml").read_text() + "eval: {split: val}\n")
    evaluated = supervised_run(runs, "omniglot_reptile", 1, 0.99)            # 0.99: its test score
    (evaluated / "eval_val.json").write_text(json.dumps({"split": "val", "test_accuracy": 0.7, "curve": [1.0]}))
    only_test = supervised_run(runs, "omniglot_reptile", 2, 0.98)
    maze_dirs, _ = maze_runs(tmp_path / "maze")
    out = tmp_path / "val"
    code, _, err = run_report([str(runs), *map(str, maze_dirs), "--split", "val", "--out", str(out), "--reps", "50"],
                              capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "val" and set(report["suites"]) == {"omniglot"}
    mean = report["suites"]["omniglot"]["aggregates"]["omniglot_reptile"]["mean"]["value"]
    assert mean == pytest.approx(np.mean([0.6, 0.7]))
    assert any(str(only_test) in n and "no eval_val.json" in n for n in report["notes"])
    assert any(str(maze_dirs[0]) in n and "maze run has no val split" in n for n in report["notes"])
    code, _, err = run_report([str(only_test), "--split", "val", "--out", str(tmp_path / "none")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no finished runs (eval.json or eval_atari.json) with val results in: " in err and "1 skipped, e.g." in err


def test_report_over_a_subset_of_games_equals_direct_computation(atari_runs, tmp_path, capsys):
    """--tasks: the aggregates over the named games only (e.g. the held-out games related to a training
    family), the same figures as computed directly from those games' scores; a game no run has is one line."""
    root, dirs, finals = atari_runs
    out = tmp_path / "pong"
    code, _, err = run_report([*map(str, dirs), "--tasks", "Pong", "--out", str(out), "--reps", "300"], capsys)
    assert code == 0, err
    data = json.loads((out / "report.json").read_text())
    atari = data["suites"]["atari"]
    assert data["tasks"] == ["Pong"] and atari["tasks"] == ["Pong"]
    x = hns_matrix(finals["atari_leap"])[:, [sorted(finals["atari_leap"]).index(("Pong", "meta_init"))]]
    np.testing.assert_allclose(atari["matrices"]["Leap init"], x, rtol=1e-12)
    assert atari["aggregates"]["Leap init"]["IQM"]["value"] == pytest.approx(scipy.stats.trim_mean(x.ravel(), 0.25))
    md = (out / "report.md").read_text()
    assert "Tasks: Pong only." in md and "| Breakout |" not in md
    code, _, err = run_report([*map(str, dirs), "--tasks", "Pong,Qbert", "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and "--tasks: no results for Qbert (the runs have: Breakout, Pong)" in err
    assert err.count("\n") == 1 and not (tmp_path / "q").exists()


def test_gap_closed_is_the_fraction_of_the_control_gap_per_task():
    """gap_closed on known arrays: per task (mean_m − mean_b) / (mean_c − mean_b) (the ratio of the means, not
    the mean of per-seed ratios), their mean over tasks; runs that do not vary give a point interval; the
    fractions do not depend on which direction is better; a task without a gap — the control level with the
    baseline, or worse than it (it did not transfer there) — is None and left out of the mean."""
    from train.report import gap_closed
    base = np.array([[0.0, 1.0], [2.0, 3.0], [1.0, 2.0]])     # task means 1, 2
    top = np.array([[10.0, 20.0], [12.0, 26.0], [11.0, 17.0]])   # 11, 21
    arm = np.array([[5.0, 10.0], [7.0, 14.0], [6.0, 12.0]])      # 6, 12; task 1's per-seed ratios average 0.54
    g = gap_closed({"b": base, "c": top, "m": arm}, "b", "c", reps=500)
    assert set(g) == {"m"} and g["m"]["dropped"] == 0
    np.testing.assert_allclose(g["m"]["per_task"], [5 / 10, 10 / 19])
    assert g["m"]["mean"] == pytest.approx((5 / 10 + 10 / 19) / 2)
    assert g["m"]["ci"][0] < g["m"]["mean"] < g["m"]["ci"][1]
    flat = {"b": np.zeros((4, 2)), "c": np.full((4, 2), 2.0), "m": np.ones((4, 2))}
    assert gap_closed(flat, "b", "c", reps=50)["m"] == {"per_task": [0.5, 0.5], "mean": 0.5, "ci": [0.5, 0.5],
                                                         "dropped": 0}
    negated = {k: -v for k, v in {"b": base, "c": top, "m": arm}.items()}
    neg = gap_closed(negated, "b", "c", reps=500, lower_is_better=True)
    np.testing.assert_allclose(neg["m"]["per_task"], g["m"]["per_task"])
    # higher is better, and the control is below the baseline on every task: no gap anywhere (not 0.5 of one)
    assert gap_closed(negated, "b", "c", reps=50)["m"] == {"per_task": [None, None], "mean": None,
                                                           "ci": [None, None], "dropped": 0}
    # the control worse than the baseline on task 1 only (as a same-game encoder that did not transfer)
    worse = gap_closed({"b": base, "c": np.stack([top[:, 0], base[:, 1] - 1.0], 1), "m": arm}, "b", "c", 200)["m"]
    assert worse["per_task"] == [pytest.approx(0.5), None] and worse["mean"] == pytest.approx(0.5)
    one = gap_closed({"b": base, "c": np.stack([top[:, 0], base[:, 1]], 1), "m": arm}, "b", "c", reps=200)["m"]
    assert one["per_task"] == [pytest.approx(0.5), None] and one["mean"] == pytest.approx(0.5)
    assert gap_closed({"b": base, "c": base.copy(), "m": arm}, "b", "c", reps=10)["m"]["mean"] is None
    # a control barely above the baseline: most resamples put it below on some task, so no interval
    near = gap_closed({"b": base, "c": base + [[3.0, 0.0], [-3.0, 0.1], [0.0, 0.0]], "m": arm}, "b", "c", 400)["m"]
    assert near["dropped"] > 20 and near["ci"] == [None, None] and near["mean"] is not None


def test_gap_closed_interval_equals_an_independent_bootstrap():
    """The interval against a plain-loop bootstrap with its own generator: each arm's seeds resampled apart
    within each task, 20,000 resamples each. Resampling the baseline not at all, all arms with the same draws,
    all tasks with one draw, or averaging per-seed ratios moves a bound by 0.013 or more on these arrays; the
    two correct bootstraps agree to Monte-Carlo error (≈ 0.003)."""
    from train.report import gap_closed
    rng = np.random.default_rng(3)
    base, top, arm = rng.normal(0, 1, (8, 2)), rng.normal(6, 1.5, (8, 2)), rng.normal([2, 1], [2, 0.5], (8, 2))
    ours = gap_closed({"b": base, "c": top, "m": arm}, "b", "c", reps=20000)["m"]
    draw, fractions = np.random.default_rng(1), []
    for _ in range(20000):
        per_task = []
        for t in range(2):
            b, c, m = (x[draw.integers(0, 8, 8), t].mean() for x in (base, top, arm))
            per_task.append((m - b) / (c - b))
        fractions.append(np.mean(per_task))
    np.testing.assert_allclose(ours["ci"], np.percentile(fractions, [2.5, 97.5]), atol=0.008)


def test_report_says_how_much_of_the_gap_to_a_control_each_method_closes(atari_runs, tmp_path, capsys):
    """--control (by config name, as --baseline): the report's fractions of the gap between random init and it
    equal the direct computation from the human-normalised scores; a control no run has is a note."""
    root, dirs, finals = atari_runs
    out = tmp_path / "gap"
    code, _, err = run_report([*map(str, dirs), "--out", str(out), "--reps", "200", "--control", "atari_reptile"],
                              capsys)
    assert code == 0, err
    gap = json.loads((out / "report.json").read_text())["suites"]["atari"]["gap_closed"]
    assert (gap["baseline"], gap["control"], set(gap["methods"])) == ("random init", "Reptile init", {"Leap init"})
    b, c, m = (hns_matrix(finals[k]).mean(axis=0) for k in ("random_init", "atari_reptile", "atari_leap"))
    per_task = gap["methods"]["Leap init"]["per_task"]
    assert [v is None for v in per_task] == list(c <= b)        # where the control is not above random: no gap
    np.testing.assert_allclose([v for v in per_task if v is not None], ((m - b) / (c - b))[c > b], rtol=1e-9)
    assert "| Leap init | " in (out / "report.md").read_text().split("Fraction of the gap")[1]
    code, _, err = run_report([*map(str, dirs), "--out", str(tmp_path / "none"), "--reps", "50",
                               "--control", "atari_nope"], capsys)
    assert code == 0, err
    atari = json.loads((tmp_path / "none" / "report.json").read_text())["suites"]["atari"]
    assert "gap_closed" not in atari and any(n.startswith("--control atari_nope: not among") for n in atari["notes"])


@pytest.mark.parametrize("make, message", [
    (lambda t: [str(t / "missing")], "not a directory: "),
    (lambda t: [str(t)], "no finished runs (eval.json or eval_atari.json) in: "),
    (lambda t: [str(supervised_run(t, "omniglot_leap", 0, 0.5)), "--metric", "bogus"],
     "omniglot runs have no score 'bogus' (have: "),
    (lambda t: [str(supervised_run(t, "omniglot_leap", 0, 0.5)), "--reps", "0"], "--reps must be positive"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, make, message):
    code, out, err = run_report([*make(tmp_path), "--out", str(tmp_path / "report")], capsys)
    assert code == 2 and out == ""
    assert err.startswith("metarl: error: ") and message in err and err.count("\n") == 1


def test_corrupt_eval_json_is_a_one_line_error(tmp_path, capsys):
    d = tmp_path / "sine_leap__0__1"
    d.mkdir()
    (d / "eval.json").write_text("{not json")
    code, _, err = run_report([str(d), "--out", str(tmp_path / "report")], capsys)
    assert code == 2 and err.startswith(f"metarl: error: unreadable {d / 'eval.json'}") and err.count("\n") == 1


def test_aggregates_from_fewer_than_five_runs_are_marked_underpowered(tmp_path, capsys):
    """2 seeds on 2 games: every aggregate is underpowered, in the table and in the JSON."""
    rng = np.random.default_rng(2)
    finals = {(g, i): list(rng.uniform(*REFERENCE[g], size=2)) for g in GAMES for i in ("meta_init", "random_init")}
    d = atari_run(tmp_path / "runs", "atari_leap", finals)
    out = tmp_path / "report"
    code, _, err = run_report([str(d), "--out", str(out), "--reps", "50"], capsys)
    assert code == 0, err
    atari = json.loads((out / "report.json").read_text())["suites"]["atari"]
    assert atari["underpowered"] == ["Leap init", "random init"]
    assert all(a["underpowered"] for a in atari["aggregates"].values())
    md = (out / "report.md").read_text()
    [row] = [line for line in md.splitlines() if line.startswith("| Leap init | 2 × 2 |")]
    assert row.endswith("| underpowered: Leap init 2, random init 2 runs < 5 |")
    assert "- underpowered: Leap init, random init have fewer than 5 runs" in md
