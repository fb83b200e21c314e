"""`metarl report RUN_DIR... [--out DIR]`: finished runs → a Markdown table, a JSON of the numbers and PNG figures.

Runs are read by train/report_data.py and grouped by suite (Atari, maze, Omniglot, ...), method and task
(an Atari game, or the task family). Per suite:
- per task and method: each score's mean ± sample std over seeds (Atari: the raw final score next to the
  human-normalised one, and both AUCs);
- aggregates over tasks × seeds of the suite's score (``--metric``; default: Atari the human-normalised final
  score, maze the last episodes' return, supervised the test accuracy): IQM, median and mean with 95%
  stratified bootstrap confidence intervals, and the probability of improvement of each method over each
  baseline (``--baseline``, repeatable, default ``random_init``: Atari's random initialisation, "random init",
  from whichever listed run evaluated it), with its interval — all from rliable (Agarwal et al., 2021, "Deep RL at
  the Edge of the Statistical Precipice"), not re-implemented here. An aggregate from fewer than ``MIN_RUNS`` runs
  of a method (or of the baseline it is compared with) is marked underpowered, in the table and in the JSON
  (``underpowered``): its interval and probability rest on too few runs to carry a claim;
- consistency over seeds against each baseline (:func:`consistency`): the std ratio, CVaR₂₅ and
  P(failed seed) (JSON: ``consistency`` for the first, ``consistency_vs`` for the others);
- with ``--control NAME`` (an upper reference: a transfer study's encoder trained on the test game itself), the
  fraction of the gap between the first baseline and it that each method closes (:func:`gap_closed`);
- ``seed_curves.csv``: every held-out run's curve (Atari: from its evaluation parts), per seed;
- figures: ``curves_<suite>.png`` (per task, mean and ± 1 sample std band over seeds), ``aggregates_<suite>.png``
  and ``profile_<suite>.png`` (performance profile: fraction of runs above a score τ, with 95% bands).

Score matrices are runs × tasks: only tasks every method has (and, for Atari's normalised scores, with
reference scores) and, per method, the seeds present on all of them enter the aggregates; the report says
what was left out. Scores named ``auc`` (supervised: area under the training-loss curve) or ``*loss`` are
lower-is-better: the probability of improvement and the profile use their negation / fraction below τ.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .checkpoint import write_json_atomic, write_text_atomic
from .errors import UserError
from .names import RANDOM_INIT
from .plot import save_figure
from .report_data import Curve, Runs, Score, load_runs
from .stats import mean_std

ORDER = ("human_normalised", "score", "human_normalised_auc", "score_auc", "return_last_mean",
         "test_accuracy", "test_loss", "auc", "final_loss")
LABELS = {"score": "final score (raw)", "human_normalised": "human-normalised final score",
          "score_auc": "AUC (raw)", "human_normalised_auc": "human-normalised AUC",
          "return_last_mean": "return, last episodes", "test_accuracy": "test accuracy", "test_loss": "test loss",
          "auc": "training-loss AUC", "final_loss": "final training loss"}
AGGREGATES = ("IQM", "median", "mean")
MIN_RUNS = 5            # fewer runs per method than this: the aggregates are marked underpowered


def lower_is_better(metric: str) -> bool:
    return metric == "auc" or metric.endswith("loss")


def default_metric(scores: list[Score]) -> str:
    have = {k for s in scores for k in s.values}
    if "human_normalised" in have and all(np.isfinite(s.values["human_normalised"]) for s in scores):
        return "human_normalised"
    return next(k for k in ORDER if k in have)


def score_matrices(scores: list[Score], metric: str) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """(tasks, {method: runs × tasks array}, notes) for the aggregates: tasks every method has with finite
    scores, and per method the seeds present on all of them."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for s in scores:
        table.setdefault(s.method, {}).setdefault(s.task, {})[s.seed] = s.values.get(metric, np.nan)
    all_tasks = sorted({s.task for s in scores})
    tasks = [t for t in all_tasks
             if all(t in per and np.isfinite(list(per[t].values())).all() for per in table.values())]
    notes = [f"{t}: not in the aggregates (a method lacks it, or a {metric} score is missing or NaN)"
             for t in all_tasks if t not in tasks]
    matrices = {}
    for method, per in sorted(table.items()):
        if not tasks:
            continue
        seeds = sorted(set.intersection(*(set(per[t]) for t in tasks)))
        dropped = sorted(set().union(*(set(per[t]) for t in tasks)) - set(seeds))
        if dropped:
            notes.append(f"{method}: seeds {', '.join(dropped)} miss some tasks; left out of the aggregates")
        if seeds:
            matrices[method] = np.array([[per[t][s] for t in tasks] for s in seeds], dtype=np.float64)
    return tasks, matrices, notes


def aggregate(matrices: dict[str, np.ndarray], baseline: str | None, metric: str, reps: int,
              seed: int = 0, others: tuple[str, ...] = ()) -> dict:
    """rliable's IQM, median, mean and probability of improvement over ``baseline`` (and over each of
    ``others``: ``P(improvement vs NAME)``), with 95% stratified bootstrap CIs (percentile, ``reps``
    resamples); the bootstrap draws from NumPy's global generator, seeded here with ``seed`` and restored
    after."""
    from rliable import library as rly
    from rliable import metrics

    def stats(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x)])

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        point, ci = rly.get_interval_estimates(matrices, stats, reps=reps)
        out = {m: {name: {"value": float(point[m][i]), "ci": [float(ci[m][0][i]), float(ci[m][1][i])]}
                   for i, name in enumerate(AGGREGATES)} for m in matrices}
        sign = -1.0 if lower_is_better(metric) else 1.0
        for b in (baseline, *others):
            if b not in matrices:
                continue
            pairs = {m: [sign * x, sign * matrices[b]] for m, x in matrices.items() if m != b}
            if pairs:
                p, pci = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)
                key = "P(improvement)" if b == baseline else f"P(improvement vs {b})"
                for m in pairs:
                    out[m][key] = {"value": float(p[m]), "ci": [float(pci[m][0][0]), float(pci[m][1][0])]}
        lo, hi = min(x.min() for x in matrices.values()), max(x.max() for x in matrices.values())
        taus = np.linspace(lo, hi if hi > lo else lo + 1.0, 101)
        below = (lambda s, t: np.array([np.mean(s <= v) for v in t])) if lower_is_better(metric) else None
        profiles, profile_cis = rly.create_performance_profile(matrices, taus, custom_profile_func=below, reps=reps)
    finally:
        np.random.set_state(state)
    return {"methods": out, "profile": {"tau": taus, "profiles": profiles, "cis": profile_cis}}


def consistency(matrices: dict[str, np.ndarray], baseline: str, lower: bool = False) -> dict[str, dict[str, float]]:
    """How consistent each method is across seeds, from its runs × tasks matrix, against ``baseline``'s:

    - ``std_ratio``: √(mean over tasks of the method's variance over seeds) / the same for the baseline
      (sample variances, pooled over tasks): below 1, the method's seeds spread less;
    - ``cvar25``: per task the mean of the worst quarter of seeds (⌈n/4⌉ of n), then the mean over tasks;
    - ``p_failed``: the fraction of (seed, task) runs below the baseline's 25th percentile on that task
      (a quarter, give or take the interpolation, for the baseline itself).

    ``lower``: lower scores are better (worst = highest; failed = above the baseline's 75th percentile)."""
    sign = -1.0 if lower else 1.0
    base = sign * matrices[baseline]
    base_spread = np.sqrt(np.mean(base.var(axis=0, ddof=1)))
    cut = np.quantile(base, 0.25, axis=0)                     # per task
    out = {}
    for m, x in matrices.items():
        x = sign * x
        worst = int(np.ceil(x.shape[0] / 4))
        spread = float(np.sqrt(np.mean(x.var(axis=0, ddof=1))))
        # no ratio to a baseline that does not vary (strict JSON: null)
        out[m] = {"std_ratio": spread / base_spread if base_spread > 0 else None,
                  "cvar25": float(sign * np.mean(np.sort(x, axis=0)[:worst].mean(axis=0))),
                  "p_failed": float(np.mean(x < cut))}
    return out


def gap_closed(matrices: dict[str, np.ndarray], baseline: str, control: str, reps: int, seed: int = 0,
               lower_is_better: bool = False) -> dict[str, dict]:
    """How much of the gap between ``baseline`` and ``control`` (an upper reference, e.g. an encoder trained on
    the test game itself) each other method closes: per task, (mean_m − mean_b) / (mean_c − mean_b), and the
    mean of that over tasks with a 95% percentile interval from ``reps`` resamples of each arm's runs, within
    each task (stratified, each arm apart, as rliable resamples). 0: level with the baseline; 1: as good as the
    control (the metric's direction, ``lower_is_better``, only decides which tasks have a gap: the sign cancels).

    A task where the control is not better than the baseline has no gap to close — level, or the control worse
    (it did not transfer there: a ratio to a reversed gap would read as a large fraction of nothing): None there,
    and the mean is over the other tasks (None if none is left). A resample whose control gap is zero or
    reversed on some task has no meaningful ratio: it is dropped (``dropped``), and where more than 5% of the
    resamples are, the interval is None (the control is too close to the baseline to measure against)."""
    rng = np.random.default_rng(seed)
    base, top = matrices[baseline], matrices[control]
    gap = top.mean(axis=0) - base.mean(axis=0)
    better = -gap if lower_is_better else gap
    has = better > 1e-9 * np.maximum(1.0, np.abs(top.mean(axis=0)) + np.abs(base.mean(axis=0)))
    cols = np.flatnonzero(has)

    def resampled(x: np.ndarray) -> np.ndarray:            # (reps, tasks with a gap): means of resampled runs
        rows = rng.integers(0, x.shape[0], size=(reps, x.shape[0], len(cols)))
        return x[rows, cols].mean(axis=1)

    out = {}
    for m, x in matrices.items():
        if m in (baseline, control):
            continue
        per_task = (x.mean(axis=0) - base.mean(axis=0)) / np.where(has, gap, 1.0)
        result = {"per_task": [float(v) if h else None for v, h in zip(per_task, has)],
                  "mean": float(per_task[cols].mean()) if len(cols) else None, "ci": [None, None], "dropped": 0}
        if len(cols):
            b = resampled(base)
            g = resampled(top) - b
            ok = np.all(np.sign(g) == np.sign(gap[cols]), axis=1)
            boot = ((resampled(x) - b)[ok] / g[ok]).mean(axis=1)
            result["dropped"] = int(reps - ok.sum())
            if result["dropped"] <= 0.05 * reps:
                result["ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
        out[m] = result
    return out


def pooled(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Curves of several runs of one (method, task) on the x of the longest: mean and sample std (n − 1) over
    all their seeds. Each curve's ``std`` is over its own ``n`` seeds with divisor n (0 for one seed)."""
    x = max(curves, key=lambda c: len(c.x)).x
    n = np.array([c.n for c in curves], dtype=np.float64)[:, None]
    mean = np.stack([np.interp(x, c.x, c.mean) for c in curves])
    second = np.stack([np.interp(x, c.x, c.std ** 2 + c.mean ** 2) for c in curves])
    total = n.sum()
    m = (n * mean).sum(0) / total
    var = np.maximum((n * second).sum(0) / total - m ** 2, 0.0) * (total / (total - 1) if total > 1 else 0.0)
    return x, m, np.sqrt(var), int(total)


def fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.1f}" if abs(x) >= 100 else f"{x:.3f}"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(curves: list[Curve], path: Path) -> None:
    plt = _plt()
    tasks = sorted({c.task for c in curves})
    cols = min(len(tasks), 4)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for method in sorted({c.method for c in curves if c.task == task}):
            group = [c for c in curves if c.task == task and c.method == method]
            x, m, s, n = pooled(group)
            ax.plot(x, m, label=f"{method} (n={n})")
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set(title=task, xlabel=group[0].xlabel, ylabel=f"{group[0].ylabel}, ± 1 sample std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_aggregates(agg: dict, metric: str, suite: str, aggregates_path: Path, profile_path: Path) -> None:
    plt = _plt()
    from rliable import plot_utils

    methods = sorted(agg["methods"])
    point = {m: np.array([agg["methods"][m][a]["value"] for a in AGGREGATES]) for m in methods}
    ci = {m: np.array([agg["methods"][m][a]["ci"] for a in AGGREGATES]).T for m in methods}
    fig, _ = plot_utils.plot_interval_estimates(point, ci, metric_names=list(AGGREGATES), algorithms=methods,
                                                xlabel=LABELS.get(metric, metric), row_height=0.6,
                                                xlabel_y_coordinate=-0.55 / (0.6 * len(methods)))
    save_figure(fig, aggregates_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    prof = agg["profile"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    above = "≤" if lower_is_better(metric) else ">"
    plot_utils.plot_performance_profiles(prof["profiles"], prof["tau"], performance_profile_cis=prof["cis"], ax=ax,
                                         xlabel=f"{LABELS.get(metric, metric)} (τ)",
                                         ylabel=f"fraction of runs with score {above} τ")
    ax.set_title(f"{suite}: performance profile")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_figure(fig, profile_path, dpi=110)
    plt.close(fig)


def suite_report(suite: str, runs: Runs, metric: str | None, baselines: list[str], reps: int, out: Path,
                 figures: bool = True, control: str | None = None) -> tuple[list[str], dict]:
    scores = [s for s in runs.scores if s.suite == suite]
    have = sorted({k for s in scores for k in s.values}, key=lambda k: ORDER.index(k) if k in ORDER else 99)
    metric = metric or default_metric(scores)
    if metric not in have:
        raise UserError(f"{suite} runs have no score {metric!r} (have: {', '.join(have)})")
    lines = [f"## {suite}", "", "Per task: mean ± sample std over seeds (n − 1; — for one seed).", "",
             "| task | method | seeds | " + " | ".join(LABELS.get(k, k) for k in have) + " |",
             "|---|---|---|" + "---|" * len(have)]
    per_task = {}
    for task in sorted({s.task for s in scores}):
        for method in sorted({s.method for s in scores if s.task == task}):
            group = [s for s in scores if s.task == task and s.method == method]
            cells, row = [], {"seeds": len(group)}
            for k in have:
                mean, std = mean_std(s.values.get(k) for s in group)
                row[k] = {"mean": mean if np.isfinite(mean) else None, "std": std}
                cells.append(f"{fmt(mean)} ± {'—' if std is None else fmt(std)}" if np.isfinite(mean) else "—")
            per_task.setdefault(task, {})[method] = row
            lines.append(f"| {task} | {method} | {len(group)} | " + " | ".join(cells) + " |")
    tasks, matrices, notes = score_matrices(scores, metric)
    result = {"metric": metric, "lower_is_better": lower_is_better(metric), "tasks": tasks, "per_task": per_task,
              "matrices": {m: x.tolist() for m, x in matrices.items()}, "notes": notes}
    if matrices:
        present = [b for b in dict.fromkeys(baselines) if b in matrices]
        baseline, others = (present[0], tuple(present[1:])) if present else (None, ())
        agg = aggregate(matrices, baseline, metric, reps, others=others)
        result.update(baseline=baseline, aggregates=agg["methods"])
        lower = lower_is_better(metric)
        than = "<" if lower else ">"
        keys = ("P(improvement)", *(f"P(improvement vs {b})" for b in others))
        lines += ["", f"Aggregates of the {LABELS.get(metric, metric)} ({'lower' if lower else 'higher'} is better) "
                  f"over {len(tasks)} task(s) × seeds ({', '.join(tasks)}): point estimate [95% stratified bootstrap "
                  f"CI, {reps} resamples] (rliable).", "",
                  f"| method | runs × tasks | {' | '.join(AGGREGATES)} | "
                  + " | ".join(f"P(method {than} {b})" for b in (baseline or "baseline", *others)) + " | power |",
                  "|---|---|" + "---|" * (len(AGGREGATES) + len(keys) + 1)]
        few = {m for m, x in matrices.items() if x.shape[0] < MIN_RUNS}
        for m, a in agg["methods"].items():
            # underpowered: this method's runs, or those of a baseline it is compared with, are too few
            weak = sorted(({m} | ({baseline, *others} & set(matrices) if m not in (baseline, *others) else set()))
                          & few)
            a["underpowered"] = bool(weak)
            cells = [f"{fmt(a[k]['value'])} [{fmt(a[k]['ci'][0])}, {fmt(a[k]['ci'][1])}]" if k in a else
                     ("baseline" if m in (baseline, *others) else "—") for k in (*AGGREGATES, *keys)]
            power = ("underpowered: " + ", ".join(f"{w} {matrices[w].shape[0]}" for w in weak)
                     + f" runs < {MIN_RUNS}") if weak else "ok"
            lines.append(f"| {m} | {matrices[m].shape[0]} × {matrices[m].shape[1]} | " + " | ".join(cells)
                         + f" | {power} |")
        result["underpowered"] = sorted(m for m, a in agg["methods"].items() if a["underpowered"])
        if few:
            notes.append(f"underpowered: {', '.join(sorted(few))} {'has' if len(few) == 1 else 'have'} fewer than "
                         f"{MIN_RUNS} runs (seeds × config seeds): the intervals and probabilities of improvement "
                         f"above rest on too few runs to support a claim (python -m train.power REPORT_JSON says what "
                         f"effect a design can detect)")
        # against each baseline: a fixed template beside a random encoder drawn anew per seed separates "more
        # consistent because meta-learned" from "more consistent because one fixed encoder"
        for b in present:
            cons = consistency(matrices, b, lower)
            if b == baseline:
                result["consistency"] = cons
            else:
                result.setdefault("consistency_vs", {})[b] = cons
            lines += ["", f"Consistency over seeds against {b} ({LABELS.get(metric, metric)}): the std over "
                      f"seeds as a ratio of {b}'s (pooled over tasks), CVaR₂₅ (mean of the worst quarter of "
                      f"seeds, averaged over tasks) and P(failed seed) (runs below {b}'s 25th percentile on "
                      f"their task).", "", "| method | std ratio | CVaR₂₅ | P(failed seed) |", "|---|---|---|---|"]
            ratio = {m: "—" if c["std_ratio"] is None else f"{c['std_ratio']:.2f}" for m, c in cons.items()}
            lines += [f"| {m} | {ratio[m]} | {fmt(c['cvar25'])} | {c['p_failed']:.2f} |" for m, c in cons.items()]
        if control is not None and baseline is not None and control in matrices and control != baseline and \
                len(matrices) > 2:
            gaps = gap_closed(matrices, baseline, control, reps, lower_is_better=lower)
            result["gap_closed"] = {"baseline": baseline, "control": control, "methods": gaps}
            lines += ["", f"Fraction of the gap between {baseline} and {control} closed "
                      f"({LABELS.get(metric, metric)}): per task (difference of the means over seeds ÷ the "
                      f"control's), and the mean over tasks with "
                      f"a 95% bootstrap CI ({reps} resamples of each arm's seeds within each task).", "",
                      "| method | " + " | ".join(tasks) + " | mean over tasks |", "|---|" + "---|" * (len(tasks) + 1)]
            for m, g in gaps.items():
                cells = ["—" if v is None else f"{v:.3f}" for v in g["per_task"]]
                ci = "no interval" if g["ci"][0] is None else f"[{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]"
                mean = "—" if g["mean"] is None else f"{g['mean']:.3f} {ci}"
                lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
                if g["dropped"]:
                    notes.append(f"gap closed, {m}: {g['dropped']} of {reps} resamples had the control no better "
                                 f"than {baseline} on some task and were left out"
                                 + (" (over 5%: no interval)" if g["ci"][0] is None else ""))
            # the tasks without a gap are the control's and the baseline's, so every method has the same Nones
            none = [t for t, v in zip(tasks, next(iter(gaps.values()))["per_task"]) if v is None]
            if none:
                notes.append(f"gap closed: {control} is not better than {baseline} on {', '.join(none)} (— in the "
                             f"table): no gap to close there, the mean is over the other tasks")
        elif control is not None:
            why = ("it is the baseline itself" if control == baseline else
                   "no baseline to measure a gap from" if baseline is None else
                   "no other method to compare" if control in matrices else
                   "not among the methods with every aggregated task")
            notes.append(f"--control {control}: {why}: no fraction of the gap closed")
        if baseline is None:
            hint = (" (runs with eval.random_init: false have none: add a run of the same config seed that has it)"
                    if suite == "atari" and RANDOM_INIT in baselines else "")
            notes.append(f"no baseline among the methods ({', '.join(baselines)}){hint}: no probability of "
                         f"improvement; name one with --baseline")
        if figures:
            plot_aggregates(agg, metric, suite, out / f"aggregates_{suite}.png", out / f"profile_{suite}.png")
            lines += ["", f"![aggregates](aggregates_{suite}.png) ![performance profile](profile_{suite}.png)"]
    curves = [c for c in runs.curves if c.suite == suite]
    if curves and figures:
        plot_curves(curves, out / f"curves_{suite}.png")
        lines += ["", f"![learning curves: mean ± 1 sample std over seeds](curves_{suite}.png)"]
    lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return lines, result


def write_seed_curves(curves: list, path: Path) -> None:
    """One CSV row per (suite, method, task, seed) and grid point: the evidence behind every AUC of the report,
    kept small enough to commit (what the run directories held, without them)."""
    rows = ["suite,method,task,seed,step,value"]
    for c in sorted(curves, key=lambda c: (c.suite, c.method, c.task, c.seed)):
        rows += [f"{c.suite},{c.method},{c.task},{c.seed},{x:g},{'' if not np.isfinite(y) else f'{y:.6g}'}"
                 for x, y in zip(c.x, c.y)]
    write_text_atomic(path, "\n".join(rows) + "\n")


def only_tasks(runs: Runs, tasks: tuple[str, ...]) -> Runs:
    """``runs`` restricted to ``tasks`` (UserError naming those no run has)."""
    missing = [t for t in tasks if t not in {s.task for s in runs.scores}]
    if missing:
        raise UserError(f"--tasks: no results for {', '.join(missing)} (the runs have: "
                        f"{', '.join(sorted({s.task for s in runs.scores}))})")
    keep = set(tasks)
    return replace(runs, scores=[s for s in runs.scores if s.task in keep],
                   curves=[c for c in runs.curves if c.task in keep],
                   seed_curves=[c for c in runs.seed_curves if c.task in keep])


def report(run_dirs: list[Path], out: Path, metric: str | None = None, baselines: tuple[str, ...] = ("random_init",),
           reps: int = 2000, figures: bool = True, split: str = "test", tasks: tuple[str, ...] = (),
           control: str | None = None) -> Path:
    """Write ``out``/report.md, report.json and the figures of the runs' results on ``split``'s held-out tasks
    (only ``tasks``, e.g. the games related to a training family, where given); return the Markdown's path."""
    if reps < 1:
        raise UserError(f"--reps must be positive (got {reps})")
    runs = load_runs([Path(d) for d in run_dirs], split)
    if tasks:
        runs = only_tasks(runs, tasks)
    baselines = tuple(runs.aliases.get(b, b) for b in baselines)      # a config name or random_init: its name
    control = runs.aliases.get(control, control)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    lines = ["# Report", "", f"Runs: {', '.join(map(str, run_dirs))}", ""]
    if split != "test":
        lines[-1:] = [f"Split: the {split} tasks' results (not the test tasks').", ""]
    if tasks:
        lines[-1:] = [f"Tasks: {', '.join(tasks)} only.", ""]
    results = {}
    for suite in sorted({s.suite for s in runs.scores}):
        suite_lines, results[suite] = suite_report(suite, runs, metric, list(baselines), reps, out, figures, control)
        lines += suite_lines
    if runs.seed_curves:
        write_seed_curves(runs.seed_curves, out / "seed_curves.csv")
        lines += ["", "Per-seed curves (each held-out run's running score on its grid): seed_curves.csv", ""]
    lines += [f"- {n}" for n in runs.notes]
    write_text_atomic(out / "report.md", "\n".join(lines).rstrip() + "\n")
    selection = ({} if split == "test" else {"split": split}) | ({"tasks": list(tasks)} if tasks else {})
    write_json_atomic(out / "report.json", {**selection, "suites": results, "notes": runs.notes})
    return out / "report.md"
