"""The statistics every output of a run reports, defined once: the run's closing table, eval.json, `metarl report`,
`metarl plot`, TensorBoard and the maze's table use these.

- Spread over seeds (or runs, or tasks): the sample standard deviation (divisor n − 1). One value has none: "—" in
  tables, null in JSON, no band in figures, no point in TensorBoard.
- AUC of a held-out learning curve: per seed, the mean of its curve over the grid points from the AUC's start
  (``atari.auc_start``; points before the seed's first finished game, NaN, left out); of several seeds, the mean
  over seeds of those per-seed AUCs — the per-run score that rliable-style aggregates take — with the sample std
  of the per-seed AUCs as its spread. (Not the AUC of the seed-mean curve: the two differ where seeds finish
  their first game at different points.)
- TensorBoard: a spread is logged in a section of its own, ``<section>_std/<rest of the tag>`` beside
  ``<section>/<rest of the tag>`` (``eval_std/Pong/episodic_return`` for ``eval/Pong/episodic_return``).
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np


def finite(values: Iterable[float | None]) -> np.ndarray:
    """The finite values of ``values`` (None and NaN left out), as float64."""
    x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return x[np.isfinite(x)]


def sample_std(values: Iterable[float | None]) -> float | None:
    """Sample std (n − 1) of the finite values; None for fewer than two."""
    x = finite(values)
    return float(x.std(ddof=1)) if x.size > 1 else None


def mean_std(values: Iterable[float | None]) -> tuple[float, float | None]:
    """(mean, sample std) of the finite values: (NaN, None) for none, (the value, None) for one."""
    x = finite(values)
    return (float(x.mean()) if x.size else float("nan")), (float(x.std(ddof=1)) if x.size > 1 else None)


def curve_mean_std(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point of (seeds, points) curves: the mean and the sample std over the seeds with a value there (NaN
    where none, and where fewer than two for the std)."""
    stacked = np.asarray(stacked, dtype=np.float64)
    n = np.isfinite(stacked).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stacked, 0)
        std = np.where(n > 1, np.nanstd(stacked, 0, ddof=1), np.nan)
    return mean, std


def seed_auc(curve: np.ndarray, start: int = 0) -> float:
    """One seed's AUC: the mean of its curve from grid point ``start`` on (NaN points left out; NaN if none)."""
    x = finite(np.asarray(curve, dtype=np.float64)[start:])
    return float(x.mean()) if x.size else float("nan")


def pm(mean: float | None, std: float | None, digits: int) -> str:
    """"mean ± std" with ``digits`` decimals; "mean ± —" without a spread (one seed); "n/a" without a mean."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    spread = f"{std:.{digits}f}" if std is not None and np.isfinite(std) else "—"
    return f"{mean:.{digits}f} ± {spread}"


def spread_tag(tag: str) -> str:
    """The TensorBoard tag of a spread named ``<section>/<name>_std``: ``<section>_std/<name>`` (its own section)."""
    section, _, rest = tag.partition("/")
    return f"{section}_std/{rest[:-len('_std')]}" if rest.endswith("_std") else tag
