"""Checkpoints: tensors and plain containers only, written atomically, loaded with weights_only=True.

A run keeps its newest ``keep`` checkpoints. If the newest is truncated or corrupt, loading reports it in
one line and falls back to the one before.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

PATTERN = "checkpoint-*.pt"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:07d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` for ``step`` atomically (temp file, fsync, rename) and prune old checkpoints."""
    path = checkpoint_path(run_dir, step)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob(PATTERN))


def load_latest(run_dir: Path, log=None) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint, or None if the run has none."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a metarl checkpoint")
            return state, path
        except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
            log(f"warning: checkpoint {path} is unreadable ({type(e).__name__}); trying the previous one")
    return None
