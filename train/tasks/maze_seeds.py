"""Seed-batched maze runs (``maze.seeds``; train/tasks/maze.py): the folder, config and single-seed checkpoint
of each seed, so that every seed of a batched run reads — and resumes — as a run of its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any




def seed_folder(seed: int) -> str:
    """The sub-folder of a seed-batched run that holds seed ``seed``'s run (TensorBoard, eval.json, ...)."""
    return f"seed_{seed}"


def seed_config(cfg: Any, seed: int) -> Any:
    """The config of seed ``seed`` of a seed-batched run as a run of its own: ``seed: <seed>``, no ``seeds``."""
    return dataclasses.replace(cfg, seed=seed, task_config=dataclasses.replace(cfg.task_config, seeds=[]))


def _adam_state(state: dict[str, Any], k: int) -> dict[str, Any]:
    """Seed k's slice of a :class:`SeedAdam` state_dict as ``torch.optim.Adam``'s state_dict."""
    out = {"state": {}, "param_groups": []}
    for i, s in state["state"].items():
        out["state"][i] = {"step": s["step"][k].clone(), "exp_avg": s["exp_avg"][k].clone(),
                           "exp_avg_sq": s["exp_avg_sq"][k].clone()}
    for g in state["param_groups"]:
        out["param_groups"].append({"lr": g["lr"], "betas": tuple(g["betas"]), "eps": g["eps"],
                                    "weight_decay": g["weight_decay"], "amsgrad": False, "maximize": False,
                                    "foreach": None, "capturable": False, "differentiable": False, "fused": None,
                                    "decoupled_weight_decay": False, "params": list(g["params"])})
    return out


def split_checkpoint(state: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """A seed-batched run's checkpoint as S checkpoints of single-seed runs (``seed_config``): seed k's
    slice of the model, the optimisers' states (per-seed Adam → ``torch.optim.Adam``), the meta-learner's
    initialisation, accumulator and counters, and its maze streams, returns and log window. A single run
    resumed from one continues as that seed would have continued in the batch."""
    out = []
    meta, adapter, stream = state["meta"], state["adapter"], state.get("stream")
    for k in range(len(seeds)):
        m = {"init": {n: v[k].clone() for n, v in meta["init"].items()},
             "acc": [a[k].clone() for a in meta["acc"]]}
        counters = meta["counters"].clone()
        if "seed_counters" in meta:            # warpgrad_continual: per-seed contributions and φ steps
            m["meta_optimizer"] = _adam_state(meta["meta_optimizer"], k)
            counters[0], counters[1] = meta["seed_counters"][0][k], meta["seed_counters"][1][k]
            m["warp_steps"] = meta["seed_counters"][2][k].clone()
        else:                                  # no_pretraining: its (never used) SGD has no state per seed
            m["meta_optimizer"] = meta["meta_optimizer"]
        m["counters"] = counters
        a = {"maze_rng": adapter["maze_rng"][k].clone(), "meta_maze_rng": adapter["meta_maze_rng"][k].clone(),
             "sampler": adapter["sampler"][k].clone(), "meta_sampler": adapter["meta_sampler"][k].clone(),
             "returns": adapter["returns"][:, k].clone(), "counters": adapter["counters"][k:k + 1].clone(),
             "wall_time": adapter["wall_time"].clone(), "window": adapter["window"][k].clone()}
        seed_state = {"step": state["step"], "meta": m, "adapter": a}
        if stream is not None:
            seed_state["stream"] = {"model": {n: v[k].clone() for n, v in stream["model"].items()},
                                    "optimizer": _adam_state(stream["optimizer"], k),
                                    "torch_rng": stream["torch_rng"].clone()}
        out.append(seed_state)
    return out


def write_seed_runs(cfg: Any, run_dir: Path, seeds: list[int], result: dict) -> None:
    """Write every seed's run folder (eval.json, config.yaml, final single-seed checkpoint) from the batch's
    result (``MazeAdapter.result``) and the run's latest checkpoint."""
    from train.checkpoint import load_latest, save_checkpoint, write_json_atomic, write_text_atomic
    from train.config import config_to_yaml

    loaded = load_latest(run_dir)
    splits = split_checkpoint(loaded[0], seeds) if loaded is not None else None
    for k, seed in enumerate(seeds):
        folder = run_dir / seed_folder(seed)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "eval.json", {"name": cfg.name, "seed": seed, **result["per_seed"][str(seed)]})
        write_text_atomic(folder / "config.yaml", config_to_yaml(seed_config(cfg, seed)))
        if splits is not None:
            save_checkpoint(folder, int(loaded[0]["step"]), splits[k], cfg.run.keep)
