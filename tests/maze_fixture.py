"""The tiny seed-batched maze run the seed-batching tests use (tests/test_maze_seed_batch.py) and the bit-for-bit
check replays (scripts/bitcheck.py): 8 units, 4 mazes of 12 steps, clipping at 0.5, one burn-in iteration; the
meta-batch warp objective for Warp-RNN; element-0 value baseline and Adam ε 1e-4 for the plastic RNNs."""

from __future__ import annotations


def tiny_maze_data(model: str, seed: int, seeds: list[int]) -> dict:
    """The run's config as a mapping (``train.config.build_config`` makes it a Config)."""
    warp, plastic = model.startswith("warp"), model.startswith("plastic")
    data = {"name": "maze_seeds", "seed": seed, "task": "maze",
            "method": "warpgrad_continual" if warp else "no_pretraining",
            "maze": {"model": model, "seeds": seeds, "hidden_size": 8, "warp_hidden_size": 6, "batch": 4,
                     "episode_length": 12, "log_every": 2, "burn_in": 1, "clip_grad_norm": 0.5,
                     # the plastic baselines with the rest of Backpropamine's switches
                     "value_baseline": "element0" if plastic else "per_element",
                     "adam_eps": 1e-4 if plastic else 1e-8, "init": "backpropamine" if plastic else "default"},
            "meta": {"every": 3, "steps": 3, "head": "learned"},
            "run": {"checkpoint_every": 2, "progress": False, "threads": 1}}
    if warp:
        data["warpgrad_continual"] = {"objective": "meta_batch"}
        data["meta"].update({"include": ["warp."], "optimizer": {"name": "adam", "lr": 1e-3}})
    return data
