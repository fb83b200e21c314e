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
              "meta.meta_batch=1", "eval.tasks=1", "eval.steps=1200", "eval.random_init=false",
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


def test_report_of_the_val_split_reads_only_val_results(atari_run, tmp_path, capsys):
    """`metarl report --split val`: a choice made on validation games is reported from the val results (a
    training run's eval.json when it evaluated val, else `metarl eval --split val`'s eval_atari_val.json), and
    a run with test results only is skipped with a note — never its test games reported as validation."""
    run, tested = tmp_path / "run", tmp_path / "tested"
    shutil.copytree(atari_run, run)
    shutil.copytree(atari_run, tested)
    code, _, err = cli(["eval", run, "--split", "val"], capsys)
    assert code == 0, err
    val = json.loads((run / "eval_atari_val.json").read_text())
    # mark the val scores and curve apart from the test ones (the tiny run's val and test game are both Breakout)
    val["games"]["Breakout"]["meta_init"]["auc_scores"] = [123.0]
    (run / "eval_atari_val.json").write_text(json.dumps(val))
    part = run / "eval_parts" / "val" / "Breakout__meta_init__0.json"
    part.write_text(json.dumps({**json.loads(part.read_text()), "curve": [321.0] * 4}))
    code, _, err = cli(["report", run, tested, "--split", "val", "--metric", "human_normalised_auc",
                        "--out", tmp_path / "val", "--reps", "10"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "val" / "report.json").read_text())
    assert report["split"] == "val"
    assert any(str(tested) in n and "not the val games" in n for n in report["notes"])
    (row,) = report["suites"]["atari"]["per_task"]["Breakout"].values()
    assert row["score_auc"]["mean"] == 123.0
    assert "Split: the val tasks' results" in (tmp_path / "val" / "report.md").read_text()
    assert (tmp_path / "val" / "curves_atari.png").is_file()                  # the val evaluation's curves
    curves = (tmp_path / "val" / "seed_curves.csv").read_text()
    assert "321" in curves and "Breakout" in curves                          # from eval_parts/val
    code, _, err = cli(["report", run, "--out", tmp_path / "test", "--reps", "10"], capsys)   # test: unchanged
    report = json.loads((tmp_path / "test" / "report.json").read_text())
    assert code == 0 and "split" not in report
    (row,) = report["suites"]["atari"]["per_task"]["Breakout"].values()
    assert row["score_auc"]["mean"] != 123.0


def test_a_result_that_does_not_say_its_split_is_of_the_runs_eval_split(atari_run, tmp_path, capsys):
    """Result files written before they recorded their split: a run trained with eval.split: val holds val
    results, which a test report never counts (one line naming why, when nothing else is left)."""
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    config = (run / "config.yaml").read_text()
    assert "  split: test\n" in config
    (run / "config.yaml").write_text(config.replace("  split: test\n", "  split: val\n"))
    for name in ("eval_atari.json", "eval.json"):
        data = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps(data["games"] if name == "eval_atari.json" else
                                           {k: v for k, v in data.items() if k != "split"}))
    code, _, err = cli(["report", run, "--out", tmp_path / "test", "--reps", "10"], capsys)
    assert code == 2 and "its held-out result is of the val games, not the test games; skipped" in one_line(err)


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


# ------------------------------------------------------------------------------------------------
# 3. evaluation parts: the contents are checked, and a bad part runs again with one line


SETTINGS = {"seed": 0, "method": "leap", "env_steps": 300, "points": 3, "window": 10}


def good_part(**changes):
    from train.tasks.atari_eval_parts import fingerprint
    part = {"format": 1, "fingerprint": fingerprint(SETTINGS), "settings": SETTINGS, "game": "Breakout",
            "init": "meta_init", "seed": 0, "curve": [None, 1.0, 2.5], "final_score": 2.0, "final_games": 3,
            "games": 4, "env_steps": 320, "returns": [0.0, 4.0],
            "optimizer": [[80, {"square_avg_q50": 0.9, "step_multiplier_q50": None}]]}
    part.update(changes)
    return {k: v for k, v in part.items() if v != "drop"}


BAD_PARTS = [
    ({"final_score": float("nan")}, "final_score nan is not a finite number or null"),
    ({"final_score": 12345.0}, "score 12345 outside its games' range [0, 4]"),
    ({"final_score": "2.0"}, "final_score 2.0 is not a finite number or null"),
    ({"final_score": True}, "final_score True is not a finite number"),
    ({"final_score": None}, "final_score None over 3 games"),
    ({"curve": [None, 1.0]}, "curve has 2 points, not 3"),
    ({"curve": [None, 1.0, 2.5, 3.0]}, "curve has 4 points, not 3"),
    ({"curve": "drop"}, "curve is NoneType, not a list of 3 points"),
    ({"curve": [None, "1.0", 2.5]}, "curve holds a value that is not a finite number or null"),
    ({"curve": [None, float("inf"), 2.5]}, "curve holds a value that is not a finite number or null"),
    ({"curve": [None, 1.0, 40.0]}, "score 40 outside its games' range"),
    ({"games": -1}, "games -1 is not a count"),
    ({"final_games": 2.5}, "final_games 2.5 is not a count"),
    ({"returns": [4.0, 0.0]}, "returns is not [lowest, highest]"),
    ({"returns": None}, "score 1 outside its games' range"),
    ({"optimizer": [[80, [1, 2]]]}, "optimizer is not a list of [env_step, {name: value}]"),
    ({"optimizer": {"80": {}}}, "optimizer is not a list"),
    ({"video": [1]}, "video is not a recorded game's entry"),
    ({"returns": "drop", "final_score": 2e7}, "score 2e+07 outside its games' range [-1e+07, 1e+07]"),
]


@pytest.mark.parametrize("changes,why", BAD_PARTS, ids=[str(c) for c, _ in BAD_PARTS])
def test_a_part_with_bad_contents_is_run_again_and_named(changes, why, tmp_path):
    from train.checkpoint import dumps_json
    from train.tasks.atari_eval_parts import Parts
    parts = Parts(tmp_path, "test")
    parts.folder.mkdir(parents=True)
    text = json.dumps(good_part(**changes))          # json.dumps writes NaN and Infinity as a hand edit would
    parts.path("Breakout", "meta_init", 0).write_text(text)
    assert parts.load("Breakout", "meta_init", 0, SETTINGS, None) is None
    note = parts.note()
    assert "1 finished held-out run not reused, run again — bad contents: " in note and why in note, note
    assert "\n" not in note
    assert dumps_json(good_part()) == dumps_json(json.loads(json.dumps(good_part())))


@pytest.mark.parametrize("changes", [{}, {"optimizer": "drop"}, {"returns": "drop"}, {"optimizer": []},
                                     {"final_score": None, "final_games": 0, "curve": [None, None, None],
                                      "returns": None}])
def test_well_formed_parts_are_read_back(changes, tmp_path):
    from train.tasks.atari_eval_parts import Parts
    parts = Parts(tmp_path, "test")
    parts.folder.mkdir(parents=True)
    part = good_part(**changes)
    parts.path("Breakout", "meta_init", 0).write_text(json.dumps(part))
    assert parts.load("Breakout", "meta_init", 0, SETTINGS, None) == part and parts.note() == ""


def test_eval_runs_a_tampered_part_again_without_a_traceback(atari_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    part_file = run / "eval_parts" / "test" / "Breakout__meta_init__0.json"
    part = json.loads(part_file.read_text())
    assert part["returns"] is not None and part["optimizer"]          # written by this version: both recorded
    before = (run / "eval_atari.json").read_text()
    for bad in ("abc", 12345.0, float("nan")):
        part_file.write_text(json.dumps({**part, "final_score": bad}))
        code, _, err = cli(["eval", run], capsys)
        assert code == 0 and "run again — bad contents: " in one_line(err), err
        assert json.loads(part_file.read_text()) == part                # run again: the same numbers
        assert (run / "eval_atari.json").read_text() == before
    part_file.write_text(json.dumps({**part, "curve": part["curve"][:-1]}))
    code, _, err = cli(["train", "--resume", run], capsys)          # finished: refused, not a traceback
    assert code == 2 and "is finished" in one_line(err)


# ------------------------------------------------------------------------------------------------
# 4. `metarl export`: refusals before writing, atomic, both files or neither


@pytest.fixture
def export_run(tmp_path):
    """An Atari run directory in the trainer's format (a Leap θ⁰ over the Nature encoder)."""
    from agents.nets import ActorCritic
    from metarl.leap import Leap, LeapConfig
    from train.checkpoint import save_checkpoint
    from train.config import config_to_yaml, load_config
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_to_yaml(load_config(ATARI)))
    meta = Leap(ActorCritic(6, in_channels=4, network="nature"), LeapConfig(p=2), include=["encoder."])
    save_checkpoint(run, 1, {"step": 1, "meta": meta.state_dict()}, 2)
    return run


def test_export_never_writes_into_a_run_directory(export_run, tmp_path, capsys):
    before = snapshot(export_run)
    for target in (export_run / "checkpoint-0000001.pt", export_run / "checkpoint-0000002.pt",
                   export_run / "encoder.pt", export_run / "eval" / "encoder.pt"):
        for flag in ("--out", "--sb3"):
            code, _, err = cli(["export", export_run, flag, target, "--force"], capsys)
            assert code == 2 and "inside the run directory" in one_line(err), err
    other = tmp_path / "other"
    shutil.copytree(export_run, other)
    code, _, err = cli(["export", export_run, "--out", other / "checkpoint-0000003.pt"], capsys)
    assert code == 2 and "inside another run directory" in one_line(err)
    assert snapshot(export_run) == before and sorted(p.name for p in other.iterdir()) == sorted(before)


def test_export_replaces_a_file_only_with_force(export_run, tmp_path, capsys):
    import torch
    out = tmp_path / "enc.pt"
    out.write_bytes(b"keep me")
    code, _, err = cli(["export", export_run, "--out", out], capsys)
    assert code == 2 and "exists: use --force" in one_line(err) and out.read_bytes() == b"keep me"
    code, stdout, err = cli(["export", export_run, "--out", out, "--force"], capsys)
    assert code == 0 and stdout.strip() == f"wrote {out}", err
    assert all(k.startswith("encoder.") for k in torch.load(out, weights_only=True))


def test_export_to_one_file_twice_is_refused(export_run, tmp_path, capsys):
    f = tmp_path / "enc.pt"
    code, _, err = cli(["export", export_run, "--out", f, "--sb3", tmp_path / "." / "enc.pt"], capsys)
    assert code == 2 and "name the same file" in one_line(err) and not f.exists()


def test_export_write_failures_are_one_line_and_write_nothing(export_run, tmp_path, capsys, monkeypatch):
    import errno
    import os
    good = tmp_path / "enc.pt"
    code, _, err = cli(["export", export_run, "--out", good, "--sb3", tmp_path / "no" / "sb3.pt"], capsys)
    assert code == 2 and "does not exist" in one_line(err) and not good.exists()
    code, _, err = cli(["export", export_run, "--out", tmp_path, "--force"], capsys)
    assert code == 2 and "is a folder" in one_line(err)
    real_fsync, calls = os.fsync, []

    def disk_full_on_the_second(fd):        # the second file does not fit: the first is not kept either
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_the_second)
    code, _, err = cli(["export", export_run, "--out", good, "--sb3", tmp_path / "sb3.pt"], capsys)
    assert code == 2 and "No space left on device" in one_line(err) and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]        # no file, no temp file


# ------------------------------------------------------------------------------------------------
# 6. the report tools on ordinary mistakes: one line, exit 2, nothing of a run's replaced


def maze_report(args, capsys):
    from train.maze_report import main
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_maze_report_table_of_other_runs_or_none_is_one_line(atari_run, tmp_path, capsys):
    code, _, err = maze_report(["table", atari_run], capsys)
    assert code == 2 and "is not a maze run" in one_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = maze_report(["table", tmp_path / "empty"], capsys)
    assert code == 2 and "no finished maze runs" in one_line(err)


def test_plot_never_replaces_the_runs_own_figure(atari_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    before = snapshot(run)
    for target in (run / "eval_atari.png", run / "eval_atari.json", run / "config.yaml"):
        code, _, err = cli(["plot", run, "--out", target], capsys)
        assert code == 2 and "is the run's own" in one_line(err)
    assert snapshot(run) == before
    code, out, err = cli(["plot", run, "--out", run / "mine.png"], capsys)      # a new file there is fine
    assert code == 0 and (run / "mine.png").read_bytes().startswith(b"\x89PNG"), err


def test_unwritable_figure_paths_are_one_line(maze_batch, atari_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = cli(["plot", atari_run, "--out", tmp_path / "file" / "a.png"], capsys)
    assert code == 2 and "cannot write" in one_line(err)
    code, _, err = cli(["plot", atari_run, "--out", tmp_path], capsys)
    assert code == 2 and "is a folder" in one_line(err)
    code, _, err = maze_report(["curves", maze_batch, "--out", tmp_path / "file" / "a.png", "--window", "1"], capsys)
    assert code == 2 and "cannot write" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------------------------------------
# 7. smaller: the lock without its file, a live pid in a stale lock, no readable checkpoint, a fake MP4


HOLD = ("import sys, time; from train.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)")


def test_removing_the_lock_file_by_hand_admits_no_second_writer(tmp_path):
    import subprocess
    import sys

    from train.errors import RunDirError
    from train.rundir import RunLock
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / ".metarl.lock").unlink()
        with pytest.raises(RunDirError, match="in use by another process"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()                # free once the holder is gone


def test_a_live_pid_in_a_stale_lock_is_not_called_gone(tmp_path):
    import os
    import socket

    from train.rundir import RunLock
    (tmp_path / ".metarl.lock").write_text(f"{os.getppid()} {socket.gethostname()}\n")   # alive, holds nothing
    lock = RunLock(tmp_path).acquire()
    assert "which no longer holds it" in lock.stale_warning()
    lock.release()


def test_resume_with_no_readable_checkpoint_says_it_starts_again(tmp_path, capsys):
    cfg = [str(ROOT / "configs" / "sine_leap.yaml"), "run.threads=1", "run.progress=false", "eval.every=0",
           "eval.tasks=2", "inner.steps=3", "run.checkpoint_every=1"]
    code, _, err = cli(["train", *cfg, "meta.steps=2", "--run-dir", tmp_path / "r"], capsys)
    assert code == 0, err
    for p in (tmp_path / "r").glob("checkpoint-*.pt"):
        p.write_bytes(b"garbage")
    (tmp_path / "r" / "eval.json").unlink()
    code, _, err = cli(["train", "--resume", tmp_path / "r"], capsys)
    assert code == 0 and "no checkpoint of" in err and "starts again from step 0" in err, err


def test_a_truncated_or_fake_mp4_is_not_a_video(tmp_path):
    import numpy as np

    from train.video import is_mp4, write_mp4
    path = write_mp4(tmp_path / "v.mp4", np.zeros((4, 16, 16, 3), np.uint8), 15)
    assert is_mp4(path)
    data = path.read_bytes()
    for bad in (b"\x00" * 100, data[:100], data[:-10], data + b"x"):
        (tmp_path / "bad.mp4").write_bytes(bad)
        assert not is_mp4(tmp_path / "bad.mp4")
    assert not is_mp4(tmp_path / "missing.mp4")


def test_omniglot_per_class_sizes_beyond_the_drawings_are_named(tmp_path):
    from test_omniglot import write_tree

    from train.errors import ConfigError
    from train.tasks.omniglot import OmniglotAdapter, OmniglotConfig
    from train.tasks.omniglot_data import load_omniglot
    write_tree(tmp_path, {"images_background": {"Alpha": 3, "Beta": 2}, "images_evaluation": {"Gamma": 2}})
    data = load_omniglot(tmp_path, cache_dir=None)
    config = OmniglotConfig(root=str(tmp_path), cache_dir=None, ways=2, num_pretrain=1, num_test=1,
                            train_per_class=100, test_per_class=1)
    with pytest.raises(ConfigError, match=r"train_per_class \+ omniglot.test_per_class = 101: more than the 3 "):
        OmniglotAdapter(config, seed=0, data=data)


def test_eval_seeds_evaluates_more_held_out_runs_and_reuses_the_finished_ones(atari_run, tmp_path, capsys):
    """`metarl eval RUN --seeds N` (eval.tasks for this evaluation): a run chosen on few validation seeds is
    tested on more; the parts it already has are read back, not run again; a bad N is one line, exit 2."""
    run = tmp_path / "run"
    shutil.copytree(atari_run, run)
    first = (run / "eval_parts" / "test" / "Breakout__meta_init__0.json").read_bytes()
    code, out, err = cli(["eval", run, "--seeds", "2"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["seeds"] == 2
    assert sorted(p.name for p in (run / "eval_parts" / "test").glob("*.json")) == \
        ["Breakout__meta_init__0.json", "Breakout__meta_init__1.json"]
    assert (run / "eval_parts" / "test" / "Breakout__meta_init__0.json").read_bytes() == first
    code, _, err = cli(["eval", run, "--seeds", "0"], capsys)
    assert code == 2 and one_line(err) and "eval.tasks" in err
