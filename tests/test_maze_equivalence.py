"""What a seed-batched maze run promises about its seeds: where it is exact (the batched build honours every
setting the single-seed run reads, or the setting is refused), and the two-sample comparison behind "the same in
distribution" for long runs (train/maze_report.py compare)."""

from __future__ import annotations

import pytest

from train.config import build_config
from train.errors import ConfigError


def maze_cfg(seeds: list[int], head: str):
    return build_config({"name": "m", "seed": 0, "task": "maze", "method": "no_pretraining",
                         "maze": {"model": "rnn", "seeds": seeds, "hidden_size": 8, "batch": 4, "episode_length": 12},
                         "meta": {"every": 3, "steps": 1, "head": head}}, [])


def test_seed_batching_refuses_a_re_drawn_head():
    """Under meta.head: reset a run alone keeps its second draw's heads, a batched seed its first: every seed
    would part from its single run at iteration 0 (measured: 6 of 10 seeds by iteration 2)."""
    with pytest.raises(ConfigError, match="maze.seeds needs meta.head: learned"):
        maze_cfg([0, 1], "reset")
    maze_cfg([0, 1], "learned")
    maze_cfg([], "reset")                      # a single seed keeps the choice


def test_compare_finds_batched_and_single_seeds_the_same_and_a_real_difference_different(tmp_path, capsys):
    """Four seeds batched and the same four alone (real runs; at this size still bit-equal) are not told apart;
    a group whose seeds end 2 points lower — the size of the gap between maze models at 3,360 iterations — is,
    and so is a group drawn with a different mean, while a second draw of the same distribution is not."""
    import json

    import numpy as np

    from train.maze_report import compare, main
    from train.trainer import train
    seeds = [0, 1, 2, 3]
    train(maze_cfg(seeds, "learned"), tmp_path / "batched")
    for s in seeds:
        cfg = maze_cfg([], "learned")
        cfg.seed = s
        train(cfg, tmp_path / f"alone_{s}")
    alone = [tmp_path / f"alone_{s}" for s in seeds]
    same = compare([tmp_path / "batched"], alone)
    assert same["n_a"] == same["n_b"] == 4 and same["difference"] == 0.0 and same["mann_whitney_p"] == 1.0

    def group(name: str, values) -> list:
        out = []
        for k, v in enumerate(values):
            d = tmp_path / name / f"s{k}"
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps({"seed": k, "return_last_mean": float(v)}))
            out.append(d)
        return out

    rng = np.random.default_rng(1)
    base = group("base", rng.normal(50, 6, 10))
    shifted = compare(base, group("shifted", rng.normal(40, 6, 10)))
    assert shifted["mann_whitney_p"] < 0.05 and shifted["difference_ci95"][0] > 0
    again = compare(base, group("again", rng.normal(50, 6, 10)))
    assert again["mann_whitney_p"] > 0.05 and again["difference_ci95"][0] < 0 < again["difference_ci95"][1]
    main(["compare", "--a", str(tmp_path / "batched"), "--b", *map(str, alone)])
    assert json.loads(capsys.readouterr().out)["mann_whitney_p"] == 1.0
    with pytest.raises(SystemExit) as e:
        main(["compare", "--a", str(tmp_path / "batched"), "--b", str(alone[0]), str(alone[0])])
    assert e.value.code == 2
