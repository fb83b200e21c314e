"""The trainer on sine regression: transfer, exact resume, TensorBoard output, the CLI."""

from pathlib import Path

import pytest
import torch

from train.checkpoint import list_checkpoints, load_latest
from train.cli import main
from train.config import load_config
from train.trainer import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def cfg_for(method: str, *overrides: str):
    return load_config(CONFIGS / f"sine_{method}.yaml",
                       ["run.progress=false", "run.threads=1", "eval.every=0", *overrides])


@pytest.fixture(scope="module")
def sine_results(tmp_path_factory):
    out = {}
    for method in ("leap", "reptile", "no_pretraining"):
        cfg = cfg_for(method, "meta.steps=60", "eval.tasks=10")
        out[method] = train(cfg, tmp_path_factory.mktemp(method))
    return out


def test_leap_and_reptile_beat_no_pretraining_on_held_out_sine(sine_results):
    none = sine_results["no_pretraining"]["auc"]
    assert sine_results["leap"]["auc"] < 0.7 * none
    assert sine_results["reptile"]["auc"] < 0.7 * none


def test_resume_is_exact(tmp_path):
    cfg = cfg_for("leap", "meta.steps=6", "run.checkpoint_every=2", "eval.tasks=2")
    train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "split", stop_after=3)          # killed after meta-step 3; last checkpoint at 2
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["checkpoint-0000002.pt"]
    train(cfg, tmp_path / "split", resume=True)
    full, _ = load_latest(tmp_path / "full")
    split, _ = load_latest(tmp_path / "split")
    assert int(full["step"]) == int(split["step"]) == 6
    for k, v in full["meta"]["init"].items():
        assert torch.equal(v, split["meta"]["init"][k]), k


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
    cfg = cfg_for("reptile", "meta.steps=4", "run.checkpoint_every=2", "eval.tasks=2")
    train(cfg, tmp_path)
    latest = list_checkpoints(tmp_path)[-1]
    latest.write_bytes(latest.read_bytes()[:100])          # truncated write
    state, path = load_latest(tmp_path)
    assert path.name == "checkpoint-0000002.pt" and int(state["step"]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_tensorboard_scalars_and_eval_cli(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_for("leap", "meta.steps=4", "eval.every=2", "eval.tasks=2")
    train(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"meta/grad_norm", "meta/path_length", "losses/train_auc", "eval/auc", "eval/final_loss"} <= tags
    assert [e.step for e in acc.Scalars("meta/grad_norm")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/auc")] == [2, 4]
    assert (tmp_path / "config.yaml").is_file()
    assert load_config(tmp_path / "config.yaml").leap.p == 1      # the saved config round-trips
    assert main(["eval", str(tmp_path)]) == 0
    assert '"auc"' in capsys.readouterr().out


def test_periodic_evaluations_on_their_own_split(tmp_path):
    """eval.periodic_split=val: validation curves while training (eval_val/*), the final test on eval/*; the
    final evaluation equals `metarl eval --split test` and the periodic one `--split val` at that step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from train.evaluate import evaluate_run

    cfg = cfg_for("leap", "meta.steps=2", "eval.every=1", "eval.tasks=2", "eval.split=test",
                  "eval.periodic_split=val")
    result = train(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval_val/auc")] == [1]
    assert [e.step for e in acc.Scalars("eval/auc")] == [2]
    assert acc.Scalars("eval/auc")[0].value == pytest.approx(result["auc"])
    assert evaluate_run(tmp_path, "test")["auc"] == pytest.approx(result["auc"])
    assert evaluate_run(tmp_path, "val")["auc"] != pytest.approx(result["auc"])     # other tasks


def test_every_method_trains(tmp_path):
    for method in ("fomaml", "maml", "finetune"):
        cfg = cfg_for(method, "meta.steps=2", "eval.tasks=1")
        result = train(cfg, tmp_path / method)
        assert set(result) >= {"auc", "final_loss", "test_loss"}


# ------------------------------------------------------------------------------------------------
# the loop's callbacks and its clean-up


def test_a_signal_mid_run_closes_the_watch_the_bar_and_the_writers(tmp_path, monkeypatch):
    """SIGTERM during a continual run (train/cli.py turns it into Stopped, a KeyboardInterrupt) leaves no watch
    hook on the stream's optimiser, the progress bar and every TensorBoard writer closed, and each callback's
    ``on_training_end`` called; the checkpoint of the last finished meta-step is kept."""
    import os
    import signal

    from train import trainer
    from train.callbacks import Callback
    from train.cli import Stopped, stop_signals
    from train.progress import LogBar

    closed = {"bars": 0, "loggers": 0}
    bar_close, logger_close = LogBar.close, trainer.Logger.close

    def close_bar(self):            # off a terminal (as under pytest) the bar is a LogBar (train/progress.py)
        closed["bars"] += 1
        bar_close(self)

    def close_logger(self):
        closed["loggers"] += 1
        logger_close(self)

    monkeypatch.setattr(LogBar, "close", close_bar)
    monkeypatch.setattr(trainer.Logger, "close", close_logger)

    class Signal(Callback):
        def __init__(self):
            self.points = []

        def on_training_start(self, run):
            self.points.append("start")
            self.optimizer = run.stream.optimizer

        def on_meta_step(self, run, logs):
            self.points.append(run.meta.meta_steps)
            self.hooks = len(self.optimizer._optimizer_step_pre_hooks)
            if run.meta.meta_steps == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_training_end(self, run):           # after the run's own callbacks, before the writers close
            self.points.append("end")
            self.closed = dict(closed)

    cb = Signal()
    cfg = cfg_for("no_pretraining", "meta.every=4", "meta.steps=5", "run.checkpoint_every=1", "run.progress=true")
    with pytest.raises(Stopped), stop_signals():
        train(cfg, tmp_path, callbacks=[cb])
    assert cb.points == ["start", 1, 2, "end"] and cb.hooks > 0
    assert len(cb.optimizer._optimizer_step_pre_hooks) == 0 and len(cb.optimizer._optimizer_step_post_hooks) == 0
    assert cb.closed == {"bars": 1, "loggers": 0} and closed == {"bars": 1, "loggers": 1}
    assert int(load_latest(tmp_path)[0]["step"]) == 2 and not (tmp_path / "eval.json").exists()


def test_train_and_eval_write_the_same_final_evaluation(tmp_path):
    """One final evaluation for `metarl train` and `metarl eval`: the same eval.json (the checkpoint evaluated
    included) and the same eval/* points; another split goes to eval_<split>.json and eval_<split>/*."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from train.evaluate import evaluate_run

    def points(tag):
        acc = EventAccumulator(str(tmp_path))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    train(cfg_for("leap", "meta.steps=2", "eval.tasks=2"), tmp_path)
    trained = json.loads((tmp_path / "eval.json").read_text())
    assert trained["checkpoint"] == "checkpoint-0000002.pt" and trained["split"] == "test"
    auc, curve = points("eval/auc"), points("eval/loss_curve")
    assert len(auc) == 1 and len(curve) == 11
    (tmp_path / "eval.json").unlink()
    assert {k: v for k, v in evaluate_run(tmp_path).items()} == trained
    assert json.loads((tmp_path / "eval.json").read_text()) == trained
    assert points("eval/auc") == auc * 2 and points("eval/loss_curve")[11:] == curve
    val = evaluate_run(tmp_path, "val")
    assert json.loads((tmp_path / "eval_val.json").read_text()) == val and val["split"] == "val"
    assert points("eval_val/auc") == [(2, pytest.approx(val["auc"]))]
    assert json.loads((tmp_path / "eval.json").read_text()) == trained
