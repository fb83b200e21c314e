"""Faults: SIGKILL at any point and --resume; non-finite tasks never reach the initialisation."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from train.checkpoint import list_checkpoints, load_latest
from train.config import load_config
from train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "configs" / "sine_leap.yaml"
ARGS = ["run.progress=false", "run.threads=1", "meta.steps=12", "run.checkpoint_every=1", "eval.tasks=2",
        "eval.every=0", "inner.steps=40"]


def scalars(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_sigkill_and_resume_is_exact(tmp_path):
    full = tmp_path / "full"
    train(load_config(CFG, ARGS), full)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train.cli", "train", str(CFG), "--run-dir", str(killed), *ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(killed)) < 1 or \
            (list_checkpoints(killed) and list_checkpoints(killed)[-1].name < "checkpoint-0000004.pt"):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state, _ = load_latest(killed)
    assert 1 <= int(state["step"]) < 12, "the run must be killed part-way"
    out = subprocess.run([sys.executable, "-m", "train.cli", "train", "--resume", str(killed)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    a, _ = load_latest(full)
    b, _ = load_latest(killed)
    for k, v in a["meta"]["init"].items():
        assert torch.equal(v, b["meta"]["init"][k]), k
    # TensorBoard curves continue instead of restarting: every meta-step once, in order
    assert scalars(killed, "meta/grad_norm") == list(range(1, 13))
    assert not list(killed.glob("*.tmp"))


def test_non_finite_tasks_are_skipped_and_counted(tmp_path):
    # A huge inner learning rate makes some tasks diverge; their Leap contribution must be dropped.
    cfg = load_config(CFG, ["run.progress=false", "meta.steps=3", "inner.lr=1e12", "eval.tasks=1", "eval.every=0"])
    train(cfg, tmp_path)
    state, _ = load_latest(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["meta"]["init"].values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sum(e.value for e in acc.Scalars("meta/skipped_tasks")) > 0


def test_resume_purges_each_axis_at_its_own_checkpoint(tmp_path):
    """Meta-step curves and env-step game curves are purged separately on resume (one purge step for both
    would wipe every game logged past meta-step k, i.e. all of them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.trainer import Logger
    log = Logger(tmp_path, None)
    for k in range(1, 6):
        log.scalars({"meta/x": float(k)}, k)
    for s in (100, 200, 300, 400):
        log.games({"charts/episodic_return": float(s)}, s)
    log.close()
    time.sleep(1.1)     # TensorBoard orders event files by name, i.e. by creation second, as real resumes are
    log = Logger(tmp_path, purge_step=4, games_purge_step=251)     # checkpoint: meta-step 3, env step 250
    log.scalars({"meta/x": 40.0}, 4)
    log.games({"charts/episodic_return": 260.0}, 260)
    log.close()
    runs = {}
    for name, d in (("meta/x", tmp_path), ("charts/episodic_return", tmp_path / "games")):
        acc = EventAccumulator(str(d))
        acc.Reload()
        runs[name] = [(e.step, e.value) for e in acc.Scalars(name)]
    assert runs["meta/x"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert runs["charts/episodic_return"] == [(100, 100.0), (200, 200.0), (260, 260.0)]
    from train.plot import read_scalars
    tag, steps, _ = read_scalars(tmp_path, None)            # `metarl plot` finds the games run by itself
    assert tag == "charts/episodic_return" and steps.tolist() == [100, 200, 260]
