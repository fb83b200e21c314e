"""Atari over torchrun ranks: the held-out runs spread over the ranks give the results of one process, bit
for bit (two gloo ranks on localhost, a tiny config); the meta-batch's games go to ranks by measured speed
(longest processing time first)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.distributed import World, longest_first

ROOT = Path(__file__).resolve().parent.parent
TINY = ["atari.train_games=[Breakout,Pong]", "atari.test_games=[Breakout,Pong]", "atari.test_on_train_games=true",
        "atari.a2c.num_envs=2", "inner.steps=400", "meta.steps=2", "meta.meta_batch=2", "eval.tasks=1",
        "eval.steps=800", "run.threads=1", "run.progress=false"]


def test_longest_first_balances_skewed_costs_and_is_round_robin_for_equal_ones():
    assert longest_first([1.0] * 7, 3) == [k % 3 for k in range(7)]
    costs = [10, 1, 1, 1, 10, 1, 1, 1]
    ranks = longest_first(costs, 2)
    loads = [sum(c for c, r in zip(costs, ranks) if r == rank) for rank in range(2)]
    assert loads == [13, 13]                                     # round robin: 22 and 4
    assert longest_first([5, 4, 3, 3, 3], 2) == [0, 1, 1, 0, 1]     # LPT's own choice (the optimum is 9/7)
    assert longest_first([], 4) == []


def test_world_shares():
    items = list(range(10))
    worlds = [World(rank=r, size=3) for r in range(3)]
    blocks = [w.block(items) for w in worlds]
    assert blocks == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]] and sum(blocks, []) == items
    costs = [10, 1, 1, 1, 10, 1, 1, 1, 1, 1]
    shares = [w.mine(items, costs) for w in worlds]
    assert shares == [[0], [4], [1, 2, 3, 5, 6, 7, 8, 9]]       # loads 10, 10 and 8 (round robin: 13, 12, 3)
    assert World(rank=1, size=3).mine(items) == [1, 4, 7]


def test_atari_adapter_pools_measured_speeds_over_ranks():
    pytest.importorskip("envpool")
    from agents.a2c import A2CResult
    from train.tasks.atari import AtariAdapter, AtariTaskConfig

    adapter = AtariAdapter(AtariTaskConfig(train_games=["Breakout", "Pong", "Qbert"], test_games=["Alien"]))
    tasks = [adapter.game(g, 0) for g in ("Breakout", "Pong", "Qbert")]
    assert adapter.task_costs(tasks) is None                   # nothing measured: round robin
    adapter._measure("Breakout", A2CResult([], [], [], 1, 1000, 2.0, 500.0))
    other_rank = {"Pong": (3.0 / 1000, 1.0)}                    # what the other rank measured: Pong, 3 ms a step

    def all_reduce(tensors):                                    # this rank's sums plus the other rank's
        sums, counts = tensors
        for i, game in enumerate(adapter.games["train"]):
            if game in other_rank:
                sums[i] += other_rank[game][0]
                counts[i] += other_rank[game][1]
    adapter.share_costs(all_reduce)
    assert adapter.task_costs(tasks) == pytest.approx([0.002, 0.003, 0.0025])     # Qbert: the mean of the others
    adapter.share_costs(lambda tensors: None)                   # nothing new: the estimates stay
    assert adapter.costs == pytest.approx({"Breakout": 0.002, "Pong": 0.003})


def _torchrun(nproc: int, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "train.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


def _parts(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "eval_parts" / "test").glob("*.json"))}


def _fresh_copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    shutil.rmtree(to / "eval_parts")                          # the evaluation runs again
    for p in to.glob("eval_atari*"):
        p.unlink()
    return to


def test_held_out_runs_spread_over_two_ranks_give_one_process_results(tmp_path):
    """A run trained by 2 ranks (its meta-batch's games assigned by measured speed from the second meta-step
    on) evaluates its held-out runs on both ranks; `metarl eval` of the same run by one process and by 2 ranks
    gives the same parts and table, bit for bit."""
    pytest.importorskip("envpool")
    cfg = str(ROOT / "configs" / "atari_leap.yaml")
    trained = tmp_path / "trained"
    _torchrun(2, "train", cfg, "--run-dir", str(trained), *TINY)
    spread_in_training = _parts(trained)
    assert len(spread_in_training) == 4                       # 2 games × 2 inits × 1 seed, from both ranks
    one = _fresh_copy(trained, tmp_path / "one")
    two = _fresh_copy(trained, tmp_path / "two")
    _torchrun(1, "eval", str(one))
    _torchrun(2, "eval", str(two))
    assert _parts(one) == _parts(two) == spread_in_training
    assert (one / "eval_atari.json").read_text() == (two / "eval_atari.json").read_text()
    table = json.loads((two / "eval_atari.json").read_text())["games"]
    assert set(table) == {"Breakout", "Pong"}
    assert np.isfinite(table["Breakout"]["meta_init"]["final_score"])    # games finished: scores compared
    eval_json = json.loads((trained / "eval.json").read_text())
    assert eval_json["games"] == json.loads((one / "eval_atari.json").read_text())["games"]


@pytest.mark.parametrize("one_node", [True, False])
def test_a_ranks_finished_part_is_on_disk_before_the_ranks_gather_on_one_node(one_node, tmp_path):
    """A run killed before its ranks gather (a session's end) keeps every part a rank of its node finished;
    a rank on another node hands its parts to rank 0, which saves them, once."""
    from test_reliability3 import SETTINGS, good_part

    from train.tasks.atari_eval import Outbox
    from train.tasks.atari_eval_parts import Parts
    parts = Parts(tmp_path, "test")
    rank1, rank0 = (Outbox(tmp_path, parts, main, local=one_node) for main in (False, True))
    rank1.save(good_part())
    on_disk = parts.path("Breakout", "meta_init", 0)
    assert on_disk.is_file() == one_node
    received = rank0.receive(rank1.sent)           # what rank 0 does with the gathered parts
    assert on_disk.is_file()
    assert received == {("Breakout", "meta_init", 0): parts.load("Breakout", "meta_init", 0, SETTINGS, None)}
