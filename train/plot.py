"""`metarl plot RUN_DIR...`: curves from runs' TensorBoard event files, one PNG with a panel per game (or tag).

Defaults per task, from the tags a run has (``select_series``):

- Atari with a finished held-out evaluation: each seed's ``eval_seeds/<game>/episodic_return`` of the runs
  ``eval/<init>/seed_<k>`` — one panel per held-out game, one line per initialisation, named as the run's table
  names it ("random init", "Leap init": train/names.py), the mean over its seeds with
  their sample std as the band (runs evaluated before the seed runs existed: ``eval/<game>/episodic_return`` of
  ``eval/<init>``, the seed mean, counted as one);
- Atari still training: ``charts/<game>/episodic_return`` of its visits' runs ``games/<game>/visit_<S>`` (each on
  its own env-step axis), one panel per training game with its first and its latest visit (runs written before the
  visits had runs: ``games/``, "training");
- otherwise the first of ``DEFAULT_TAGS`` the run has (the maze's return, supervised ``eval/auc`` …).

``--csv PATH`` also writes the plotted points as CSV (``write_csv``). ``--tag`` names a tag; a tag without a game
in it (``charts/episodic_return``, ``eval/episodic_return``) is expanded to its per-game tags, one panel each.
Games are never mixed in one line. Runs of one experiment with different seeds are grouped, a line being their
mean ± sample std (band; train/stats.py), over the runs that have a point there (no run is extended past its
ends); a run folder's group is its name without the seed: ``<group>__<seed>`` (docs/run_dir.md), or
``<group>_s<seed>`` / ``<group>_seed<seed>``. The legend gives each line's number of runs (or seeds), n. Lines of
few points carry markers, so a single point shows. A seed-batched maze run's curve is its seeds'
(``seed_<k>/games``), n of them.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .stats import curve_mean_std

DEFAULT_TAGS = ("charts/episodic_return", "eval/auc", "losses/train_auc")
INITS = ("meta_init", "random_init")
MARKERS_UP_TO = 20          # lines with at most this many points are drawn with markers


@dataclass
class Series:
    panel: str              # the game (or tag) of the subplot
    label: str              # the line within it: meta_init, random_init, training, ''
    steps: np.ndarray
    values: np.ndarray
    xlabel: str = "step"


def _accumulators(run_dir: Path) -> dict[str, object]:
    """The run's TensorBoard runs by name: '' (meta-steps), 'games' (a seed-batched maze run: 'seed_<k>/games'
    instead, its seeds), 'eval/<init>' and 'eval/<init>/seed_<k>'."""
    if not run_dir.is_dir():
        raise UserError(f"not a directory: {run_dir}")
    seeds = sorted(run_dir.glob("seed_*/games"))
    folders = {"": run_dir, **({f"{d.parent.name}/games": d for d in seeds} if seeds else {"games": run_dir / "games"})}
    if (run_dir / "eval").is_dir():
        for d in sorted((run_dir / "eval").iterdir()):
            if d.is_dir():
                folders[f"eval/{d.name}"] = d
                folders.update({f"eval/{d.name}/{k.name}": k for k in sorted(d.glob("seed_*")) if k.is_dir()})
    folders.update({f"games/{d.parent.name}/{d.name}": d for d in sorted((run_dir / "games").glob("*/visit_*"))})
    return {name: acc for name, d in folders.items() if (acc := load_events(d)) is not None}


def load_events(folder: Path):
    """The TensorBoard scalars of the event files directly in ``folder`` (an EventAccumulator), or None."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        return None
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    # A resumed run's file purges the points its killed predecessor logged past the checkpoint; TensorBoard
    # warns of each purge as of a fault, but that is how a resumed run reads. (This hides its other
    # warnings while reading too; errors still show.)
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        acc.Reload()
    finally:
        tb_logger.setLevel(level)
    return acc


def tag_points(acc, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag``, by step."""
    points = {e.step: e.value for e in acc.Scalars(tag)}           # a step logged twice keeps its last value
    steps = sorted(points)
    return np.array(steps, dtype=np.float64), np.array([points[s] for s in steps], dtype=np.float64)


def _per_game(accs: dict, pattern: str, runs: list[str], label) -> list[Series]:
    """Series of the tags matching ``pattern`` (group 'game') in ``runs``; ``label(run, match)``."""
    out = []
    for run in runs:
        if run not in accs:
            continue
        for tag in sorted(accs[run].Tags().get("scalars", [])):
            m = re.fullmatch(pattern, tag)
            if m and m.group("game") != "mean":
                out.append(Series(m.group("game"), label(run, m), *tag_points(accs[run], tag), "env steps"))
    return out


def select_series(run_dir: Path, tag: str | None = None) -> tuple[str, list[Series]]:
    """(the y-axis name, the series to plot) of one run: the task's default (module docstring) or ``tag``."""
    accs = _accumulators(Path(run_dir))
    evals = [f"eval/{i}" for i in INITS]
    seed_runs = [r for r in accs if r.startswith(tuple(f"{e}/seed_" for e in evals))]
    labels = _init_labels(Path(run_dir))
    init = lambda run, m: labels.get(run.split("/")[1], run.split("/")[1])     # noqa: E731
    if tag is None:
        for what, series in (
                ("episodic_return (held-out)",
                 _per_game(accs, r"eval_seeds/(?P<game>[^/]+)/episodic_return", seed_runs, init)),
                ("episodic_return (held-out)",     # runs written before the seed runs: the seed mean
                 _per_game(accs, r"eval/(?P<game>[^/]+)/episodic_return", evals, init)),
                ("episodic_return (held-out)",     # runs written before the eval/<init> runs
                 _per_game(accs, r"eval/(?P<game>[^/]+)/(?P<init>meta_init|random_init)/episodic_return", [""],
                           lambda run, m: labels.get(m.group("init"), m.group("init")))),
                ("episodic_return (training)", _visits(accs)),
                ("episodic_return (training)",
                 _per_game(accs, r"charts/(?P<game>[^/]+)/episodic_return", ["games"], lambda run, m: "training"))):
            if series:
                return what, series
    tags = {t: run for run, acc in accs.items() for t in acc.Tags().get("scalars", [])}
    chosen = tag or next((t for t in DEFAULT_TAGS if t in tags), None)
    if chosen is not None:
        series = [Series(chosen, init(run, None) if run.startswith("eval/") else "",
                         *tag_points(acc, chosen), "env steps" if run else "step")
                  for run, acc in accs.items() if chosen in acc.Tags().get("scalars", [])]
        if not series and "/" in chosen:        # charts/episodic_return → charts/<game>/episodic_return
            head, tail = chosen.split("/", 1)
            pattern = rf"{re.escape(head)}/(?P<game>[^/]+)/{re.escape(tail)}"
            series = _per_game(accs, pattern, evals, init) + _visits(accs, head, tail) + _per_game(
                accs, pattern, ["games"], lambda run, m: "training")
        if series:
            return chosen, series
    raise UserError(f"run {run_dir} has no scalar {chosen or 'to plot'!r} "
                    f"(has: {', '.join(sorted(tags)) or 'none'})")


def _visits(accs: dict, head: str = "charts", tail: str = "episodic_return") -> list[Series]:
    """Per Atari training game, ``<head>/<game>/<tail>`` of its first and its latest visit (runs
    ``games/<game>/visit_<S>``)."""
    out = []
    for game in sorted({r.split("/")[1] for r in accs if r.startswith("games/")}):
        visits = sorted(r for r in accs if r.startswith(f"games/{game}/"))
        ends = {visits[0]: "first visit", visits[-1]: "latest visit"} if len(visits) > 1 else {visits[0]: "visit"}
        out += _per_game(accs, rf"{re.escape(head)}/(?P<game>{re.escape(game)})/{re.escape(tail)}", list(ends),
                         lambda run, m: ends[run])
    return out


def _init_labels(run_dir: Path) -> dict[str, str]:
    """How the run's table names its initialisations (train/tasks/atari_eval.py): after the config's method."""
    from .report_data import run_config
    from .names import init_labels
    return init_labels(str(run_config(run_dir).get("method", "meta-learned")))


def read_scalars(run_dir: Path, tag: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    """One tag's (name, steps, values) from the run's own, games/ or eval/<init> event files."""
    accs = _accumulators(Path(run_dir))
    tags = [t for acc in accs.values() for t in acc.Tags().get("scalars", [])]
    chosen = tag or next((t for t in DEFAULT_TAGS if t in tags), None)
    if chosen is None or chosen not in tags:
        has = ", ".join(sorted(tags)) or "none"
        raise UserError(f"run {run_dir} has no scalar {chosen or 'to plot'!r} (has: {has})")
    acc = next(acc for acc in accs.values() if chosen in acc.Tags().get("scalars", []))
    return (chosen, *tag_points(acc, chosen))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def run_group(folder: str) -> str:
    """The experiment a run folder belongs to: its name without the seed (module docstring)."""
    return re.sub(r"_s(?:eed)?\d+$", "", folder.split("__")[0]) or folder


Loaded = list[tuple[Path, str, list[Series]]]     # each run's (folder, y-axis name, series): load_runs


def load_runs(run_dirs: list[Path], tag: str | None = None) -> Loaded:
    """Each run's series (``select_series``), its event files read once for the figure and the CSV alike."""
    return [(Path(d), *select_series(Path(d), tag)) for d in run_dirs]


def collect(runs: Loaded) -> tuple[str, dict[str, dict[str, list[Series]]]]:
    """{panel: {line label: [the series of each run in the group]}} over loaded ``runs``: runs named alike
    (``run_group``) are one group; with several groups a line is labelled ``<group> <init>``."""
    per_run = [(run_group(d.name), series) for d, _, series in runs]
    several = len({g for g, _ in per_run}) > 1
    panels: dict[str, dict[str, list[Series]]] = defaultdict(lambda: defaultdict(list))
    for group, series in per_run:
        for s in series:
            label = " ".join(p for p in (group if several or not s.label else "", s.label) if p)
            panels[s.panel][label or group].append(s)
    return runs[0][1], panels


# Files a run writes itself (train/trainer.py, train/tasks/*): a figure saved with --out never replaces one.
RUN_OWN = re.compile(r"(config\.yaml|run_info\.json|result\.json|forgetting\.json|batched\.json|eval(_\w+)?\.json"
                     r"|eval_atari(_\w+)?\.(md|png)|checkpoint-\d+\.pt.*|events\.out\.tfevents\..*|\.metarl\.lock)")


def check_out(path: Path, flag: str = "--out") -> Path:
    """A figure's destination checked before anything is drawn (UserError, one line): not a folder, and not
    a file of a run directory's own (``RUN_OWN``: its results, config, checkpoints, the held-out figure)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name")
    if path.exists() and (path.resolve().parent / "config.yaml").is_file() and RUN_OWN.fullmatch(path.name):
        raise UserError(f"{flag} {path} is the run's own {path.name}: choose another file name")
    return path


def save_figure(fig, path: Path, **kwargs) -> Path:
    """``fig`` as PNG at ``path``, atomically (a failure leaves the old file; one line, RunDirError)."""
    import io

    from .checkpoint import write_bytes_atomic
    data = io.BytesIO()
    fig.savefig(data, format="png", **kwargs)
    return write_bytes_atomic(path, data.getvalue())


def plot_runs(run_dirs: list[Path], tag: str | None = None, out: str | None = None, window: int = 0,
              csv: str | None = None) -> Path:
    """`metarl plot`: the figure (at ``out``, else in the first run's folder; its path returned) and, with
    ``csv``, its points (``write_csv``); both destinations checked before anything is read."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if out:
        check_out(Path(out))
    if csv:
        check_out(Path(csv), "--csv")
    runs = load_runs(run_dirs, tag)
    if csv:
        write_csv(runs, csv)
    fig = figure(run_dirs, tag, window, runs=runs)
    chosen = fig._metarl_tag
    path = Path(out) if out else Path(run_dirs[0]) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', chosen).strip('_')}.png"
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_csv(runs: Loaded, path: str | Path) -> Path:
    """The raw points behind a plot of loaded ``runs``, one row each (``run,panel,line,step,value``; unsmoothed,
    unaveraged) — the compact evidence a results page keeps beside its figure. Written atomically (``check_out``
    rules)."""
    import csv
    import io

    from .checkpoint import write_text_atomic
    check_out(Path(path), "--csv")
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["run", "panel", "line", "step", "value"])
    for d, _, series in runs:
        for s in series:
            rows.writerows([d.name, s.panel, s.label, int(x), repr(float(y))] for x, y in zip(s.steps, s.values))
    return write_text_atomic(path, text.getvalue())


def figure(run_dirs: list[Path], tag: str | None = None, window: int = 0, runs: Loaded | None = None):
    """The matplotlib figure `metarl plot` saves: one axes per panel (game), titled by it, one line per label
    (``runs``: the runs already loaded by ``load_runs``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen, panels = collect(runs if runs is not None else load_runs(run_dirs, tag))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (panel, lines) in zip(axes.flat, sorted(panels.items())):
        for label, runs in sorted(lines.items()):
            grid = np.unique(np.concatenate([s.steps for s in runs]))
            # each run on the common grid, NaN outside its own steps: a point averages the runs that reach it
            curves = np.stack([np.interp(grid, s.steps, smooth(s.values, window or max(1, len(s.values) // 50)),
                                         left=np.nan, right=np.nan) for s in runs])
            mean, std = curve_mean_std(curves)              # the sample std: no band for one run
            ax.plot(grid, mean, label=f"{label} (n={len(runs)})", marker="o" if len(grid) <= MARKERS_UP_TO else None,
                    markersize=4)
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        ax.set_title(panel)
        ax.set_xlabel(runs[0].xlabel)
        ax.set_ylabel(chosen if panel == chosen else chosen.split(" (")[0])
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig._metarl_tag = chosen
    return fig
