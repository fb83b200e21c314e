#!/bin/bash
# Issue 33's runs (docs/RESULTS.md, "At 10,080 iterations" and "The paper protocol to 100 meta-steps"), two lanes
# of one core each, from a frozen worktree CODE into RUNS; every run resumes from its checkpoint, so the same
# command continues after a stop. A run is skipped once RUNS/<name>/DONE exists; removing RUNS/GO stops the lanes
# between runs.
# Start: echo 0 > /proc/sys/kernel/sched_autogroup_enabled; mkdir -p $RUNS && touch $RUNS/GO &&
#        (nohup setsid bash scripts/long_horizon_queue.sh >> $RUNS/queue.out 2>&1 &)
RUNS=${RUNS:-/work/runs/q33}
cd "$RUNS" || exit 2
CODE=${CODE:-/work/frozen9}   # git worktree add --detach /work/frozen9 cb4608b (Warp-LSTM fused; 67af880 ran the others)
PY=${PY:-/work/main/.venv/bin/python}
TR=${TR:-/work/main/.venv/bin/torchrun}
run() {  # run NAME RANKS CONFIG [overrides...]
  local name=$1 ranks=$2 cfg=$3; shift 3
  [ -e "$name/DONE" ] && return 0
  [ -e GO ] || return 1
  local launch=($PY -m train.cli)
  [ "$ranks" -gt 1 ] && launch=($TR --standalone --nproc-per-node "$ranks" -m train.cli)
  echo "$(date -u +%FT%T) start $name" >> queue.log
  if [ -e "$name/config.yaml" ]; then
    (cd $CODE && PYTHONPATH=$CODE "${launch[@]}" train --resume $RUNS/$name) >> "$name.log" 2>&1
  else
    (cd $CODE && PYTHONPATH=$CODE "${launch[@]}" train $cfg --run-dir $RUNS/$name "$@") >> "$name.log" 2>&1
  fi
  local rc=$?
  echo "$(date -u +%FT%T) end $name rc=$rc" >> queue.log
  [ $rc -eq 0 ] && touch "$name/DONE"
  return $rc
}
leap() { run omniglot_leap_s$1 2 configs/omniglot_leap.yaml seed=$1 meta.steps=100 eval.every=10 run.progress=false; }
laneA() { run maze_lstm_10seeds 1 configs/maze_lstm_10seeds.yaml && run maze_rnn_10seeds 1 configs/maze_rnn_10seeds.yaml \
          && run omniglot_warp_leap_s0 1 configs/omniglot_warp_leap_original.yaml seed=0 meta.steps=100 eval.every=10 \
             run.progress=false; }
laneB() { run maze_warp_rnn_10seeds 1 configs/maze_warp_rnn_10seeds.yaml \
          && run maze_warp_lstm_10seeds 1 configs/maze_warp_lstm_10seeds.yaml && leap 1 && leap 2; }
# lane B after a running Warp-RNN process (PID $2) of an earlier queue: mark it done if it finished, go on
[ "${1:-}" = "--lane-B-after" ] && { while kill -0 "$2" 2>/dev/null; do sleep 60; done; [ -e maze_warp_rnn_10seeds/eval.json ] && touch maze_warp_rnn_10seeds/DONE; laneB; exit; }
laneA & laneB & wait
