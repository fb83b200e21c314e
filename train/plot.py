"""`metarl plot RUN_DIR...`: curves of a scalar tag from runs' TensorBoard event files, one PNG.

Runs with the same config name but different seeds are grouped: the plot shows their mean ± std.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import UserError

DEFAULT_TAGS = ("charts/episodic_return", "eval/auc", "losses/train_auc")


def read_scalars(run_dir: Path, tag: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not run_dir.is_dir():
        raise UserError(f"not a directory: {run_dir}")
    accs = []
    for d in (run_dir, run_dir / "games"):      # games/: training games on the env-step axis (RL runs)
        if d.is_dir():
            acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
            acc.Reload()
            accs.append(acc)
    tags = [t for acc in accs for t in acc.Tags().get("scalars", [])]
    chosen = tag or next((t for t in DEFAULT_TAGS if t in tags), None)
    if chosen is None or chosen not in tags:
        raise UserError(f"run {run_dir} has no scalar {chosen or 'to plot'!r} (has: {', '.join(sorted(tags)) or 'none'})")
    events = next(acc for acc in accs if chosen in acc.Tags().get("scalars", [])).Scalars(chosen)
    return chosen, np.array([e.step for e in events]), np.array([e.value for e in events])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_runs(run_dirs: list[Path], tag: str | None = None, out: str | None = None, window: int = 0) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    chosen = tag
    for d in run_dirs:
        chosen, steps, values = read_scalars(d, tag or chosen)
        groups[d.name.split("__")[0]].append((steps, values))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in sorted(groups.items()):
        grid = np.unique(np.concatenate([s for s, _ in runs]))
        curves = np.stack([np.interp(grid, s, smooth(v, window or max(1, len(v) // 50))) for s, v in runs])
        mean, std = curves.mean(0), curves.std(0)
        ax.plot(grid, mean, label=f"{name} (n={len(runs)})")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(chosen)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out else run_dirs[0] / f"{chosen.replace('/', '_')}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
