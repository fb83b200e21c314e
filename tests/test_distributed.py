"""Two gloo processes on localhost give the meta-parameters of one process over the same tasks."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from train.checkpoint import load_latest

ROOT = Path(__file__).resolve().parent.parent


def launch(nproc: int, run_dir: Path, config: str, *overrides: str) -> None:
    train(nproc, config, "--run-dir", str(run_dir), "run.progress=false", "eval.every=0", "eval.tasks=1", *overrides)


def train(nproc: int, *args: str) -> None:
    """``metarl train ARGS`` under torchrun with ``nproc`` ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "train.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_two_ranks_match_one_for_leap(tmp_path):
    cfg = str(ROOT / "configs" / "sine_leap.yaml")
    launch(1, tmp_path / "one", cfg, "meta.steps=3", "meta.meta_batch=4")
    launch(2, tmp_path / "two", cfg, "meta.steps=3", "meta.meta_batch=4")
    one, _ = load_latest(tmp_path / "one")
    two, _ = load_latest(tmp_path / "two")
    for k, v in one["meta"]["init"].items():
        torch.testing.assert_close(two["meta"]["init"][k], v, atol=1e-6, rtol=0)
    assert len(list((tmp_path / "two").glob("checkpoint-*.pt"))) >= 1


def test_two_ranks_resumed_mid_run_match_one_rank_run_through(tmp_path):
    """Long runs (the Omniglot paper protocol) go in parts: a 2-rank run stopped at a checkpoint and resumed
    by 2 ranks ends where one rank that never stopped does."""
    cfg = str(ROOT / "configs" / "sine_leap.yaml")
    launch(2, tmp_path / "two", cfg, "meta.steps=4", "meta.meta_batch=4", "run.checkpoint_every=2")
    train(2, "--resume", str(tmp_path / "two"), "meta.steps=6")
    launch(1, tmp_path / "one", cfg, "meta.steps=6", "meta.meta_batch=4", "run.checkpoint_every=2")
    one, _ = load_latest(tmp_path / "one")
    two, path = load_latest(tmp_path / "two")
    assert path.name == "checkpoint-0000006.pt"
    for k, v in one["meta"]["init"].items():
        torch.testing.assert_close(two["meta"]["init"][k], v, atol=1e-6, rtol=0)


def test_two_ranks_match_one_for_online_warpgrad(tmp_path):
    from tiered_fixture import make_tiny_tiered
    root = make_tiny_tiered(tmp_path / "data", seed=0, images_per_class=30)
    cfg = str(ROOT / "configs" / "tiered_leap_tiny.yaml")
    extra = ["method=warpgrad", "tiered.warp=linear", "warpgrad.algorithm=online", f"tiered.root={root}",
             "meta.steps=2", "meta.meta_batch=2", "inner.steps=3"]
    launch(1, tmp_path / "one", cfg, *extra)
    launch(2, tmp_path / "two", cfg, *extra)
    one, _ = load_latest(tmp_path / "one")
    two, _ = load_latest(tmp_path / "two")
    assert any(k.startswith("warps.") for k in one["meta"]["init"])
    for k, v in one["meta"]["init"].items():
        torch.testing.assert_close(two["meta"]["init"][k], v, atol=1e-6, rtol=0)


def test_fine_tuning_is_refused_under_torchrun_in_one_line(tmp_path, capsys, monkeypatch):
    """Fine-tuning's tasks form a chain that ranks cannot split (metarl/finetune.py): refused at launch, in
    one line with exit code 2 per rank, before the run directory is made; offline WarpGrad likewise."""
    from cli_helpers import cli, one_line
    monkeypatch.setenv("WORLD_SIZE", "2")
    for config, extra, reason in [("sine_finetune.yaml", [], "fine-tuning chains the tasks"),
                                  ("tiered_leap_tiny.yaml", ["method=warpgrad", "tiered.warp=linear"],
                                   "offline replays samples in sequence")]:
        code, _, err = cli(["train", ROOT / "configs" / config, *extra, "--run-dir", tmp_path / "r"], capsys)
        line = one_line(err)
        assert code == 2 and reason in line and "launch it without torchrun" in line, line
        assert not (tmp_path / "r").exists()
    monkeypatch.delenv("WORLD_SIZE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.cli",
           "train", str(ROOT / "configs" / "sine_finetune.yaml"), "--run-dir", str(tmp_path / "two"),
           "run.progress=false", "meta.steps=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert out.returncode != 0 and not (tmp_path / "two").exists()
    lines = [x for x in out.stderr.splitlines() if x.startswith("metarl: error:")]
    assert len(lines) == 2 and "fine-tuning chains the tasks" in lines[0], out.stderr[-2000:]
    assert "exitcode  : 2" in out.stderr or "exitcode: 2" in out.stderr.replace(" ", ""), out.stderr[-2000:]


def test_torchrun_no_python_runs_the_console_script_beside_a_users_train_py(tmp_path):
    """The README's launch: `torchrun --no-python metarl train ...` imports the installed package, so a
    user's own train.py in the working folder does not shadow it (as it would `-m train.cli`)."""
    import pytest
    bin_dir = Path(sys.executable).parent
    torchrun, metarl = bin_dir / "torchrun", bin_dir / "metarl"
    if not (torchrun.exists() and metarl.exists()):
        pytest.skip("torchrun or the metarl console script is not installed beside this Python")
    (tmp_path / "train.py").write_text("raise SystemExit('the user train.py was imported')\n")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--no-python", str(metarl), "train",
           str(ROOT / "configs" / "sine_leap.yaml"), "--run-dir", "run", "run.progress=false", "eval.every=0",
           "eval.tasks=1", "meta.steps=2", "meta.meta_batch=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    state, _ = load_latest(tmp_path / "run")
    assert int(state["step"]) == 2 and (tmp_path / "run" / "eval.json").is_file()
