"""`python -m train.power REPORT_JSON [--seeds N] [--metric M]`: what effect a comparison of two
initialisations with N seeds per game can detect, from the per-game spreads of an earlier `metarl report`.

The design is the transfer study's: each arm has N seeds on each of G games, and arms are compared game by
game (the probability of improvement is stratified by game). Scores are standardised within a game by its
pooled sample std over seeds (σ_g, from every method the report holds), so all N × G runs of an arm measure
one effect d in σ units. With a two-sided two-sample t-test at level α, ``detectable_effect`` is the d reached
with the given power (statsmodels' TTestIndPower, not re-derived here). Under normal scores with equal spread a
shift of d is a probability of improvement Φ(d/√2), and a shift of d·σ_g in the game's own units.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import UserError, error_line


def detectable_effect(runs_per_arm: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest standardised mean difference d that a two-sided two-sample t-test with ``runs_per_arm`` runs
    in each arm detects with probability ``power`` at level ``alpha``."""
    from statsmodels.stats.power import TTestIndPower

    return float(TTestIndPower().solve_power(effect_size=None, nobs1=runs_per_arm, alpha=alpha, power=power,
                                             ratio=1.0, alternative="two-sided"))


def probability_of_improvement(d: float) -> float:
    """P(X > Y) for X ~ N(d, 1), Y ~ N(0, 1): Φ(d / √2)."""
    return 0.5 * (1.0 + math.erf(d / 2.0))


def game_spreads(report: dict, metric: str) -> dict[str, float]:
    """Per game, the pooled sample std over seeds of ``metric`` over every method of the report's Atari suite."""
    per_task = report["suites"]["atari"]["per_task"]
    out = {}
    for game, methods in per_task.items():
        num = den = 0.0
        for row in methods.values():
            std, n = (row.get(metric) or {}).get("std"), row.get("seeds", 0)
            if std is not None and n > 1:
                num += (n - 1) * std ** 2
                den += n - 1
        if den:
            out[game] = math.sqrt(num / den)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.power", description=__doc__.splitlines()[0])
    p.add_argument("report", help="a report.json of `metarl report` (Atari runs)")
    p.add_argument("--metric", default="human_normalised_auc")
    p.add_argument("--seeds", type=int, default=10, help="seeds per game and arm")
    p.add_argument("--games", type=int, default=None, help="games per arm (default: the report's)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    args = p.parse_args(argv)
    try:
        try:
            report = json.loads(Path(args.report).read_text())
            spreads = game_spreads(report, args.metric)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"unreadable report {args.report}: {e}") from None
        if not spreads:
            raise UserError(f"{args.report} has no per-seed spread of {args.metric!r}")
        if args.seeds < 2 or not 0 < args.alpha < 1 or not 0 < args.power < 1:
            raise UserError("--seeds must be >= 2, --alpha and --power in (0, 1)")
    except UserError as e:
        print(error_line("train.power", e), file=sys.stderr)
        return 2
    games = args.games or len(spreads)
    d = detectable_effect(args.seeds * games, args.alpha, args.power)
    print(f"{args.seeds} seeds × {games} games per arm, α = {args.alpha}, power {args.power}: detectable "
          f"d = {d:.3f} within-game std, P(improvement) = {probability_of_improvement(d):.3f}")
    for game, s in spreads.items():
        print(f"  {game}: std over seeds of {args.metric} {s:.4g} → detectable shift {d * s:.4g}")
    print(json.dumps({"seeds": args.seeds, "games": games, "alpha": args.alpha, "power": args.power, "d": d,
                      "p_improvement": probability_of_improvement(d), "metric": args.metric,
                      "std": spreads, "shift": {g: d * s for g, s in spreads.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
