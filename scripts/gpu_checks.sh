#!/usr/bin/env bash
# Every CUDA test and the GPU benchmarks, for when a GPU is at hand: about 6–8 minutes on one H100/H200
# (each step has its own time limit; the limits add up to 9 min 55 s). Without a GPU it says so and
# exits 2. Outputs (the figures to quote in docs/RESULTS.md, with the device line) go to $OUT (default
# gpu_checks/). Run from anywhere:   scripts/gpu_checks.sh        PY=/path/to/python scripts/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-gpu_checks}
mkdir -p "$OUT"
# the `metarl` command's entry point (it sets OpenMP's short idle spin before torch loads)
METARL=("$PY" -c "import sys; from train.cli import main; sys.exit(main())")
status=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_checks: no CUDA GPU visible to torch" >&2
    exit 2
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" | tee "$OUT/device.txt"
nvidia-smi -L >> "$OUT/device.txt" 2>/dev/null || true

step() {        # step NAME SECONDS COMMAND...: run with a time limit, keep its output, remember a failure
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "gpu_checks: $name failed (exit $rc)"; status=1; }
}

# 1. every test marked `cuda` (tests/test_device.py, test_atari_batched.py, test_atari_graphs.py: CUDA graphs
#    against the eager path, one sync per env step): skipped without CUDA
step cuda_tests 240 "$PY" -m pytest -q -m cuda tests

# 2. one agent at 16 envs against EnvPool's random-action bound, in one run (target: ours >= 0.8 of the bound):
#    eager, with CUDA graphs (a2c.cuda_graphs) and on EnvPool's async mode (a2c.async_batch 8 of 16 envs)
step a2c_one_agent 120 "${METARL[@]}" bench a2c-throughput --device cuda \
    --variants envpool_random,ours,ours_graphs,ours_async --num-envs 16 --steps 4000 --rounds 3
step a2c_one_agent_paper 75 "${METARL[@]}" bench a2c-throughput --device cuda --variants envpool_random,ours,ours_graphs \
    --num-envs 32 --steps 4000 --rounds 2 --network mnih2013 --observation rgb

# 3. 16 game agents batched (the paper's network and frames, 16 of its training games) against the same 16 trained
#    one by one and against the 16 pools' combined random-action bound, eager and with CUDA graphs (target:
#    batched_of_bound or batched_graphs_of_bound >= 0.85)
GAMES=AirRaid,Amidar,Assault,Asterix,Atlantis,BeamRider,Bowling,Carnival,CrazyClimber,DemonAttack,Enduro,Freeway,Gopher,MsPacman,NameThisGame,Phoenix
step a2c_16_agents 135 "${METARL[@]}" bench a2c-throughput --device cuda --agents 16 --games "$GAMES" \
    --num-envs 16 --steps 1500 --rounds 2 --network mnih2013 --observation rgb --cuda-graphs

# 4. grouped convolutions, each agent's own and torch.func.vmap for 16 stacked agents of the paper's network
#    (issue 30: "measure which is faster on each device")
step agents_stacking 25 "${METARL[@]}" bench agents-stacking --device cuda --agents 16 --network mnih2013 \
    --num-envs 32 --rounds 7

echo "== figures (last JSON line of each benchmark)"
for f in "$OUT"/a2c_*.txt "$OUT"/agents_stacking.txt; do echo "$(basename "$f" .txt): $(tail -n 1 "$f")"; done | tee "$OUT/summary.txt"
exit $status
