"""Every command of the README's job sections runs as written, on a fresh folder, at tiny sizes (issue 32).

Each command is run as the README prints it, from a folder that holds the repository's `configs/` and `tests/`
(so its relative paths mean what they mean in a clone), with the environment's executables first on PATH, as
`. .venv/bin/activate` puts them. The one change: ``tiny`` adds dotted overrides (fewer steps, games, seeds and
envs: config keys docs/cli.md documents) after the command's own, so that the job runs in seconds.
Commands that need what this machine may lack are run where they can be: the CUDA line must stop in one line
(exit 2) without CUDA, the two-node line runs as two local nodes of one process each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from test_one_story import readme_commands

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"

# the README's job sections, by the start of their headings
ATARI, MAZE, SUPERVISED, DEVICES = ("Meta-train an Atari", "Train Warp-RNN maze", "Omniglot, tieredImageNet",
                                    "Run on GPUs")

ATARI_TINY = ["inner.steps=400", "meta.steps=1", "meta.meta_batch=2", "eval.tasks=1", "eval.steps=800",
              "atari.a2c.num_envs=4", "run.threads=1"]
TINY = {    # config → overrides that make its run tiny
    "configs/atari_leap.yaml": ATARI_TINY,
    "configs/atari_leap_paper.yaml": [*ATARI_TINY, "atari.test_games=[Breakout]"],
    "configs/maze_warp_rnn_10seeds.yaml": ["meta.steps=1", "meta.every=2", "maze.batch=4", "maze.final_window=8"],
    "configs/maze_rnn_10seeds.yaml": ["meta.steps=1", "meta.every=2", "maze.batch=4", "maze.final_window=8"],
    "configs/omniglot_quick_leap.yaml": ["meta.steps=1", "meta.meta_batch=1", "inner.steps=2", "eval.tasks=1",
                                         "eval.steps=2"],
    "configs/tiered_leap_tiny.yaml": ["meta.steps=1", "inner.steps=2", "eval.tasks=1"],
    "configs/continual_sine_warp_cpu.yaml": ["meta.steps=1", "meta.meta_batch=1", "eval.tasks=2"],
}


def section_commands(heading: str) -> list[list[str]]:
    """The shell commands of the README section whose heading starts with ``heading``."""
    text = (ROOT / "README.md").read_text()
    (section,) = [s for s in re.split(r"^## ", text, flags=re.M) if s.startswith(heading)]
    return readme_commands(section)


def tiny(cmd: list[str]) -> list[str]:
    """``cmd`` with its config's tiny overrides after the command's own (before its next option, so that they win
    and the parser takes them as overrides), and the environment's executables."""
    out = [str(BIN / cmd[0]) if (BIN / cmd[0]).is_file() else sys.executable if cmd[0] == "python" else cmd[0],
           *cmd[1:]]
    for i, word in enumerate(out):
        if word in TINY:
            j = next((j for j in range(i + 1, len(out)) if out[j].startswith("--")), len(out))
            return [*out[:j], *TINY[word], *out[j:]]
    return out


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A fresh folder that reads like the repository's root (its configs/ and tests/) and an environment as after
    `. .venv/bin/activate`; the package comes from this checkout."""
    for name in ("configs", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}".rstrip(":")}
    return tmp_path, env


def run(cmd: list[str], cwd: Path, env: dict, expect: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(tiny(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == expect, (cmd, out.stderr[-3000:])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_lists(cmd: list[str], cwd: Path, env: dict, run: str) -> bool:
    """Start the README's TensorBoard command, wait until its list of runs (over HTTP) has ``run`` or a run under it,
    stop it."""
    proc = subprocess.Popen(tiny(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.time() + 120, None
        while url is None and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            found = re.search(r"(http://[\w.-]+:\d+/)", line)
            url = found.group(1) if found else None
        assert url is not None, "TensorBoard printed no address"
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url + "data/runs", timeout=10) as response:
                    if any(r == run or r.startswith(run + "/") for r in json.loads(response.read())):
                        return True
            except OSError:
                pass
            time.sleep(1)
        return False
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_atari_section(clone):
    pytest.importorskip("envpool")
    cwd, env = clone
    commands = section_commands(ATARI)
    assert [c[:2] for c in commands] == [["metarl", "train"], ["tensorboard", "--logdir"], ["metarl", "eval"],
                                         ["metarl", "plot"], ["metarl", "export"]]
    train, board, evaluate, plot, export = commands
    out = run(train, cwd, env)
    run_dir = cwd / train[train.index("--run-dir") + 1]
    assert re.search(r"^Atlantis +random init", out.stderr, re.M) and re.search(r"^Atlantis +Leap init", out.stderr,
                                                                                 re.M)
    # at this size no held-out game ends, so only the seeds' runs under eval/meta_init have points
    assert tensorboard_lists(board, cwd, env, f"{run_dir.name}/eval/meta_init")
    run(evaluate, cwd, env)
    assert sorted(p.name for p in (run_dir / "videos").glob("*.mp4")) == ["Atlantis_meta_init.mp4",
                                                                          "Atlantis_random_init.mp4"]
    run(plot, cwd, env)
    assert (cwd / plot[plot.index("--out") + 1]).stat().st_size > 0
    run(export, cwd, env)
    assert (cwd / export[export.index("--sb3") + 1]).stat().st_size > 0


def test_maze_section(clone):
    cwd, env = clone
    commands = section_commands(MAZE)
    assert [c[:3] for c in commands] == [["metarl", "train", "configs/maze_warp_rnn_10seeds.yaml"],
                                         ["metarl", "train", "configs/maze_rnn_10seeds.yaml"],
                                         ["python", "-m", "train.maze_report"], ["python", "-m", "train.maze_report"]]
    for cmd in commands[:2]:
        out = run(cmd, cwd, env)
        assert re.search(r"^mean of 10 seeds ", out.stderr, re.M), out.stderr[-2000:]
        assert len(list((cwd / cmd[cmd.index("--run-dir") + 1]).glob("seed_*"))) == 10
    curves, areas = commands[2:]
    run(curves, cwd, env)
    assert (cwd / curves[curves.index("--out") + 1]).stat().st_size > 0
    assert "maze_warp_rnn_10seeds" in run(areas, cwd, env).stdout


def test_supervised_section(clone):
    cwd, env = clone
    commands = section_commands(SUPERVISED)
    assert [c[:2] for c in commands] == [["metarl", "train"], ["python", "tests/tiered_fixture.py"],
                                         ["metarl", "train"], ["python", "-m"]]
    omniglot, fixture, tiered, continual = commands
    data = cwd / "data"
    data.mkdir()
    env = {**env, "METARL_DATA": str(data)}         # the fixture writes data/tiered_tiny here, the run reads it there
    if OMNIGLOT.is_dir():
        (data / "omniglot").symlink_to(OMNIGLOT)
        run(omniglot, cwd, env)
        assert "test_accuracy" in json.loads(next(cwd.glob("runs/omniglot_quick_leap__0__*/eval.json")).read_text())
    run(fixture, cwd, env)
    out = run(tiered, cwd, env)
    assert "test_accuracy" in json.loads(out.stdout.strip().splitlines()[-1])
    out = run(continual, cwd, env)
    assert re.search(r"^warp/.* forgetting", out.stdout, re.M) and re.search(r"^sgd/.* forgetting", out.stdout,
                                                                            re.M), out.stdout[-2000:]
    if not OMNIGLOT.is_dir():
        pytest.skip(f"Omniglot is not in {OMNIGLOT}: its line was not run (the others were)")


def test_devices_section(clone):
    pytest.importorskip("envpool")
    cwd, env = clone
    commands = section_commands(DEVICES)
    assert [c[0] for c in commands] == ["metarl", "torchrun", "torchrun"]
    gpu, one_node, two_nodes = commands
    if torch.cuda.is_available():
        run(gpu, cwd, env)
    else:                                            # one line, exit 2
        out = run(gpu, cwd, env, expect=2)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("metarl: error:"), out.stderr
    out = run(one_node, cwd, env)
    assert (cwd / one_node[one_node.index("--run-dir") + 1] / "eval.json").is_file()
    # the two-node launch, as two local nodes of one process each: HOST is this machine
    port = free_port()
    node = [w.replace("HOST:29500", f"127.0.0.1:{port}") for w in two_nodes]
    node[node.index("--nproc-per-node") + 1] = "1"
    rank = node.index("--node-rank") + 1
    procs = []
    for r in ("0", "1"):
        node[rank] = r
        procs.append(subprocess.Popen(tiny(node), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    (run_dir,) = cwd.glob("runs/atari_leap_paper__0__*")
    assert (run_dir / "eval.json").is_file()
    shutil.rmtree(cwd / "runs")
