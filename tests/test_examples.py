"""Smoke tests of examples/: each script runs as a user would run it (a subprocess, from another folder) at tiny
step counts, and what it prints is checked: the result lines exist, their numbers are finite, and what the
script says it did shows in its numbers (θ⁰ moved, by the sized outer step; the warps received gradients)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?[0-9.]+|nan|inf)"


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def numbers(pattern: str, text: str) -> list[tuple[float, ...]]:
    found = [tuple(float(x) for x in m) if isinstance(m, tuple) else (float(m),) for m in re.findall(pattern, text)]
    assert found, f"no line matches {pattern!r} in:\n{text}"
    return found


def test_warp_rnn_maze(tmp_path):
    out = run_example("warp_rnn_maze.py", ["--windows", "3", "--every", "2", "--mazes", "4", "--episode-length", "20",
                                           "--lines", "3"], tmp_path)
    assert out.returncode == 0, out.stderr
    windows = numbers(rf"window (\d+)/3: episodes (\d+), mean return {NUMBER}, warp grad norm {NUMBER}", out.stdout)
    assert [w[:2] for w in windows] == [(1, 8), (2, 16), (3, 24)]
    assert all(math.isfinite(w[2]) for w in windows)
    assert windows[-1][3] > 0 and all(math.isfinite(w[3]) for w in windows)   # φ got its warp gradients
    curve = re.search(r"return curve: (.*)", out.stdout).group(1).split()
    assert len(curve) == 3 and all(math.isfinite(float(r)) for r in curve)
    (result,) = numbers(rf"result warp-rnn: mean return {NUMBER} over the last (\d+) episodes", out.stdout)
    assert math.isfinite(result[0]) and result[1] == 4


@pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="envpool is not installed")
def test_leap_a2c_atari(tmp_path):
    out = run_example("leap_a2c_atari.py", ["--meta-steps", "1", "--visit-steps", "100", "--eval-steps", "100",
                                            "--seeds", "2", "--num-envs", "2", "--max-game-steps", "20",
                                            "--last-games", "3"], tmp_path)
    assert out.returncode == 0, out.stderr
    (step,) = numbers(rf"meta-step 1/1: visit scores .* \| visit ‖θᴷ−θ⁰‖ {NUMBER}, meta-step ‖Δθ⁰‖ {NUMBER}",
                      out.stdout)
    visit, init_step = step
    assert visit > 0
    # SGD lr 1 with step_fraction 0.25: θ⁰ moves a quarter of the mean visit's displacement (docs/leap.md §8)
    assert init_step == pytest.approx(0.25 * visit, abs=2e-3)
    (moved,) = numbers(rf"theta0 moved {NUMBER}", out.stdout)
    assert moved[0] == pytest.approx(init_step, abs=1e-3)            # one meta-step: all of θ⁰'s movement
    seeds = numbers(rf"held-out Assault seed (\d) (?:leap|random) encoder: {NUMBER} \((\d+) games\)", out.stdout)
    assert len(seeds) == 4 and all(math.isfinite(s[1]) and s[2] > 0 for s in seeds)
    for init in ("leap", "random"):
        (mean, std) = numbers(rf"result Assault {init} encoder: {NUMBER} ± {NUMBER} \(mean ± sample std over 2 seeds",
                              out.stdout)[0]
        assert math.isfinite(mean) and math.isfinite(std) and std >= 0


@pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="envpool is not installed")
def test_leap_example_visit_is_the_package_a2c_loop(one_thread):
    """The example's hand-written visit (its seam, ``train_agent``) gives the meta-gradient, trained agent and
    stepped θ⁰ of agents.a2c.train_agent under the same watch, tensor for tensor."""
    import torch

    from agents.a2c import A2CConfig, make_optimizer, train_agent
    from envs.atari import make_atari
    from metarl import Leap, LeapConfig, MetaOptimizerConfig

    spec = importlib.util.spec_from_file_location("leap_a2c_atari", ROOT / "examples" / "leap_a2c_atari.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cfg = A2CConfig(num_envs=4, optimizer="rmsprop")
    out = {}
    for way in ("example", "package"):
        meta = Leap(example.new_agent("AirRaid", 0), LeapConfig(p=2), include=["encoder."],
                    meta_optimizer=MetaOptimizerConfig(lr=1.0, step_fraction=0.25))
        model = example.new_agent("DemonAttack", 7)
        meta.load_init(model, skip=example.HEADS)
        if way == "example":
            example.train_agent("DemonAttack", model, 200, 7, cfg, 27_000, meta)
        else:
            envs = make_atari("DemonAttack", 4, 7, train=True)
            optimizer = make_optimizer(model.parameters(), cfg)
            with meta.watch(model, optimizer) as watch:
                train_agent([envs], model, optimizer, 200, watch=watch, cfg=cfg, final_loss=True,
                            generator=torch.Generator().manual_seed(7))
            envs.close()
        grads = [g.clone() for g in meta.meta_gradient()]
        meta.meta_step()
        out[way] = grads, model.state_dict(), meta.init_state
    (g1, m1, i1), (g2, m2, i2) = out["example"], out["package"]
    assert len(g1) == 8 and all(torch.equal(a, b) for a, b in zip(g1, g2)) and any(bool(a.any()) for a in g1)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(i1[k], i2[k]) for k in i1)


@pytest.mark.parametrize("name, args", [("leap_a2c_atari.py", ["--seeds", "0"]),
                                        ("warp_rnn_maze.py", ["--windows", "0"])])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, name, args):
    out = run_example(name, args, tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "must be >= 1" in lines[0] and "Traceback" not in out.stderr, out.stderr
