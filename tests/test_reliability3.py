"""Reliability, third round (issue 29): per-split Atari results, `metarl eval` of seed-batched maze runs and
its lock, evaluation parts checked on load, `metarl export` atomic and refusing, a resource budget checked
before anything is allocated. One test (or more) per defect."""

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import cli, one_line

ROOT = Path(__file__).resolve().parent.parent
ATARI = ROOT / "configs" / "atari_leap.yaml"
# one game in every list, one held-out run per split (meta_init only): seconds
ATARI_TINY = ["atari.train_games=[Breakout]", "atari.val_games=[Breakout]", "atari.test_games=[Breakout]",
              "atari.test_on_train_games=true", "atari.a2c.num_envs=4", "inner.steps=300", "meta.steps=1",
              "meta.meta_batch=1", "eval.tasks=1", "eval.steps=300", "eval.random_init=false",
              "run.progress=false", "run.threads=1"]


def snapshot(folder: Path, names=None) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (names is None or p.name in names)}


@pytest.fixture(scope="module")
def atari_run(tmp_path_factory, one_thread):
    pytest.importorskip("envpool")
    from train.cli import main
    d = tmp_path_factory.mktemp("atari") / "run"
    assert main(["train", str(ATARI), *ATARI_TINY, "--run-dir", str(d)]) == 0
    return d


# ------------------------------------------------------------------------------------------------
# 1. Atari: each split has its own result files, which say which split they hold


def test_eval_of_the_val_split_keeps_the_test_results(atari_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    test_files = snapshot(run, {"eval_atari.json", "eval_atari.md", "eval_atari.png", "eval.json"})
    assert json.loads((run / "eval_atari.json").read_text())["split"] == "test"
    assert "test games" in (run / "eval_atari.md").read_text()
    code, out, err = cli(["eval", run, "--split", "val"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["split"] == "val"
    assert snapshot(run, set(test_files)) == test_files             # the test results are untouched
    val = json.loads((run / "eval_atari_val.json").read_text())
    assert val["split"] == "val" and set(val["games"]) == {"Breakout"}
    assert "val games" in (run / "eval_atari_val.md").read_text() and (run / "eval_atari_val.png").is_file()
    assert sorted(p.name for p in (run / "eval_parts" / "val").iterdir()) == ["Breakout__meta_init__0.json"]
    assert (run / "eval_val" / "meta_init").is_dir()                # TensorBoard: runs of its own


def test_report_reads_the_test_split_only(atari_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    data = json.loads((run / "eval_atari.json").read_text())
    (run / "eval_atari.json").write_text(json.dumps({**data, "split": "val"}))
    code, _, err = cli(["report", run, "--out", tmp_path / "report", "--reps", "10"], capsys)
    assert code == 2 and "no finished runs" in one_line(err)


def test_a_split_without_games_is_refused_in_one_line(atari_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("val_games:\n  - Breakout\n", "val_games: []\n"))
    assert "val_games: []" in (run / "config.yaml").read_text()
    before = snapshot(run)
    code, _, err = cli(["eval", run, "--split", "val"], capsys)
    assert code == 2 and "'atari.val_games' is empty" in one_line(err)
    assert snapshot(run) == before and not (run / "eval_parts" / "val").exists()


# ------------------------------------------------------------------------------------------------
# 2. `metarl eval` of a seed-batched maze run: never over a seed folder that trained on alone; the lock


@pytest.fixture(scope="module")
def maze_batch(tmp_path_factory):
    from test_maze_seed_batch import tiny_cfg

    from train.trainer import train
    d = tmp_path_factory.mktemp("maze") / "batch"
    train(tiny_cfg("rnn", 0, [3, 1]), d)
    return d


def test_eval_leaves_a_seed_folder_that_trained_on_alone(maze_batch, tmp_path, capsys):
    batch = tmp_path / "batch"
    shutil.copytree(maze_batch, batch)
    code, _, err = cli(["train", "--resume", batch / "seed_1", "meta.steps=4"], capsys)
    assert code == 0, err
    alone = snapshot(batch / "seed_1")
    code, out, err = cli(["eval", batch], capsys)
    assert code == 0, err
    assert "seed_1 has trained on alone" in one_line(err)
    assert snapshot(batch / "seed_1") == alone                      # config.yaml, eval.json, checkpoints kept
    assert set(json.loads(out.splitlines()[0])["per_seed"]) == {"3", "1"}
    code, _, err = cli(["train", "--resume", batch / "seed_1", "meta.steps=5"], capsys)
    assert code == 0, err                                           # and it still trains on


def test_eval_rewrites_the_seed_folders_the_batch_wrote(maze_batch, tmp_path, capsys):
    batch = tmp_path / "batch"
    shutil.copytree(maze_batch, batch)
    (batch / "seed_3" / "eval.json").unlink()
    code, _, err = cli(["eval", batch], capsys)
    assert code == 0 and err.strip() == "", err
    assert json.loads((batch / "seed_3" / "eval.json").read_text())["seed"] == 3
    assert json.loads((batch / "seed_1" / "batched.json").read_text())["step"] == 3      # what the batch wrote


def test_eval_holds_the_run_directory_lock(maze_batch, tmp_path, capsys):
    from train.rundir import RunLock
    batch = tmp_path / "batch"
    shutil.copytree(maze_batch, batch)
    before = snapshot(batch)
    with RunLock(batch):                        # a live run holds the directory
        code, _, err = cli(["eval", batch], capsys)
        assert code == 2 and "is in use by process" in one_line(err)
    assert snapshot(batch) == before
    (batch / "seed_3" / "eval.json").unlink()
    with RunLock(batch / "seed_3"):             # seed 3 trains alone right now
        code, _, err = cli(["eval", batch], capsys)
    assert code == 0 and "seed_3 is in use by process" in one_line(err)
    assert not (batch / "seed_3" / "eval.json").exists()
