#!/bin/bash
# Issue 33's evidence under docs/long_horizon/ (docs/RESULTS.md), from its run directories. Run from the repository
# root with the environment active.
#   scripts/long_horizon_reports.sh maze LSTM_RUN OTHER_RUN...
#       the 10-seed maze runs at 10,080 iterations: the table (final return, mean ± std and IQM), the areas (whole
#       run and first 50k episodes), the curves (figure, and every seed's smoothed curve as CSV), the crossings of
#       returns 20 and 40 (episodes, the mean curve's and each seed's) and `metarl report` against the LSTM (IQM,
#       P(model > LSTM) with CIs) -> docs/long_horizon/maze/
#   scripts/long_horizon_reports.sh omniglot RUN...
#       the paper-protocol Omniglot runs: the validation accuracy at their last meta-step (`metarl eval --split
#       val`, once), the validation curves as CSV and figure, and `metarl report` (test accuracy) ->
#       docs/long_horizon/omniglot/
set -euo pipefail
D=docs/long_horizon
usage() { echo "usage: $0 maze LSTM_RUN OTHER_RUN... | omniglot RUN..." >&2; exit 2; }
case ${1:-} in
  maze)
    [ $# -ge 3 ] || usage
    shift
    out=$D/maze
    mkdir -p "$out"
    python -m train.maze_report table "$@" > "$out/table.md"
    python -m train.maze_report areas "$@" > "$out/areas.md"
    python -m train.maze_report curves "$@" --out "$out/curves.png" --csv "$out/seed_curves.csv"
    python -m train.maze_report crossings "$@" --levels 20,40 --json "$out/crossings.json" > "$out/crossings.md"
    metarl report "$@" --baseline "$(sed -n 's/^name: *//p' "$1/config.yaml")" --out "$out/report" ;;
  omniglot)
    [ $# -ge 1 ] || usage
    shift
    out=$D/omniglot
    mkdir -p "$out"
    for run in "$@"; do
      [ -e "$run/eval_val.json" ] || metarl eval "$run" --split val
    done
    metarl plot "$@" --tag eval_val/test_accuracy --out "$out/val_curves.png" --csv "$out/val_curves.csv"
    metarl report "$@" --out "$out/report" ;;
  *) usage ;;
esac
