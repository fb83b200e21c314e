#!/bin/bash
# The seed-batching claim at the paper's maze size (docs/RESULTS.md, "Seed-batched maze runs"): the plain RNN's
# 10 seeds trained as one batch (maze.seeds) and the same 10 seeds trained alone, META_STEPS × 30 iterations each,
# then `maze_report compare` (Mann-Whitney U, bootstrap CI) on their final returns; a third group, the 10 seeds
# batched at half the task learning rate, is the real difference the comparison must see.
# usage: scripts/maze_equivalence.sh OUT_DIR [META_STEPS (default 10: 300 iterations)]   — resumable
set -euo pipefail
out=${1:?usage: scripts/maze_equivalence.sh OUT_DIR [META_STEPS]}; steps=${2:-10}
py=${PYTHON:-.venv/bin/python}
run() {  # run DIR ARGS...: train, or resume a run that has a config.yaml, unless it has finished (eval.json)
  local d=$1; shift
  if [ -e "$d/eval.json" ]; then return; fi
  if [ -e "$d/config.yaml" ]; then $py -m train.cli train --resume "$d"
  else $py -m train.cli train "$@" --run-dir "$d"; fi
}
common=(meta.steps=$steps run.progress=false run.checkpoint_every=1)
run "$out/batched" configs/maze_rnn_10seeds.yaml "${common[@]}"
for s in 0 1 2 3 4 5 6 7 8 9; do run "$out/alone_$s" configs/maze_rnn.yaml seed=$s "${common[@]}"; done
run "$out/batched_half_lr" configs/maze_rnn_10seeds.yaml maze.task_lr=5.0e-4 name=maze_rnn_10seeds_half_lr \
  "${common[@]}"
alone=("$out"/alone_*)
$py -m train.maze_report compare --a "$out/batched" --b "${alone[@]}" | tee "$out/compare_batched_vs_alone.json"
$py -m train.maze_report compare --a "$out/batched_half_lr" --b "${alone[@]}" | tee "$out/compare_half_lr_vs_alone.json"
# where each seed's batched run parts from its run alone (first iteration whose episode returns differ)
$py - "$out" <<'PY' | tee "$out/parting.json"
import json, sys
from pathlib import Path
from train.checkpoint import load_latest
out = Path(sys.argv[1])
batched = load_latest(out / "batched")[0]["adapter"]["returns"]          # (iterations, seeds, batch)
first = {}
for k in range(batched.shape[1]):
    alone = load_latest(out / f"alone_{k}")[0]["adapter"]["returns"]
    differs = (batched[:, k] != alone).any(-1).nonzero()
    first[k] = int(differs[0]) if len(differs) else None
print(json.dumps({"iterations": batched.shape[0], "first_differing_iteration": first}))
PY
