#!/bin/sh
# Runs the C step benchmark and its PyTorch counterpart side by side, in
# rounds, and prints the ratio of their best median step times for each round.
# The speed of a shared host can change from one minute to the next. A round
# runs both programs back to back (about ten seconds at 40 steps), so that
# both see the same state of the machine.
#
# Usage: framework/bench/run_bench.sh [BUILD_DIR] [STEPS] [ROUNDS]
#   BUILD_DIR  a configured thinklab build (default: build); the benchmark is
#              built there first
#   STEPS      timed steps for each run, 1 to 1000000 (default 30)
#   ROUNDS     rounds of both programs, 1 to 1000 (default 3)
# Environment:
#   PYTHON           default /usr/bin/python3, a python that imports torch
#   THREADS          default "2 1": thread counts from 1 to 1024, each given
#                    to both programs
#   OMP_WAIT_POLICY  default passive, for both programs. Waiting threads then
#                    sleep instead of spinning, which is faster for both here.
# Numbers are decimal, and leading zeros are dropped. The limits are those of
# thinklab-bench-step, and threads start at 1 because bench_step_torch.py
# rejects 0 (which means every core to the C program). All of these are checked
# before anything is built or measured.
set -eu
set -f # THREADS is split on spaces, never expanded as a file pattern

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
usage="usage: $0 [BUILD_DIR] [STEPS] [ROUNDS]"
case "${1:-}" in
    -h | --help)
        # The comment at the top of this file, without its leading '# '.
        sed -n '2,/^set -eu/{/^set -eu/d;s/^# \{0,1\}//;p}' "$0"
        exit 0
        ;;
esac
build=${1:-build}
steps=${2:-30}
rounds=${3:-3}
python=${PYTHON:-/usr/bin/python3}
threads=${THREADS:-"2 1"}
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export OMP_WAIT_POLICY

fail() {
    echo "run_bench.sh: $*" >&2
    exit 2
}

[ $# -le 3 ] || {
    shift 3
    fail "unexpected argument(s) after ROUNDS: '$*'; $usage"
}

# Sets count to $2, the value of $1, or fails unless it is a whole number from
# $3 to $4. Leading zeros are dropped, so 007 is 7 and not octal. The digits are
# counted before any comparison, because test ([) fails on a number beyond its
# integer range.
parse_count() {
    count=$2
    case $count in
        '' | *[!0-9]*) count=x ;;
    esac
    while :; do
        case $count in
            0?*) count=${count#0} ;;
            *) break ;;
        esac
    done
    if [ "$count" = x ] || [ ${#count} -gt ${#4} ] || [ "$count" -lt "$3" ] ||
        [ "$count" -gt "$4" ]; then
        fail "$1 '$2' must be a whole number from $3 to $4"
    fi
}

parse_count STEPS "$steps" 1 1000000
steps=$count
# Neither program limits the rounds. At about ten seconds a round (40 steps),
# 1000 rounds take nearly three hours.
parse_count ROUNDS "$rounds" 1 1000
rounds=$count
[ -n "$(echo $threads)" ] || fail "THREADS is empty; give thread counts such as \"2 1\""
checked=""
for n in $threads; do
    parse_count "THREADS entry" "$n" 1 1024
    checked="$checked $count"
done
threads=${checked# }
[ -f "$build/CMakeCache.txt" ] ||
    fail "BUILD_DIR '$build' is not a configured build; run cmake -S $repo -B $build first"
"$python" -c "import torch" 2>/dev/null ||
    fail "PYTHON '$python' cannot import torch; use /usr/bin/python3 with Debian's python3-torch"

cmake --build "$build" --target thinklab-bench-step -j2 >/dev/null
bench="$build/framework/bench/thinklab-bench-step"

median_of() {
    sed -n 's/.*median \([0-9.]*\) ms\/step.*/\1/p' | head -n 1
}

echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY, $steps timed steps per run, $rounds rounds"
summary=""
round=1
while [ "$round" -le "$rounds" ]; do
    echo
    echo "== round $round: $(date -u +%H:%M:%S) UTC =="
    best_c=""
    for n in $threads; do
        out=$("$bench" --threads "$n" --steps "$steps")
        echo "$out"
        ms=$(echo "$out" | median_of)
        if [ -z "$best_c" ] || awk "BEGIN { exit !($ms < $best_c) }"; then
            best_c=$ms
        fi
    done
    # torch.set_num_threads takes the same counts; the script reports the best.
    out=$("$python" "$here/bench_step_torch.py" --threads $threads --steps "$steps")
    echo "$out"
    torch_ms=$(echo "$out" | sed -n 's/^best: .*median \([0-9.]*\) ms\/step.*/\1/p')
    line=$(awk -v r="$round" -v c="$best_c" -v t="$torch_ms" \
        'BEGIN { printf "round %d: thinklab %.2f ms/step, PyTorch %.2f ms/step, PyTorch / thinklab = %.2f", r, c, t, t / c }')
    summary="$summary$line
"
    round=$((round + 1))
done

echo
echo "best medians of each round:"
printf "%s" "$summary"
# Over the rounds: each program's fastest round, and the middle round of each.
printf "%s" "$summary" | awk '
    { c[NR] = $4; t[NR] = $7 }
    END {
        n = NR
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) {
            if (c[j] < c[i]) { x = c[i]; c[i] = c[j]; c[j] = x }
            if (t[j] < t[i]) { x = t[i]; t[i] = t[j]; t[j] = x }
        }
        mc = n % 2 ? c[(n + 1) / 2] : (c[n / 2] + c[n / 2 + 1]) / 2
        mt = n % 2 ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
        printf "fastest rounds: thinklab %.2f ms/step, PyTorch %.2f ms/step, ratio %.2f\n", c[1], t[1], t[1] / c[1]
        printf "median rounds:  thinklab %.2f ms/step, PyTorch %.2f ms/step, ratio %.2f\n", mc, mt, mt / mc
    }'
