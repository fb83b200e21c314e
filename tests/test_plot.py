"""`metarl plot` without a screenshot: the series it selects and the figure's axes and lines, on runs written
by the code that writes real runs (train/trainer.py's Logger, train/tasks/atari_eval.py's write_outputs)."""

from pathlib import Path

import numpy as np
import pytest

from train.plot import MARKERS_UP_TO, figure, select_series
from train.tasks.atari_eval import INITS, summarise, write_outputs
from train.trainer import Logger

GAMES = ("Pong", "Breakout")
GRID = np.linspace(100, 1000, 10)


def atari_run(root: Path, name: str, evaluated: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"name: {name.split('__')[0]}\nmethod: {name.split('__')[0].split('_')[1]}\n")
    logger = Logger(d, purge_step=None)
    for game, scale in zip(GAMES, (-20.0, 5.0)):                # training games on the env-step axis
        for step in (200, 400):
            logger.games({f"charts/{game}/episodic_return": scale + step / 100}, step)
    if evaluated:
        seed_curves = {(g, i): np.array([np.linspace(1, 2, len(GRID)) * (k + 1) * (-20 if g == "Pong" else 5)
                                         for k in range(2)]) for g in GAMES for i in INITS}
        curves = {k: np.stack([v.mean(0), v.std(0, ddof=1)]) for k, v in seed_curves.items()}
        finals = {k: list(v[:, -1]) for k, v in seed_curves.items()}
        write_outputs(d, list(GAMES), GRID, curves, summarise(list(GAMES), seed_curves, finals), logger,
                      seed_curves=seed_curves)
    logger.close()
    return d


def test_default_atari_series_are_held_out_curves_per_game(tmp_path):
    name, series = select_series(atari_run(tmp_path, "atari_leap__0"))
    assert name.startswith("episodic_return")
    # each seed's curve, labelled as the run's table labels the initialisation
    assert sorted((s.panel, s.label) for s in series) == sorted((g, i) for g in GAMES for i in ("Leap init",
                                                                                                 "random init") * 2)
    for s in series:        # each series holds one game's values only
        sign = -1 if s.panel == "Pong" else 1
        assert np.all(np.sign(s.values) == sign) and s.xlabel == "env steps"


def test_training_run_plots_training_games_per_game(tmp_path):
    _, series = select_series(atari_run(tmp_path, "atari_leap__0", evaluated=False))
    assert sorted((s.panel, s.label) for s in series) == [("Breakout", "training"), ("Pong", "training")]


def test_figure_has_one_axes_per_game_and_groups_seeds(tmp_path):
    dirs = [atari_run(tmp_path, "atari_leap__0"), atari_run(tmp_path, "atari_leap__1")]
    fig = figure(dirs)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in axes) == sorted(GAMES)
    for ax in axes:
        assert sorted(line.get_label() for line in ax.get_lines()) == ["Leap init (n=4)", "random init (n=4)"]
        for line in ax.get_lines():     # ten points: markers on
            assert len(line.get_xdata()) == len(GRID) <= MARKERS_UP_TO and line.get_marker() == "o"


def test_single_point_is_drawn_with_a_marker(tmp_path):
    d = tmp_path / "sine__0"
    logger = Logger(d, purge_step=None)
    logger.scalars({"losses/train_auc": 1.5}, 1)
    logger.close()
    fig = figure([d])
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [1] and line.get_marker() == "o"


def test_the_band_is_the_sample_std_over_seeds(tmp_path):
    dirs = []
    for seed, value in enumerate((1.0, 2.0, 6.0)):
        d = tmp_path / f"sine__{seed}"
        logger = Logger(d, purge_step=None)
        logger.scalars({"losses/train_auc": value}, 1)
        logger.close()
        dirs.append(d)
    (band,) = figure(dirs).axes[0].collections
    ys = band.get_paths()[0].vertices[:, 1]
    sd = np.std([1, 2, 6], ddof=1)
    assert min(ys) == pytest.approx(3.0 - sd) and max(ys) == pytest.approx(3.0 + sd)


def test_two_configs_are_labelled_by_name_within_each_game(tmp_path):
    dirs = [atari_run(tmp_path, "atari_leap__0"), atari_run(tmp_path, "atari_reptile__0")]
    fig = figure(dirs)
    for ax in (a for a in fig.axes if a.get_visible()):
        assert sorted(line.get_label() for line in ax.get_lines()) == [
            "atari_leap Leap init (n=2)", "atari_leap random init (n=2)",
            "atari_reptile Reptile init (n=2)", "atari_reptile random init (n=2)"]


def test_seed_suffixes_group_runs_of_one_experiment(tmp_path):
    def run(name, value):
        d = tmp_path / name
        logger = Logger(d, purge_step=None)
        logger.scalars({"losses/train_auc": value}, 1)
        logger.close()
        return d

    dirs = [run("quick_leap_s0", 1.0), run("quick_leap_s1", 3.0), run("quick_leap_seed2", 2.0),
            run("quick_reptile__0", 5.0), run("quick_leap_s0-4", 7.0)]
    (ax,) = [a for a in figure(dirs).axes if a.get_visible()]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    # the three seeds of quick_leap average to 2.0; a folder without a seed suffix is its own group
    assert lines == {"quick_leap (n=3)": [2.0], "quick_reptile (n=1)": [5.0], "quick_leap_s0-4 (n=1)": [7.0]}


def test_a_resumed_runs_events_read_without_purge_warnings(tmp_path, caplog):
    """The points the killed run logged past its checkpoint give way to the resumed run's, silently."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from train.plot import load_events, tag_points
    with SummaryWriter(str(tmp_path)) as w:              # the first part, killed after step 9
        for step in range(1, 10):
            w.add_scalar("x", 1.0, step)
    time.sleep(1.1)                                      # event files are named by the second
    with SummaryWriter(str(tmp_path), purge_step=6) as w:    # resumed from the checkpoint at step 5
        for step in range(6, 12):
            w.add_scalar("x", 2.0, step)
    with caplog.at_level("INFO"):
        steps, values = tag_points(load_events(tmp_path), "x")
    assert list(steps) == list(range(1, 12)) and list(values) == [1.0] * 5 + [2.0] * 6
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]


def test_csv_holds_the_raw_points_of_every_run(tmp_path):
    import csv

    from train.plot import load_runs, write_csv
    dirs = [atari_run(tmp_path, "atari_leap__0"), atari_run(tmp_path, "atari_leap__1", evaluated=False)]
    runs = load_runs(dirs, "charts/episodic_return")
    rows = list(csv.DictReader(open(write_csv(runs, tmp_path / "points.csv"))))
    # the training games' points, unsmoothed: two visits' steps per game per run, values as logged
    got = sorted((r["run"], r["panel"], int(r["step"]), float(r["value"])) for r in rows)
    want = sorted((run, game, step, scale + step / 100) for run in ("atari_leap__0", "atari_leap__1")
                  for game, scale in zip(GAMES, (-20.0, 5.0)) for step in (200, 400))
    assert got == want


def test_csv_is_refused_over_a_runs_own_file(tmp_path):
    from train.errors import UserError
    from train.plot import plot_runs
    d = atari_run(tmp_path, "atari_leap__0")
    with pytest.raises(UserError, match="run's own config.yaml"):
        plot_runs([d], csv=str(d / "config.yaml"), out=str(tmp_path / "plot.png"))
    assert not (tmp_path / "plot.png").exists()          # checked before anything is drawn
