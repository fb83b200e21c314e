"""The Omniglot configs (paper and dev protocols, every method) validate, and the omniglot-meta-step
benchmark runs end to end on synthetic data (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import load_config

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("leap", "reptile", "fomaml", "maml", "finetune", "no_pretraining")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("protocol", ("omniglot", "omniglot_dev"))
def test_config_loads(protocol, method):
    cfg = load_config(ROOT / "configs" / f"{protocol}_{method}.yaml")
    assert cfg.task == "omniglot" and cfg.method == method and cfg.name == f"{protocol}_{method}"
    assert cfg.meta.head == "reset" and cfg.inner.optimizer == "sgd" and cfg.inner.lr == 0.1
    omni = cfg.task_config
    assert omni.fixed_characters and omni.ways == 20 and omni.batch_size == 20 and cfg.run.threads == 1
    if protocol == "omniglot":
        assert cfg.meta.meta_batch == 20 and cfg.inner.steps == 100 and cfg.eval.every in (0, 20)
        assert omni.filters == 64 and cfg.eval.tasks == 10
        # validate while training, test at the end
        assert cfg.eval.periodic_split == "val" and cfg.eval.split == "test"
    else:
        assert cfg.eval.split == "test" and cfg.eval.tasks == 10 and cfg.eval.steps == cfg.inner.steps
    outer = 0.5 if method in ("maml", "fomaml") else 0.1
    if method in ("reptile", "fomaml"):
        # chosen on the validation alphabets (docs/RESULTS.md; the paper protocol takes the quick protocol's
        # choice); Reptile's is also its paper's
        outer = 1.0
    assert cfg.meta.optimizer.name == "sgd" and cfg.meta.optimizer.lr == outer
    if method == "maml":
        assert (cfg.maml.inner_lr, cfg.maml.steps, cfg.maml.first_order) == (0.1, 5, False)
        assert omni.sampler == "cycle"


def test_meta_step_benchmark_runs_on_synthetic_data():
    from train.benchmarks import omniglot_meta_step
    threads = torch.get_num_threads()
    try:
        out = omniglot_meta_step.run(["--data", "synthetic", "--tasks", "1", "--steps", "2", "--rounds", "1",
                                      "--filters", "8", "--gemm-size", "256"])
    finally:
        torch.set_num_threads(threads)
    assert out["extrapolated"] and out["extrapolation_factor"] == 1000.0
    assert out["seconds_per_meta_step"] > 0 and len(out["measured_wall_s"]) == 1


def test_batch_norm_diagnostic_replays_the_evaluation(tmp_path):
    """train.diagnostics adapts the same held-out tasks as the run's own evaluation: its running-statistics
    figures equal eval.json's, and its re-estimated ones equal a run evaluated with batch_norm_eval=refit."""
    import json

    from train.diagnostics import batch_norm_gap
    from train.trainer import train
    args = ["run.progress=false", "meta.steps=1", "meta.meta_batch=1", "inner.steps=3", "eval.steps=3",
            "eval.tasks=2", "omniglot.filters=8"]
    saved = {}
    for mode in ("running", "refit"):
        cfg = load_config(ROOT / "configs" / "omniglot_dev_leap.yaml", [*args, f"omniglot.batch_norm_eval={mode}"])
        train(cfg, tmp_path / mode)
        saved[mode] = json.loads((tmp_path / mode / "eval.json").read_text())
    out = batch_norm_gap(tmp_path / "running")
    assert out["loss_running"] == pytest.approx(saved["running"]["test_loss"], rel=1e-6)
    assert out["acc_running"] == pytest.approx(saved["running"]["test_accuracy"], rel=1e-6)
    assert out["final_loss"] == pytest.approx(saved["running"]["final_loss"], rel=1e-6)
    assert out["loss_refreshed"] == pytest.approx(saved["refit"]["test_loss"], rel=1e-6)
    assert out["loss_refreshed"] != pytest.approx(out["loss_running"], rel=1e-6)
    assert 0.0 <= out["acc_batch"] <= 1.0 and out["loss_batch"] > 0


def test_batch_norm_diagnostic_on_a_bad_folder_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "train.diagnostics", str(tmp_path / "no_such_run")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"python -m train.diagnostics: error: run directory {tmp_path / 'no_such_run'} does "
                                 "not exist")
