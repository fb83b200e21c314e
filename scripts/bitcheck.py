"""Bit-identity check for refactors: train a fixed set of tiny seeded runs into a folder, then compare two such
folders tensor by tensor.

    python scripts/bitcheck.py train OUT [--only NAME ...] [--list]
    python scripts/bitcheck.py compare A B [--ignore KEY ...]
    python scripts/bitcheck.py reload A

``train`` runs each config below with `metarl train` (one process per run, one torch thread, `nice` is the
caller's) into ``OUT/<name>``; the settings are the tiny ones the tests use. ``compare`` reads every checkpoint
under both folders (``torch.equal`` on each tensor, ``==`` on everything else), every JSON result file and every
TensorBoard scalar (tag, step, value), leaving out what measures time (wall time, SPS, steps per second), the
provenance in run_info.json and the keys named by ``--ignore`` (a key a change adds on purpose); it prints one
line per run and exits 1 on any difference. Typical use: train on the base commit, train on yours,
compare (`git stash`/`git worktree` for the base; PYTHONPATH picks the tree). ``reload`` loads every checkpoint
under a folder (written by any commit) into this tree's meta-learner and adapter, built from the run's
config.yaml, and checks that saving them again gives the same tensors: old checkpoints still load, unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["run.progress=false", "run.threads=1"]
# Omniglot's images: METARL_DATA, else ../shared/data beside the checkout (set it for a checkout elsewhere)
DATA = Path(os.environ.get("METARL_DATA", ROOT.parent / "shared" / "data"))

SINE = ["meta.steps=4", "run.checkpoint_every=2", "eval.every=2", "eval.tasks=2"]
OMNIGLOT = ["meta.steps=2", "meta.meta_batch=2", "inner.steps=3", "eval.steps=3", "eval.tasks=2", "omniglot.filters=8",
            "run.checkpoint_every=1"]


def _maze_single(model: str, method: str, objective: str = "meta_batch") -> dict:
    """test_maze_training's tiny continual maze run (``objective``: the continual warp objective)."""
    data = {"name": f"maze_{model}", "seed": 5, "task": "maze", "method": method,
            "maze": {"model": model, "hidden_size": 8, "warp_hidden_size": 6, "batch": 4, "episode_length": 12,
                     "log_every": 2, "burn_in": 1},
            "meta": {"every": 3, "steps": 4, "head": "learned"},
            "run": {"checkpoint_every": 2, "progress": False, "threads": 1}}
    if method == "warpgrad_continual":
        data["warpgrad_continual"] = {"objective": objective}
        data["meta"].update({"include": ["warp."], "optimizer": {"name": "adam", "lr": 1e-3}})
    return data


def _maze_seeds(model: str, seeds: list[int], objective: str = "") -> dict:
    """test_maze_seed_batch's tiny seed-batched run (clipping, burn-in): tests/maze_fixture.py; ``objective``
    replaces the continual warp objective."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from maze_fixture import tiny_maze_data
    data = tiny_maze_data(model, seeds[0] if seeds else 0, seeds)
    if objective:
        data["warpgrad_continual"] = {"objective": objective}
    return data


# name -> (config file or config dict, overrides)
RUNS: dict[str, tuple[str | dict, list[str]]] = {
    **{f"sine_{m}": (f"configs/sine_{m}.yaml", SINE) for m in
       ("leap", "reptile", "fomaml", "maml", "lazy", "finetune", "no_pretraining")},
    "sine_leap_val": ("configs/sine_leap.yaml", [*SINE, "eval.periodic_split=val", "meta.optimizer.clip_grad_norm=0.1",
                                                 "inner.clip_grad_norm=1.0"]),
    **{f"omniglot_dev_{m}": (f"configs/omniglot_dev_{m}.yaml", OMNIGLOT) for m in ("leap", "warp_leap", "maml")},
    "omniglot_dev_lazy": ("configs/omniglot_dev_lazy.yaml", [*OMNIGLOT, "lazy.student_steps=3"]),
    "continual_sine": ("configs/continual_sine_warp_cpu.yaml",
                       ["meta.steps=2", "eval.tasks=2", "continual_sine.hidden=[8, 8]", "continual_sine.warp_hidden=4",
                        "continual_sine.steps_per_subtask=2", "inner.steps=10", "warpgrad.stride=1",
                        "run.checkpoint_every=1"]),
    "atari": ("configs/atari_leap.yaml",
              ["atari.train_games=[Breakout]", "atari.test_games=[Breakout]", "atari.test_on_train_games=true",
               "atari.a2c.num_envs=4", "inner.steps=1200", "meta.steps=2", "meta.meta_batch=1", "eval.tasks=1",
               "eval.steps=1200"]),
    "atari_batched": ("configs/atari_leap.yaml",
                      ["atari.train_games=[Breakout, Pong]", "atari.test_games=[Breakout]",
                       "atari.test_on_train_games=true", "atari.a2c.num_envs=4", "atari.a2c.batched=true",
                       "inner.steps=600", "meta.steps=1", "meta.meta_batch=2", "eval.tasks=2", "eval.steps=600"]),
    "maze_warp_rnn": (_maze_single("warp-rnn", "warpgrad_continual"), []),
    "maze_warp_rnn_same_loss": (_maze_single("warp-rnn", "warpgrad_continual", "same_loss"), []),
    "maze_rnn": (_maze_single("rnn", "no_pretraining"), []),
    "maze_seeds_warp_rnn": (_maze_seeds("warp-rnn", [0, 1]), []),
    "maze_seeds_warp_rnn_same_loss": (_maze_seeds("warp-rnn", [0, 1], "same_loss"), []),
    "maze_seeds_plastic": (_maze_seeds("plastic-rnn", [0, 1]), []),
    "maze_seeds_plastic_retro": (_maze_seeds("plastic-rnn-retroactive", [0, 1]), []),
    "maze_plastic": (_maze_seeds("plastic-rnn", []), []),  # the single fused plastic unrolls
    "maze_plastic_retro": (_maze_seeds("plastic-rnn-retroactive", []), []),
    "maze_seeds_rnn_single": (_maze_seeds("rnn", []), []),
}

# values that measure time, not computation
TIMING = ("wall", "seconds", "SPS", "per_s", "time")


IGNORED: set[str] = set()          # --ignore: keys left out of the comparison


def _timing(key: str) -> bool:
    return any(t in key for t in TIMING) or key in IGNORED


def train(out: Path, only: list[str]) -> int:
    import yaml
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, (config, overrides) in RUNS.items():
        if only and name not in only:
            continue
        run_dir = out / name
        if run_dir.exists():
            print(f"{name}: {run_dir} exists, skipped")
            continue
        if isinstance(config, dict):
            path = out / "_configs" / f"{name}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(yaml.safe_dump(config))
        else:
            path = ROOT / config
        cmd = [sys.executable, "-m", "train.cli", "train", str(path), "--run-dir", str(run_dir), *QUIET, *overrides]
        t0 = time.time()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                       "METARL_DATA": str(DATA)})
        print(f"{name}: exit {p.returncode} in {time.time() - t0:.0f} s")
        if p.returncode:
            print(p.stderr[-3000:])
            failed.append(name)
    return 1 if failed else 0


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    import torch
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if where.endswith("adapter.window") and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) \
                and a.shape == b.shape:
            a, b = _untimed(a), _untimed(b)
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype \
                or a.shape != b.shape or not torch.equal(a, b):
            out.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if {k for k in a if k not in IGNORED} != {k for k in b if k not in IGNORED}:
            out.append(f"{where} keys {sorted(set(a) ^ set(b), key=str)}")
        for k in set(a) & set(b):
            if not _timing(str(k)):
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where} length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif a != b:
        out.append(f"{where}: {a!r} != {b!r}")


def _untimed(window: Any) -> Any:
    """The maze's log window (train/tasks/maze.py LogWindow) without its wall-time column."""
    from train.tasks.maze import LogWindow
    window = window.clone()
    window[..., LogWindow.KEYS.index("seconds")] = 0
    return window


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if not _timing(tag)}


def compare_run(a: Path, b: Path) -> tuple[list[str], int]:
    import torch
    out: list[str] = []
    files = sorted({p.relative_to(a) for p in a.rglob("*")} | {p.relative_to(b) for p in b.rglob("*")})
    tensors = 0
    for rel in files:
        pa, pb = a / rel, b / rel
        if rel.name.endswith(".pt") and rel.name.startswith("checkpoint-") or rel.suffix == ".json" \
                and rel.name != "run_info.json":
            if not (pa.is_file() and pb.is_file()):
                out.append(f"{rel}: only in {'A' if pa.is_file() else 'B'}")
                continue
            if rel.suffix == ".json":
                _diff(json.loads(pa.read_text()), json.loads(pb.read_text()), str(rel), out)
                continue
            sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (pa, pb))
            tensors += _count(sa)
            _diff(sa, sb, str(rel), out)
    folders = sorted({p.parent.relative_to(a) for p in a.rglob("events.out.tfevents.*")}
                     | {p.parent.relative_to(b) for p in b.rglob("events.out.tfevents.*")})
    for rel in folders:
        _diff(_scalars(a / rel), _scalars(b / rel), f"tensorboard {rel}", out)
    return out, tensors


def _count(x: Any) -> int:
    import torch
    if isinstance(x, torch.Tensor):
        return 1
    if isinstance(x, dict):
        return sum(_count(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_count(v) for v in x)
    return 0


def compare(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.iterdir() if p.is_dir() and p.name != "_configs"}
                   | {p.name for p in b.iterdir() if p.is_dir() and p.name != "_configs"})
    bad = 0
    for name in names:
        if not ((a / name).is_dir() and (b / name).is_dir()):
            print(f"{name}: only in {'A' if (a / name).is_dir() else 'B'}")
            bad += 1
            continue
        diffs, tensors = compare_run(a / name, b / name)
        print(f"{name}: {'identical' if not diffs else 'DIFFERENT'} ({tensors} checkpoint tensors)")
        for d in diffs[:20]:
            print(f"    {d}")
        bad += bool(diffs)
    print(f"{len(names) - bad} of {len(names)} runs identical")
    return 1 if bad else 0


def reload(folder: Path) -> int:
    import torch

    from train.config import load_config
    from train.trainer import setup
    bad = 0
    for config in sorted(folder.rglob("config.yaml")):
        run = config.parent
        checkpoints = sorted(run.glob("checkpoint-*.pt"))
        if not checkpoints:
            continue
        adapter, meta = setup(load_config(config))
        diffs: list[str] = []
        for path in checkpoints:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            meta.load_state_dict(saved["meta"])
            adapter.load_state_dict(saved.get("adapter", {}))
            _diff(saved["meta"], meta.state_dict(), f"{path.name}.meta", diffs)
            _diff(saved.get("adapter", {}), adapter.state_dict(), f"{path.name}.adapter", diffs)
        print(f"{run.relative_to(folder)}: {'reloads unchanged' if not diffs else 'DIFFERENT'} "
              f"({len(checkpoints)} checkpoints)")
        for d in diffs[:20]:
            print(f"    {d}")
        bad += bool(diffs)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("--only", nargs="*", default=[])
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--ignore", nargs="*", default=[], metavar="KEY", help="dictionary keys to leave out")
    r = sub.add_parser("reload")
    r.add_argument("a", type=Path)
    args = p.parse_args(argv)
    if args.mode == "reload":
        return reload(args.a)
    if args.mode == "train":
        return train(args.out, args.only)
    IGNORED.update(args.ignore)
    return compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())
