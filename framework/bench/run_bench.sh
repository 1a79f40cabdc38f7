#!/bin/sh
# Runs the C step benchmark and its PyTorch counterpart side by side and prints
# the ratio of their median step times.
#
# Usage: framework/bench/run_bench.sh [BUILD_DIR] [STEPS]
#   BUILD_DIR  a configured thinklab build (default: build); the benchmark is
#              built there first
#   STEPS      timed steps for each run (default 30)
# Environment: PYTHON (default /usr/bin/python3), THREADS (default "2 1").
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
steps=${2:-30}
python=${PYTHON:-/usr/bin/python3}
threads=${THREADS:-"2 1"}

cmake --build "$build" --target thinklab-bench-step -j2 >/dev/null
bench="$build/framework/bench/thinklab-bench-step"

best_c=""
for n in $threads; do
    out=$("$bench" --threads "$n" --steps "$steps")
    echo "$out"
    ms=$(echo "$out" | sed -n 's/.*median \([0-9.]*\) ms\/step.*/\1/p')
    echo
    if [ -z "$best_c" ] || awk "BEGIN { exit !($ms < $best_c) }"; then
        best_c=$ms
    fi
done

# torch.set_num_threads takes the same counts; the script reports the best.
out=$("$python" "$here/bench_step_torch.py" --threads $threads --steps "$steps")
echo "$out"
torch_ms=$(echo "$out" | sed -n 's/^best: .*median \([0-9.]*\) ms\/step.*/\1/p')
echo
awk -v c="$best_c" -v t="$torch_ms" \
    'BEGIN { printf "best median: thinklab %.2f ms/step, PyTorch %.2f ms/step, PyTorch / thinklab = %.2f\n", c, t, t / c }'
