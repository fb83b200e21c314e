"""Continual sine regression (train/tasks/continual_sine.py): reproduce the forgetting table over seeds, or
tabulate the ``forgetting.json`` of finished runs (mean ± sample std over runs).

    python -m train.continual_sine_report reproduce CONFIG [key=value …] --seeds 0 1 2 --out DIR
    python -m train.continual_sine_report table RUN_DIR …      # mean ± sample std over runs (seeds)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checkpoint import write_json_atomic
from .errors import UserError, error_line
from .report_data import read_object
from .stats import curve_mean_std, pm, sample_std
from .tasks.continual_sine import lower_triangle


def table(run_dirs: Sequence[Path]) -> dict[str, Any]:
    """Mean ± sample std over runs of the final row (loss on each sub-task after all five) from ``forgetting.json``
    (train/stats.py: NaN, shown "—", for one run)."""
    results = [read_object(Path(d) / "forgetting.json") for d in run_dirs]
    out: dict[str, Any] = {"runs": [str(d) for d in run_dirs], "rows": {}}
    for key in results[0]["summary"]:
        finals = np.array([r["summary"][key]["final"] for r in results])
        means = np.array([r["summary"][key]["final_mean"] for r in results])
        forg = np.array([r["summary"][key]["forgetting"] for r in results])
        out["rows"][key] = {"final_mean": finals.mean(0).tolist(), "final_std": curve_mean_std(finals)[1].tolist(),
                            "all_mean": float(means.mean()), "all_std": _std(means),
                            "forgetting_mean": float(forg.mean()), "forgetting_std": _std(forg)}
        mats = np.array([[[np.nan if v is None else v for v in row] for row in r["matrices"][key]["mean"]]
                         for r in results])
        out["rows"][key]["matrix_mean"] = lower_triangle(mats.mean(0))
        out["rows"][key]["matrix_std"] = lower_triangle(curve_mean_std(mats)[1])
    out["orders"] = results[0]["orders"]
    return out


def _std(x: np.ndarray) -> float:
    std = sample_std(x)
    return float("nan") if std is None else std


def format_table(summary: dict[str, Any]) -> str:
    lines = []
    for key, row in summary["rows"].items():
        order = summary["orders"][key.split("/")[1]]
        cells = "  ".join(f"s{j}: {pm(m, s, 3)}" for j, m, s in zip(order, row["final_mean"], row["final_std"]))
        lines.append(f"{key:<20} {cells}  | mean {pm(row['all_mean'], row['all_std'], 3)}"
                     f"  forgetting {pm(row['forgetting_mean'], row['forgetting_std'], 3)}")
    return "\n".join(lines)


def reproduce(config: Path, seeds: Sequence[int], out_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Meta-train ``config`` once per seed (resuming runs already there), run the forgetting protocol on each
    (``forgetting.json``), and tabulate mean ± sample std over seeds into ``out_dir/table.json``."""
    from .config import load_config
    from .evaluate import evaluate_run
    from .trainer import train

    dirs = []
    for seed in seeds:
        cfg = load_config(config, [f"seed={seed}", *overrides])
        run_dir = Path(out_dir) / f"{cfg.name}__{seed}"
        train(cfg, run_dir, resume=True)        # ends with adapter.evaluate_run → forgetting.json
        if not (run_dir / "forgetting.json").is_file():
            evaluate_run(run_dir)
        dirs.append(run_dir)
    summary = table(dirs)
    write_json_atomic(Path(out_dir) / "table.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.continual_sine_report",
                                description="continual sine regression: reproduce the forgetting table, or "
                                            "tabulate the forgetting.json of several runs (mean ± std over runs)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="mean ± sample std over runs of forgetting.json")
    t.add_argument("run_dirs", nargs="+")
    r = sub.add_parser("reproduce", help="train + evaluate one run per seed, then the table")
    r.add_argument("config")
    r.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--out", default="runs/continual_sine")
    args = p.parse_args(argv)
    try:
        if args.command == "table":
            summary = table([Path(d) for d in args.run_dirs])
        else:
            summary = reproduce(Path(args.config), args.seeds, Path(args.out), args.overrides)
    except UserError as e:
        print(error_line(p.prog, e), file=sys.stderr)
        return 2
    print(format_table(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
