"""Results of finished maze runs (train/tasks/maze.py):
``python -m train.maze_report table RUN_DIR ...`` (also ``python -m train.tasks.maze table RUN_DIR ...``) and
``python -m train.maze_report curves RUN_DIR ... --out PNG``: per config, the mean over seeds of the
smoothed episode-return curve with the inter-quartile band, as the WarpGrad paper's maze figure;
``python -m train.maze_report areas RUN_DIR ... [--early EPISODES]``: the mean return over the whole run and
over its first episodes (areas under the learning curves), per config;
``python -m train.maze_report compare --a RUN_DIR ... --b RUN_DIR ...``: whether two groups of runs (e.g. seeds
batched and the same seeds alone) differ in their seeds' final returns;
``python -m train.maze_report crossings RUN_DIR ... [--levels 20,40]``: the episodes each config takes to reach
given returns (its mean curve's and each seed's); ``curves ... --csv PATH`` keeps the seeds' smoothed curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .errors import UserError, error_line
from .plot import check_out, save_figure
from .report_data import read_object, run_config


def log_every(cfg: dict) -> int:
    """Iterations per logged point of a maze run's config (``maze.log_every``; 1 if it does not say)."""
    value = (cfg.get("maze") or {}).get("log_every", 1)
    return value if isinstance(value, int) and value >= 1 else 1


def _folders(run_dirs: list[Path]) -> list[Path]:
    """The listed run folders, less the seed folders of a listed seed-batched run (its seeds count once)."""
    dirs = [Path(d) for d in run_dirs]
    if missing := [str(d) for d in dirs if not d.is_dir()]:
        raise UserError(f"not a run folder: {', '.join(missing)}")
    listed = {d.resolve() for d in dirs}
    return [d for d in dirs if d.resolve().parent not in listed]


def _mean_spread(values: np.ndarray) -> str:
    """"mean ± sample std" (n − 1; "—" for one value)."""
    spread = f"{values.std(ddof=1):.1f}" if len(values) > 1 else "—"
    return f"{values.mean():.1f} ± {spread}"


def _seed_results(d: Path) -> tuple[dict, dict[int, float | None]] | None:
    """A maze run's eval.json and {seed: its last-window mean return} (a seed-batched run: each of its seeds);
    None without an eval.json, one line (UserError) when the file is not a maze result."""
    if not (d / "eval.json").is_file():
        return None
    data = read_object(d / "eval.json")
    if "per_seed" in data:
        return data, {int(k): r["return_last_mean"] for k, r in data["per_seed"].items()}
    if "return_last_mean" not in data:
        raise UserError(f"{d} is not a maze run (its eval.json has no return_last_mean): list maze runs only")
    return data, {int(data["seed"] if "seed" in data else run_config(d)["seed"]): data["return_last_mean"]}


def results_table(run_dirs: list[Path]) -> str:
    """Markdown table over finished runs (``eval.json``), grouped by the ``name`` in their config.yaml
    (``run_config``; so seeds split over several seed-batched runs, e.g. seeds 0–4 and 5–9, are one group; a
    seed folder of a batched run by the ``name`` in its eval.json): mean over seeds of each seed's
    last-window mean return, the sample std across seeds (n − 1), the per-seed values and the training wall time per run
    (minutes, summed over resumes; a seed-batched run's time, shared by its seeds, is given once as
    "T for S batched"). A seed-batched run contributes one value per seed; its seed folders, if also
    listed, are not counted twice."""
    groups: dict[str, list[float | None]] = {}
    walls: dict[str, list[str]] = {}
    for d in _folders(run_dirs):
        if (found := _seed_results(d)) is None:
            continue
        data, seeds = found
        name = data.get("name") if d.name.startswith("seed_") and "name" in data else run_config(d)["name"]
        batched = f" for {len(seeds)} batched" if "per_seed" in data else ""
        walls.setdefault(name, []).append(f"{data['wall_time_s'] / 60:.1f}{batched}")
        groups.setdefault(name, []).extend(seeds.values())
    if not groups:
        raise UserError(f"no finished maze runs (eval.json) in: {', '.join(map(str, run_dirs))}")
    lines = ["| run | seeds | return, last episodes: mean ± sample std over seeds | per seed "
             "| wall time per run (min) |",
             "|---|---|---|---|---|"]
    for name, rows in sorted(groups.items()):
        means = np.array([float("nan") if m is None else m for m in rows])
        per_seed = ", ".join(f"{m:.1f}" for m in means)
        lines.append(f"| {name} | {len(rows)} | {_mean_spread(means)} | {per_seed} | "
                     f"{', '.join(walls[name])} |")
    return "\n".join(lines)


def run_summary(result: dict, name: str, seed: int | None = None) -> str:
    """A maze run's result (its eval.json) as the plain-text table `metarl train` and `metarl eval` print last: each
    seed's mean return over its last episodes, then their mean ± sample std over seeds (— for one seed)."""
    rows = ([(str(k), r["return_last_mean"]) for k, r in result["per_seed"].items()] if "per_seed" in result
            else [(str(result.get("seed", seed if seed is not None else "")), result["return_last_mean"])])
    values = np.array([float("nan") if v is None else v for _, v in rows])
    episodes = result.get("final_window_episodes")
    last = f"its last {episodes:,.0f} episodes" if episodes else "its last episodes"
    mean_row = f"mean of {len(values)} seed{'s' if len(values) != 1 else ''}"
    width = max(len(mean_row), *(len(k) for k, _ in rows))
    spread = f"{values.std(ddof=1):.2f}" if len(values) > 1 else "—"
    return "\n".join([f"maze run {name}: {result.get('episodes', 0):,.0f} episodes per seed; a seed's return: the "
                      f"mean over {last}", f"{'seed'.ljust(width)}  return"]
                     + [f"{k.ljust(width)}  {v:.2f}" for (k, _), v in zip(rows, values)]
                     + [f"{mean_row.ljust(width)}  {values.mean():.2f} ± {spread} (sample std over seeds)"])


def seed_finals(run_dirs: list[Path]) -> dict[int, float]:
    """{seed: its last-window mean return (``return_last_mean``)} over finished runs: a seed-batched run's
    seeds, or single-seed runs (the same seed twice is refused: the comparison needs independent seeds)."""
    out: dict[int, float] = {}
    for d in _folders(run_dirs):
        if (found := _seed_results(d)) is None:
            raise UserError(f"{d} is not a finished maze run (no eval.json)")
        rows = found[1]
        if twice := sorted(set(rows) & set(out)):
            raise UserError(f"seed {twice[0]} is listed twice in one group ({d})")
        out.update(rows)
    return out


def compare(group_a: list[Path], group_b: list[Path], resamples: int = 10_000) -> dict:
    """Are two groups of runs of one config the same in distribution — e.g. seeds trained batched
    (``maze.seeds``) and the same seeds trained alone, which part after a few dozen iterations when a last-bit
    difference flips a sampled action? Two-sided Mann–Whitney U test on the seeds' last-window mean returns, and
    the difference of the groups' means with a percentile-bootstrap 95 % interval (seeds resampled within each
    group). Unpaired: once the runs have parted, a seed's two runs are two draws of the same process."""
    from scipy.stats import mannwhitneyu
    a, b = (np.array(list(seed_finals(g).values()), dtype=np.float64) for g in (group_a, group_b))
    if len(a) < 2 or len(b) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UserError("compare needs at least 2 seeds with a finite return in each group")
    rng = np.random.default_rng(0)
    boot = (rng.choice(a, (resamples, len(a))).mean(1) - rng.choice(b, (resamples, len(b))).mean(1))
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "std_a": float(a.std(ddof=1)), "std_b": float(b.std(ddof=1)),
            "difference": float(a.mean() - b.mean()),
            "difference_ci95": [float(q) for q in np.quantile(boot, [0.025, 0.975])],
            "mann_whitney_p": float(mannwhitneyu(a, b, alternative="two-sided").pvalue)}


def seed_returns(run_dirs: list[Path]):
    """Yield (config name, iterations per logged point, episodes, returns) per seed: each seed's
    ``charts/episodic_return`` (one point per ``maze.log_every`` iterations: the mean over their mazes). Seeds
    are a seed-batched run's ``seed_<k>`` folders, or single-seed runs, grouped by config name as in
    :func:`results_table`."""
    from .plot import load_events, tag_points
    for d in _folders(run_dirs):
        cfg = run_config(d)
        for folder in sorted(d.glob("seed_*/games")) or [d / "games"]:
            events = load_events(folder)
            if events is None or "charts/episodic_return" not in events.Tags()["scalars"]:
                raise UserError(f"no episode returns logged in {folder} (is {d} a maze run?)")
            yield (cfg["name"], log_every(cfg), *tag_points(events, "charts/episodic_return"))


def learning_areas(run_dirs: list[Path], early: float = 50_000) -> str:
    """Markdown table per config of the area under each seed's learning curve: its mean return over the whole
    run and over its first ``early`` episodes (every logged point weighs the same), mean ± sample std over
    seeds. Where the seeds of a config ran for different lengths, both cover at most the shortest; a config
    whose runs end before ``early`` episodes has no "first episodes" value (—: it would be the whole run)."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, _, x, y in seed_returns(run_dirs):
        groups.setdefault(name, []).append((x, y))
    lines = [f"| run | seeds | episodes | whole run: mean return, mean ± sample std over seeds | first "
             f"{early:,.0f} episodes |", "|---|---|---|---|---|"]
    for name, runs in sorted(groups.items()):
        end = min(x[-1] for x, _ in runs)
        if min(x[0] for x, _ in runs) > early:
            raise UserError(f"{name}: no episode returns logged within the first {early:,.0f} episodes (--early)")
        whole = np.array([y[x <= end].mean() for x, y in runs])
        first = (_mean_spread(np.array([y[x <= early].mean() for x, y in runs])) if end >= early
                 else f"— (the run ends at {end:,.0f})")
        lines.append(f"| {name} | {len(runs)} | {end:,.0f} | {_mean_spread(whole)} | {first} |")
    return "\n".join(lines)


def seed_curves(run_dirs: list[Path], window: int = 100) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """{config name: (episodes, returns (seeds × points), iterations per smoothing window)}: each seed's returns
    (:func:`seed_returns`), smoothed over ``window`` iterations (so over window / log_every points, rounded:
    the window actually used is returned; 0 where no seed was smoothed, its curve being shorter than a
    window), on the x of the shortest seed."""
    from .plot import smooth
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    used: dict[str, int] = {}
    for name, every, x, y in seed_returns(run_dirs):
        points = max(1, round(window / every))
        groups.setdefault(name, []).append((x, smooth(y, points)))
        if 1 < points <= len(y):                       # smooth() leaves a curve shorter than its window as is
            used[name] = points * every
    out = {}
    for name, runs in groups.items():
        n = min(len(x) for x, _ in runs)
        out[name] = (runs[0][0][:n], np.stack([y[:n] for _, y in runs]), used.get(name, 0))
    return out


def plot_curves(run_dirs: list[Path], out: Path, window: int = 100,
                csv: Path | None = None) -> dict[str, dict[str, float]]:
    """The figure of :func:`seed_curves`: mean (line) and 25th–75th percentile over seeds (band), and with ``csv``
    its seeds' curves (:func:`write_curves_csv`), from one reading of the runs, both destinations checked first.
    Returns per config the final point's mean, quartiles and seed count, and the smoothing window used
    (iterations; 0: unsmoothed, and labelled so)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    check_out(out)
    if csv is not None:
        check_out(csv, "--csv")
    curves = seed_curves(run_dirs, window)
    if csv is not None:
        write_curves_csv(curves, csv)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary = {}
    windows = {used for _, _, used in curves.values()}
    for name, (x, y, used) in sorted(curves.items()):
        q25, q75 = np.percentile(y, [25, 75], axis=0)
        how = "" if len(windows) == 1 else f", {used}-iteration mean" if used else ", unsmoothed"
        line, = ax.plot(x, y.mean(0), label=f"{name} ({len(y)} seed{'s' if len(y) != 1 else ''}{how})")
        ax.fill_between(x, q25, q75, color=line.get_color(), alpha=0.2)
        summary[name] = {"episodes": float(x[-1]), "mean": float(y[:, -1].mean()), "q25": float(q25[-1]),
                         "q75": float(q75[-1]), "seeds": len(y), "window_iterations": used}
    # the smoothing each curve got: one window for all in the axis label, else per curve in the legend
    only = next(iter(windows)) if len(windows) == 1 else None
    smoothing = (f" ({only}-iteration mean)" if only else " (unsmoothed: shorter than a window)" if only == 0
                 else "")
    ax.set(xlabel="episodes", ylabel=f"return per episode{smoothing}",
           title="Maze: mean and inter-quartile range over seeds")
    ax.legend()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out, dpi=120, bbox_inches="tight")
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or type(e).__name__}") from None
    finally:
        plt.close(fig)
    return summary


def write_curves_csv(curves: dict[str, tuple[np.ndarray, np.ndarray, int]], path: Path) -> None:
    """Each seed's smoothed curve of :func:`seed_curves`' ``curves`` as CSV rows (run, seed, episodes, return):
    the evidence behind a curves figure, small enough to keep with the repository. Written atomically."""
    from .checkpoint import write_text_atomic
    rows = ["run,seed,episodes,return"]
    for name, (x, y, _) in sorted(curves.items()):
        rows += [f"{name},{k},{e:g},{r:.6g}" for k, seed in enumerate(y) for e, r in zip(x, seed)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "\n".join(rows) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--levels takes numbers separated by commas, got {text!r}") from None
    if not levels:
        raise UserError("--levels: no return given")
    return levels


def _first_reach(x: np.ndarray, y: np.ndarray, level: float) -> float | None:
    hit = np.flatnonzero(y >= level)
    return float(x[hit[0]]) if hit.size else None


def crossings(run_dirs: list[Path], levels: tuple[float, ...] = (20.0, 40.0),
              window: int = 100) -> dict[str, dict[str, dict]]:
    """Episodes to reach each return ``level``, per config: where the mean over seeds of the smoothed curves
    (:func:`seed_curves`, as in the figure) first reaches it, and where each seed's own smoothed curve first
    does (None: not within the run). ``{config: {level: {"mean_curve": episodes, "seeds": [...]}}}``."""
    return {name: {f"{level:g}": {"mean_curve": _first_reach(x, y.mean(0), level),
                                  "seeds": [_first_reach(x, seed, level) for seed in y]} for level in levels}
            for name, (x, y, _) in sorted(seed_curves(run_dirs, window).items())}


def crossings_table(found: dict[str, dict[str, dict]]) -> str:
    """Markdown of :func:`crossings`: per config and level, the mean curve's crossing, how many seeds reached the
    level and the median over the seeds that did."""
    lines = ["| run | return | mean curve reaches it at (episodes) | seeds reaching it | median over those seeds |",
             "|---|---|---|---|---|"]
    for name, levels in found.items():
        for level, c in levels.items():
            hits = [e for e in c["seeds"] if e is not None]
            mean = "not reached" if c["mean_curve"] is None else f"{c['mean_curve']:,.0f}"
            median = f"{np.median(hits):,.0f}" if hits else "—"
            lines.append(f"| {name} | {level} | {mean} | {len(hits)} of {len(c['seeds'])} | {median} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m train.maze_report") -> None:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="markdown table of finished maze runs")
    t.add_argument("run_dirs", nargs="+", type=Path)
    c = sub.add_parser("curves", help="mean and inter-quartile band of the return curves over seeds")
    c.add_argument("run_dirs", nargs="+", type=Path)
    c.add_argument("--out", type=Path, required=True, help="PNG path")
    c.add_argument("--window", type=int, default=100, help="iterations per smoothing window")
    c.add_argument("--csv", type=Path, help="also write each seed's smoothed curve as CSV (run, seed, episodes, "
                   "return)")
    x = sub.add_parser("crossings", help="episodes to reach given returns: the mean curve's and each seed's")
    x.add_argument("run_dirs", nargs="+", type=Path)
    x.add_argument("--levels", default="20,40", help="returns to reach, comma-separated (default 20,40)")
    x.add_argument("--window", type=int, default=100, help="iterations per smoothing window (as for curves)")
    x.add_argument("--json", type=Path, help="also write the crossings, per seed, as JSON")
    a = sub.add_parser("areas", help="mean return over the whole run and over its first episodes, per config")
    a.add_argument("run_dirs", nargs="+", type=Path)
    a.add_argument("--early", type=float, default=50_000, help="episodes counted as the start (default 50,000)")
    m = sub.add_parser("compare", help="two groups of runs the same in distribution? (Mann-Whitney U, bootstrap CI)")
    m.add_argument("--a", nargs="+", type=Path, required=True, help="the first group's run folders")
    m.add_argument("--b", nargs="+", type=Path, required=True, help="the second group's run folders")
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            print(results_table(args.run_dirs))
        elif args.command == "compare":
            print(json.dumps(compare(args.a, args.b)))
        elif args.command == "areas":
            print(learning_areas(args.run_dirs, args.early))
        elif args.command == "crossings":
            if args.json:
                check_out(args.json, "--json")
            found = crossings(args.run_dirs, _levels(args.levels), args.window)
            if args.json:
                from .checkpoint import write_json_atomic
                write_json_atomic(args.json, found)
            print(crossings_table(found))
        else:
            print(json.dumps(plot_curves(args.run_dirs, args.out, args.window, csv=args.csv)))
    except UserError as e:           # e.g. an unreadable config.yaml: one line, exit 2
        parser.exit(2, error_line(parser.prog, e) + "\n")


if __name__ == "__main__":
    main()
