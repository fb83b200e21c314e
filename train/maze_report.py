"""Results table of finished maze runs (train/tasks/maze.py):
``python -m train.maze_report table RUN_DIR ...`` (also ``python -m train.tasks.maze table RUN_DIR ...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def results_table(run_dirs: list[Path]) -> str:
    """Markdown table over finished runs (``eval.json``), grouped by config name (the run-directory name
    before ``__``; a seed folder of a batched run by its ``name``): mean over seeds of each seed's
    last-window mean return, the std across seeds, the per-seed values and the training wall time per run
    (minutes, summed over resumes; a seed-batched run's time, shared by its seeds, is given once as
    "T for S batched"). A seed-batched run contributes one value per seed; its seed folders, if also
    listed, are not counted twice."""
    dirs = [Path(d) for d in run_dirs]
    listed = {d.resolve() for d in dirs}
    groups: dict[str, list[tuple[int | None, float]]] = {}
    walls: dict[str, list[str]] = {}
    for d in dirs:
        path = d / "eval.json"
        if not path.is_file() or d.resolve().parent in listed:
            continue
        data = json.loads(path.read_text())
        name = data.get("name") if d.name.startswith("seed_") and "name" in data else d.name.split("__")[0]
        if "per_seed" in data:
            rows = [(int(k), r["return_last_mean"]) for k, r in data["per_seed"].items()]
            walls.setdefault(name, []).append(f"{data['wall_time_s'] / 60:.1f} for {len(rows)} batched")
        else:
            rows = [(data.get("seed"), data["return_last_mean"])]
            walls.setdefault(name, []).append(f"{data['wall_time_s'] / 60:.1f}")
        groups.setdefault(name, []).extend(rows)
    lines = ["| run | seeds | return, last episodes: mean ± std over seeds | per seed | wall time per run (min) |",
             "|---|---|---|---|---|"]
    for name, rows in sorted(groups.items()):
        means = np.array([float("nan") if m is None else m for _, m in rows])
        per_seed = ", ".join(f"{m:.1f}" for m in means)
        lines.append(f"| {name} | {len(rows)} | {means.mean():.1f} ± {means.std():.1f} | {per_seed} | "
                     f"{', '.join(walls[name])} |")
    return "\n".join(lines)



def main(argv: list[str] | None = None, prog: str = "python -m train.maze_report") -> None:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="markdown table of finished maze runs")
    t.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(results_table(args.run_dirs))


if __name__ == "__main__":
    main()
