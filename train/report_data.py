"""Finished runs read back for `metarl report` (train/report.py): scores per (suite, method, task, seed) and
learning curves (mean, std and count over seeds).

A run directory is told apart by what it holds (a listed folder without results is searched one level down):
- Atari (``eval_atari.json``, else ``eval.json`` with ``games``; train/tasks/atari_eval.py; the test split's
  only: a result that records another split is skipped with a note): one task per
  held-out game; per seed the raw final score and AUC and, for games with reference scores
  (train/atari_scores.py), their human-normalised values. The initialisations are named as the runs' tables
  name them (train/names.py): ``random_init`` "random init", ``meta_init`` after the config's method ("Leap
  init"; with the config's name where two listed configs share a method); ``Runs.aliases`` maps the config names
  and ``random_init`` to these names (``--baseline`` takes either). The random init of one
  (config seed, game) evaluated by several runs is counted once, and a run without it (``eval.random_init:
  false``: the transfer study's Reptile and pretrained runs) is compared with the one of the run that has it.
  Curves: TensorBoard ``eval/<game>/episodic_return`` and its sample std over the run's evaluation seeds,
  ``eval_std/<game>/episodic_return``, in the runs ``eval/<init>`` (earlier runs: ``eval/<game>/episodic_return_std``,
  a population std, there, or ``eval/<game>/<init>/…`` in the run directory itself).
- maze (``eval.json`` with ``return_last_mean``, or ``per_seed`` for a seed-batched run; train/tasks/maze.py):
  one task, one score per seed; curves: ``charts/episodic_return`` in ``games/`` (``seed_<k>/`` when batched).
- supervised (Omniglot, tiered, sine: ``eval.json`` with ``curve``; train/trainer.py): one task (the family),
  one score per run (its metrics averaged over the held-out tasks); curve: the held-out training-loss curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .atari_scores import human_normalised
from .commands import command
from .errors import UserError
from .names import init_names, result_name, tb_prefix

INITS = ("meta_init", "random_init")      # the held-out protocol's initialisations (train/tasks/atari_eval.py)

SUPERVISED_KEYS = ("test_accuracy", "test_loss", "auc", "final_loss")


@dataclass
class Score:
    suite: str                  # atari, maze, omniglot, ... (the config's task)
    method: str
    task: str                   # an Atari game, or the task family
    seed: str
    values: dict[str, float]


@dataclass
class Curve:
    suite: str
    method: str
    task: str
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int                      # seeds behind mean and std
    xlabel: str = "step"
    ylabel: str = "value"


@dataclass
class SeedCurve:
    """One held-out run's running-score curve on its grid (Atari: from the run's evaluation parts)."""
    suite: str
    method: str
    task: str
    seed: str
    x: np.ndarray
    y: np.ndarray


@dataclass
class Runs:
    scores: list[Score] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    seed_curves: list[SeedCurve] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seen: set = field(default_factory=set)
    atari_methods: dict[str, str] = field(default_factory=dict)     # Atari config name → its method
    aliases: dict[str, str] = field(default_factory=dict)           # config name or random_init → display name


def read_object(path: Path) -> dict:
    """A JSON file holding an object (eval.json, eval_atari.json); anything else is a user error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"unreadable {path}: not a JSON object")
    return data


def read_result_table(data: dict) -> tuple[str | None, dict]:
    """(split, per-game table) of an ``eval_atari.json``: ``{"split": ..., "games": {...}}`` (train/tasks/
    atari_eval.py), or the bare table written before the file recorded its split (split None: unknown)."""
    if isinstance(data.get("games"), dict) and isinstance(data.get("split"), str):
        return data["split"], data["games"]
    return None, data


def run_config(d: Path) -> dict:
    """The run's config.yaml as a dict, with ``name`` and ``seed`` taken from a ``NAME__SEED`` folder name
    where the file (or the key) is missing; an unreadable file is a user error."""
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"unreadable {d / 'config.yaml'}: {e}") from None
    cfg = cfg if isinstance(cfg, dict) else {}
    parts = d.name.split("__")          # runs/NAME__SEED__TIME
    cfg.setdefault("name", parts[0])
    cfg.setdefault("seed", parts[1] if len(parts) > 1 else 0)
    return cfg


def scalars(folder: Path, tags: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``tag: (steps, values)`` for the tags present in the TensorBoard event files directly in ``folder``
    (a step logged twice keeps its last value)."""
    from .plot import load_events, tag_points

    acc = load_events(folder)
    if acc is None:
        return {}
    have = set(acc.Tags().get("scalars", []))
    return {tag: tag_points(acc, tag) for tag in tags if tag in have}


def _has_results(d: Path, split: str = "test") -> bool:
    return any((d / f).is_file() for f in ("eval.json", f"eval_{split}.json", f"{result_name(split)}.json"))


def load_runs(run_dirs: list[Path], split: str = "test") -> Runs:
    """Scores and curves of every finished run in ``run_dirs`` on ``split``'s held-out tasks (test; val for a
    choice made on validation data) (UserError: a missing folder, no finished run)."""
    runs = Runs()
    dirs: list[Path] = []
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise UserError(f"not a directory: {d}")
        dirs += [d] if _has_results(d, split) else sorted(c for c in d.iterdir()
                                                          if c.is_dir() and _has_results(c, split))
    listed = {d.resolve() for d in dirs}
    for d in dirs:
        if d.name.startswith("seed_") and d.resolve().parent in listed:
            continue                    # a seed folder of a batched run that is listed too
        cfg = run_config(d)
        data = read_object(d / "eval.json") if (d / "eval.json").is_file() else {}
        atari = d / f"{result_name(split)}.json"
        if atari.is_file() or isinstance(data.get("games"), dict):
            # eval_atari[_<split>].json is the split's newest evaluation (`metarl eval` rewrites it; each split has
            # files of its own); eval.json holds the final evaluation, of eval.split's games
            if atari.is_file():
                have, table = read_result_table(read_object(atari))
            else:
                have, table = data.get("split"), data["games"]
            have = have or _own_split(cfg)      # written before results said their split: the run's eval.split
            if have != split:
                runs.notes.append(f"{d}: its held-out result is of the {have} games, not the {split} games; skipped")
                continue
            if not isinstance(table, dict):
                raise UserError(f"unreadable {atari}: no per-game table")
            _atari(d, cfg, table, runs, have)
        elif "return_last_mean" in data:
            if split != "test":
                runs.notes.append(f"{d}: a maze run has no {split} split (its result is its training's); skipped")
                continue
            _maze(d, cfg, data, runs)
        elif "curve" in data or (d / f"eval_{split}.json").is_file():
            result = _split_result(d, cfg, data, runs, split)
            if result is not None:
                _supervised(d, cfg, result, runs)
        else:
            runs.notes.append(f"{d}: eval.json of a kind the report does not read; skipped")
    if not runs.scores:
        why = f" ({len(runs.notes)} skipped, e.g. {runs.notes[0]})" if runs.notes else ""
        kind = "" if split == "test" else f" with {split} results"
        raise UserError(f"no finished runs (eval.json or eval_atari.json){kind} in: "
                        f"{', '.join(map(str, run_dirs))}{why}")
    _name_initialisations(runs)
    return runs


def _name_initialisations(runs: Runs) -> None:
    """Atari's methods (config names, ``random_init``) renamed to the initialisations' names (train/names.py)."""
    runs.aliases = init_names(runs.atari_methods)
    for item in (*runs.scores, *runs.curves, *runs.seed_curves):
        if item.suite == "atari":
            item.method = runs.aliases.get(item.method, item.method)


def _atari_seed_curves(d: Path, cfg: dict, game: str, init: str, method: str, runs: Runs,
                       split: str | None = None) -> None:
    """Each seed's curve of (game, init) from the run's evaluation parts (train/tasks/atari_eval_parts.py) of the
    split its result file records (else the config's ``eval.split``); a run without parts, or with unreadable
    ones, adds none."""
    folder = d / "eval_parts" / (split or _own_split(cfg))
    for path in sorted(folder.glob(f"{game}__{init}__*.json")):
        try:
            part = json.loads(path.read_text())
            settings = part["settings"]
            y = np.array([np.nan if v is None else float(v) for v in part["curve"]], dtype=np.float64)
            x = np.linspace(settings["env_steps"] / len(y), settings["env_steps"], len(y))
            seed = int(part["seed"])
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
        runs.seed_curves.append(SeedCurve("atari", method, game, f"{cfg['seed']}/{seed}", x, y))


def _atari(d: Path, cfg: dict, table: dict, runs: Runs, split: str | None = None) -> None:
    runs.atari_methods[cfg["name"]] = str(cfg.get("method", cfg["name"]))
    tb = None
    for game, rows in table.items():
        for init, r in rows.items():
            method = cfg["name"] if init == "meta_init" else init
            key = ("atari", method, game, str(cfg["seed"]))
            if key in runs.seen:
                runs.notes.append(f"{d}: {method} on {game} (config seed {cfg['seed']}) already read from "
                                  f"another run; counted once")
                continue
            runs.seen.add(key)
            _atari_seed_curves(d, cfg, game, init, method, runs, split)
            finals = r.get("final_scores")
            if finals is None:          # written before per-seed scores were kept: the mean over seeds only
                runs.notes.append(f"{d}: no per-seed scores for {game}/{init}; its mean counts as one seed")
                finals, aucs = [r["final_score"]], [np.nan]
            else:
                aucs = r.get("auc_scores", [np.nan] * len(finals))
            for i, (f, a) in enumerate(zip(finals, aucs)):
                runs.scores.append(Score("atari", method, game, f"{cfg['seed']}/{i}", {
                    "score": float(f), "human_normalised": human_normalised(game, f),
                    "score_auc": float(a), "human_normalised_auc": human_normalised(game, a)}))
            if tb is None:      # eval/<init> runs, tags eval/<game>/…; earlier runs: eval/<game>/<init>/… in d
                tb = {}
                for i in INITS:
                    tags = tuple(f"{section}/{g}/episodic_return{s}" for g in table
                                 for section, s in (("eval", ""), ("eval", "_std"), ("eval_std", "")))
                    tb.update({f"{t.split('/')[0]}/{t.split('/')[1]}/{i}/{t.split('/', 2)[2]}": v
                               for t, v in scalars(d / tb_prefix(split or "test") / i, tags).items()})
                if not tb:
                    tags = tuple(f"eval/{g}/{i}/episodic_return{s}"
                                 for g in table for i in table[g] for s in ("", "_std"))
                    tb = scalars(d, tags)
            tag = f"eval/{game}/{init}/episodic_return"
            if tag in tb:
                x, mean = tb[tag]
                n = len(finals)
                if f"eval_std/{game}/{init}/episodic_return" in tb:     # the sample std (n − 1): Curve's is over n
                    sample = np.interp(x, *tb[f"eval_std/{game}/{init}/episodic_return"])
                    std = sample * np.sqrt((n - 1) / n)
                elif tag + "_std" in tb:                                # written before: the std over n
                    std = np.interp(x, *tb[tag + "_std"])
                else:                                                   # one seed: no spread
                    std = np.zeros_like(mean)
                runs.curves.append(Curve("atari", method, game, x, mean, std, n, "env steps",
                                         "episodic return (true score)"))


def _maze(d: Path, cfg: dict, data: dict, runs: Runs) -> None:
    suite = str(cfg.get("task", "maze"))
    name = data.get("name") or cfg["name"]
    tag = "charts/episodic_return"
    if "per_seed" in data:
        rows = [(str(k), r, d / f"seed_{k}") for k, r in data["per_seed"].items()]
    else:
        rows = [(str(data.get("seed", cfg["seed"])), data, d / "games")]
    for seed, r, folder in rows:
        runs.scores.append(Score(suite, name, suite, seed, {"return_last_mean": float(r["return_last_mean"])}))
        tb = scalars(folder, (tag,)) or scalars(folder.parent if folder.name == "games" else folder, (tag,))
        if tag in tb:
            x, y = tb[tag]
            runs.curves.append(Curve(suite, name, suite, x, y, np.zeros_like(y), 1, "episodes", "episodic return"))


def _own_split(cfg: dict) -> str:
    """The split a run evaluates at its end (its config's ``eval.split``, default test)."""
    ev = cfg.get("eval")
    return str(ev.get("split", "test")) if isinstance(ev, dict) else "test"


def _split_result(d: Path, cfg: dict, data: dict, runs: Runs, split: str = "test") -> dict | None:
    """A supervised run's result on ``split``. eval.json holds the split the run was trained to evaluate
    (its ``split``; written before it said, the config's ``eval.split``): for a run trained with
    ``eval.split: val`` (a hyper-parameter sweep) that is the validation alphabets, so its test result is
    ``eval_test.json`` (``metarl eval --split test``), or none; likewise the other way round."""
    own = data.get("split", _own_split(cfg)) if data else None
    if own == split and "curve" in data:
        return data
    if (d / f"eval_{split}.json").is_file():
        if own is not None:
            runs.notes.append(f"{d}: its eval.json is on the {own} split; its {split} result read from "
                              f"eval_{split}.json")
        return read_object(d / f"eval_{split}.json")
    runs.notes.append(f"{d}: its eval.json is on the {own} split and it has no eval_{split}.json "
                      f"({command('metarl', 'eval', d, '--split', split)}); skipped")
    return None


def _supervised(d: Path, cfg: dict, data: dict, runs: Runs) -> None:
    suite = str(cfg.get("task", "supervised"))
    values = {k: float(data[k]) for k in SUPERVISED_KEYS if isinstance(data.get(k), (int, float))}
    runs.scores.append(Score(suite, cfg["name"], suite, str(cfg["seed"]), values))
    curve = np.asarray(data.get("curve") or [], dtype=np.float64)
    if curve.size:
        runs.curves.append(Curve(suite, cfg["name"], suite, np.arange(curve.size, dtype=np.float64), curve,
                                 np.zeros_like(curve), 1, "inner step", "training loss (held-out tasks)"))
