"""An Atari meta-training run end to end: TensorBoard curves read back with TensorBoard's own reader, and
`metarl plot`'s series of that run (per game, meta-init against random-init)."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("envpool")

from cli_helpers import cli  # noqa: E402
from train.config import load_config  # noqa: E402
from train.trainer import train  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def atari_run(tmp_path_factory):
    """The tiny run (Breakout trained on and held out, 2 meta-steps), with progress output: (dir, result, stderr)."""
    import contextlib
    import io

    run_dir = tmp_path_factory.mktemp("atari_run")
    cfg = load_config(CONFIGS / "atari_leap.yaml", [
        "atari.train_games=[Breakout]", "atari.test_games=[Breakout]", "atari.test_on_train_games=true",
        "atari.a2c.num_envs=4",
        "inner.steps=1200", "meta.steps=2", "meta.meta_batch=1", "eval.tasks=1", "eval.steps=1200",
        "run.progress=true"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = train(cfg, run_dir)
    return run_dir, result, err.getvalue()


def _acc(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_atari_run_writes_training_and_eval_curves(atari_run):
    tmp_path, result, _ = atari_run
    acc = _acc(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert {"meta/grad_norm", "meta/segments"} <= tags
    assert not any(t.startswith("eval/") for t in tags)         # env-step curves are not on the meta-step run
    assert [e.step for e in acc.Scalars("meta/grad_norm")] == [1, 2]
    assert "config/text_summary" in acc.Tags()["tensors"]       # the resolved config as TensorBoard text
    # finished games are logged per game at the env step of their visit (task) they ended, each visit a TensorBoard
    # run of its own (games/<game>/visit_<S>, S: the run's env steps when it began), so no line joins two visits;
    # the SPS of each task on the run's env-step axis in games/
    games = _acc(tmp_path / "games")
    assert set(games.Tags()["scalars"]) == {"charts/Breakout/SPS"}
    assert len(games.Scalars("charts/Breakout/SPS")) == 2       # one point per task
    visits = sorted((tmp_path / "games" / "Breakout").glob("visit_*"))
    assert [v.name for v in visits][0] == "visit_000000000000" and len(visits) == 2
    assert int(visits[1].name.split("_")[1]) == games.Scalars("charts/Breakout/SPS")[0].step
    for visit in visits:
        acc = _acc(visit)
        assert {"charts/Breakout/episodic_return", "charts/Breakout/episodic_length", "losses/Breakout/policy",
                "losses/Breakout/value", "losses/Breakout/entropy"} <= set(acc.Tags()["scalars"])
        assert "charts/episodic_return" not in acc.Tags()["scalars"]         # no curve mixing games
        steps = [e.step for e in acc.Scalars("charts/Breakout/episodic_return")]
        assert steps == sorted(steps) and 0 < steps[-1] <= 1200 + 20         # the visit's own axis
    # held-out: meta-init and random-init are two TensorBoard runs with the same tags (one card each game)
    meta, rand = _acc(tmp_path / "eval" / "meta_init"), _acc(tmp_path / "eval" / "random_init")
    tag = "eval/Breakout/episodic_return"
    assert tag in meta.Tags()["scalars"] and tag in rand.Tags()["scalars"]
    assert set(meta.Tags()["scalars"]) == set(rand.Tags()["scalars"])
    # one seed: no spread (eval_std/, its section, has none); one game: no eval/mean/
    assert not [t for t in meta.Tags()["scalars"] if t.startswith("eval_std/") or t.startswith("eval/mean/")]
    seed = _acc(tmp_path / "eval" / "meta_init" / "seed_0")
    assert "eval_seeds/Breakout/episodic_return" in seed.Tags()["scalars"]
    grid = set(int(x) for x in np.linspace(1200 / 50, 1200, 50))
    eval_steps = {e.step for e in meta.Scalars(tag)}
    assert eval_steps and eval_steps <= grid
    assert (tmp_path / "eval_atari.png").is_file() and (tmp_path / "eval_atari.md").is_file()
    assert set(result["games"]["Breakout"]) == {"meta_init", "random_init"}
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["version"] and info["atari_backend"] == "envpool" and "git_commit" in info


def test_atari_run_prints_progress_and_the_table(atari_run):
    tmp_path, _, err = atari_run
    assert "env steps" in err and "SPS" in err                  # the bar's postfix
    assert "held-out Breakout meta init seed 1/1: final score" in err
    assert "held-out Breakout random init seed 1/1: final score" in err
    assert "| Breakout |" not in err and "video:" not in err    # the table comes from the command, last
    for line in (f"table: {tmp_path / 'eval_atari.md'}", f"plot: {tmp_path / 'eval_atari.png'}",
                 f"tensorboard --logdir {tmp_path}"):
        assert line in err


def test_metarl_plot_of_an_atari_run_is_per_game(atari_run, tmp_path):
    from train.plot import figure, plot_runs, select_series

    run_dir = atari_run[0]
    name, series = select_series(run_dir)                        # the default: held-out curves
    assert {(s.panel, s.label) for s in series} == {("Breakout", "Leap init"), ("Breakout", "random init")}
    _, training = select_series(run_dir, "charts/episodic_return")     # expanded to the per-game tags
    assert {(s.panel, s.label) for s in training} == {("Breakout", "first visit"), ("Breakout", "latest visit")}
    fig = figure([run_dir])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["Breakout"]
    assert sorted(line.get_label() for line in axes[0].get_lines()) == ["Leap init (n=1)", "random init (n=1)"]
    out = plot_runs([run_dir], out=str(tmp_path / "plot.png"))
    assert out.is_file() and out.stat().st_size > 0


def test_metarl_eval_video_records_each_init_and_ends_with_the_table(atari_run, tmp_path, capsys):
    """`metarl eval RUN_DIR --video` on a run trained without videos: one MP4 per held-out game and
    initialisation (read back whole), the same game as a GIF in each TensorBoard evaluation run, the result's
    `videos`, and the held-out table with the config's note as the last lines."""
    import shutil

    import imageio.v3 as iio

    run_dir = tmp_path / "run"
    shutil.copytree(atari_run[0], run_dir)
    saved = run_dir / "config.yaml"
    saved.write_text(saved.read_text().replace("video_frames: 1000", "video_frames: 200"))    # a short video
    code, out, err = cli(["eval", str(run_dir), "--video"], capsys)
    assert code == 0, err[-2000:]
    result = json.loads(out)
    for init in ("meta_init", "random_init"):
        entry = result["videos"]["Breakout"][init]
        assert entry["file"] == f"videos/Breakout_{init}.mp4" and 2 <= entry["frames"] <= 200
        assert entry["game_over"] == (entry["frames"] < 200)
        assert iio.imread(run_dir / entry["file"], plugin="FFMPEG").shape == (entry["frames"], 210, 160, 3)
        assert f"video: {run_dir / entry['file']} ({entry['frames']} frames" in err
        assert _acc(run_dir / "eval" / init).Tags()["images"] == ["videos/Breakout"]
    lines = err.rstrip().splitlines()
    note = load_config(saved).eval.note
    assert note and lines[-1] == note
    assert lines[-6].startswith("held-out games: 1,200 env steps per run, 1 seed per game")
    assert lines[-4].split()[:2] == ["game", "init"] and lines[-3].startswith("Breakout  random init")
    assert lines[-2].startswith("Breakout  Leap init")            # one game: no mean rows
