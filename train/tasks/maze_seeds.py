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


BATCH_MARK = "batched.json"     # in each seed folder: what the batch wrote there last (step, config digest)


def _digest(path: Path) -> str | None:
    import hashlib
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def trained_alone(folder: Path, batch_step: int, batch_steps: int) -> str | None:
    """Why seed folder ``folder`` is no longer the batch's to write (None: it is): it has trained on alone
    (``metarl train --resume RUN/seed_k``, as the seed folders allow), so its config.yaml or checkpoints are
    not what the batch wrote there. ``batch_step``: the batch's checkpoint step; ``batch_steps``: its meta.steps."""
    from train.checkpoint import checkpoint_step, list_checkpoints, read_json

    if not folder.exists():
        return None
    newest = max((checkpoint_step(p) for p in list_checkpoints(folder)), default=None)
    mark = read_json(folder / BATCH_MARK)
    if isinstance(mark, dict):
        if mark.get("config_sha256") != _digest(folder / "config.yaml"):
            return "its config.yaml changed since the batch wrote it"
        if newest != mark.get("step"):
            return f"its newest checkpoint is at step {newest}, the batch wrote step {mark.get('step')}"
        return None
    # written before the mark (or never): checkpoints or meta.steps beyond the batch's tell a seed trained alone
    if newest is not None and newest > batch_step:
        return f"its newest checkpoint is at step {newest}, beyond the batch's {batch_step}"
    if (folder / "config.yaml").exists():
        try:
            import yaml
            steps = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("meta", {}).get("steps")
        except Exception:       # unreadable: not ours to judge, leave it alone
            return "its config.yaml is unreadable"
        if isinstance(steps, int) and steps > batch_steps:
            return f"its config.yaml has meta.steps {steps}, beyond the batch's {batch_steps}"
    return None


def write_seed_runs(cfg: Any, run_dir: Path, seeds: list[int], result: dict, log=None) -> list[int]:
    """Write every seed's run folder (eval.json, config.yaml, final single-seed checkpoint, the mark) from the
    batch's result (``MazeAdapter.result``) and the run's latest checkpoint; the seeds written. A seed folder
    that has trained on alone (:func:`trained_alone`) or that a live run holds is left as it is, with one line
    to ``log`` (default stderr): its own run would lose its progress (config.yaml back to the batch's meta.steps,
    eval.json replaced), and the batch's numbers for it stay in the batch's eval.json (``per_seed``)."""
    import sys

    from train.checkpoint import load_latest, save_checkpoint, write_json_atomic, write_text_atomic
    from train.config import config_to_yaml
    from train.errors import RunDirError
    from train.rundir import RunLock

    log = log or (lambda msg: print(msg, file=sys.stderr))
    loaded = load_latest(run_dir)
    splits = split_checkpoint(loaded[0], seeds) if loaded is not None else None
    step = int(loaded[0]["step"]) if loaded is not None else 0
    written = []
    for k, seed in enumerate(seeds):
        folder = run_dir / seed_folder(seed)
        why = trained_alone(folder, step, cfg.meta.steps)
        if why is not None:
            log(f"warning: {folder} has trained on alone ({why}): left as it is (the batch's result for seed "
                f"{seed} is in {run_dir / 'eval.json'}, per_seed)")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = RunLock(folder).acquire()
        except RunDirError as e:
            log(f"warning: {e}; {folder} is left as it is")
            continue
        try:
            write_json_atomic(folder / "eval.json", {"name": cfg.name, "seed": seed, **result["per_seed"][str(seed)]})
            text = config_to_yaml(seed_config(cfg, seed))
            write_text_atomic(folder / "config.yaml", text)
            if splits is not None:
                save_checkpoint(folder, step, splits[k], cfg.run.keep)
            write_json_atomic(folder / BATCH_MARK, {"step": step if splits is not None else None,
                                                    "config_sha256": _digest(folder / "config.yaml")})
        finally:
            lock.release()
        written.append(seed)
    return written
