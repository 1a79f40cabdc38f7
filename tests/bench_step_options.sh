#!/bin/sh
# Checks the step benchmark's programs. thinklab-bench-step must reach the
# same loss after 25 steps in every parallel mode, so a change to any op shows
# here first. Bad arguments to thinklab-bench-step, bench_step_torch.py and
# run_bench.sh must stop them with exit status 2 and a message naming the
# value, before anything is measured.
#
# Usage: bench_step_options.sh BENCH RUN_BENCH BUILD_DIR PYTHON
set -u
bench=$1
run_bench=$2
build=$3
python=$4
torch_script=$(dirname "$run_bench")/bench_step_torch.py
failures=0

check() { # description, then a command that must succeed
    what=$1
    shift
    if "$@"; then
        echo "ok    $what"
    else
        echo "FAIL  $what" >&2
        failures=$((failures + 1))
    fi
}

# Runs a command and expects exit status 2, the fragment in its output, and no
# header of a program that has started measuring.
rejects() {
    fragment=$1
    shift
    out=$("$@" 2>&1)
    code=$?
    check "$* exits 2 (got $code)" [ "$code" -eq 2 ]
    case $out in
        *"$fragment"*) echo "ok    $* names '$fragment'" ;;
        *) echo "FAIL  $* lacks '$fragment'; output: $out" >&2; failures=$((failures + 1)) ;;
    esac
    case $out in
        *"step benchmark"* | *"timed steps per run"*)
            echo "FAIL  $* started measuring before it stopped; output: $out" >&2
            failures=$((failures + 1)) ;;
    esac
}

# 4.1802 is the loss after 25 steps of the fixed random batches (seeded), the
# same to 4 decimals whichever way the threads split the work.
for mode in "--threads 1" "--threads 2" "--threads 2 --op-threads"; do
    out=$(OMP_WAIT_POLICY=passive "$bench" $mode --steps 20 2>&1)
    case $out in
        *"4.1802 at step 24"*) echo "ok    $mode ends at loss 4.1802" ;;
        *) echo "FAIL  $mode: $(echo "$out" | grep loss)" >&2; failures=$((failures + 1)) ;;
    esac
done

# OpenMP allowed to start fewer threads than requested: OpenBLAS used to wait
# for the missing ones forever. The runs must finish, and a thread limit of 1
# must show on the start-up line.
for env in OMP_THREAD_LIMIT=1 OMP_DYNAMIC=true; do
    out=$(env "$env" OMP_WAIT_POLICY=passive timeout 120 "$bench" --threads 2 --steps 2 \
          --warmup 0 2>&1)
    case $out in
        *"at step 1 (random targets"*) echo "ok    $env: --threads 2 finishes" ;;
        *) echo "FAIL  $env: --threads 2 did not finish: $(echo "$out" | tail -n 2)" >&2
           failures=$((failures + 1)) ;;
    esac
done
check "OMP_THREAD_LIMIT=1 gives 1 thread and says why" sh -c \
    "OMP_THREAD_LIMIT=1 '$bench' --threads 2 --steps 1 --warmup 0 |
     grep -q '^threads 1 of [0-9]* cores*, at most 1 by OMP_THREAD_LIMIT'"
# More shards than threads run in turn on the threads there are.
check "--threads 1 --shards 2 keeps to one thread" sh -c \
    "'$bench' --threads 1 --shards 2 --steps 3 --warmup 0 |
     awk '/^steps/ { wall = \$7 } /^median CPU time/ { cpu = \$4 }
          END { exit !(cpu < 1.5 * wall) }'"

check "--help exits 0 and describes --op-threads" sh -c "'$bench' --help | grep -q -- '--op-threads  with'"
rejects "--steps '0' must be a whole number from 1" "$bench" --steps 0
rejects "--steps ' 5' must be a whole number" "$bench" --steps " 5"
rejects "--threads '-1' must be a whole number" "$bench" --threads -1
rejects "--warmup 'x' must be a whole number" "$bench" --warmup x
rejects "unknown or incomplete option '--bogus'" "$bench" --bogus
rejects "--shards 5 does not divide the batch of 12" "$bench" --shards 5
rejects "--shards 2 cannot be combined with --op-threads" \
    "$bench" --op-threads --shards 2 --steps 1 --warmup 0
rejects "--shards 3 cannot be combined with --op-threads" \
    "$bench" --shards 3 --threads 2 --op-threads --steps 1 --warmup 0
check "--shards 12 reports shards of 1 sequence" sh -c \
    "'$bench' --threads 1 --shards 12 --steps 1 --warmup 0 |
     grep -qx 'parallel: 12 data-parallel shards of 1 sequence'"

rejects "--steps 0: give 1 to 1000000" "$python" "$torch_script" --steps 0
rejects "--warmup -1: give 0 to 1000000" "$python" "$torch_script" --warmup -1
rejects "--threads 0: torch.set_num_threads takes 1 or more" "$python" "$torch_script" --threads 0
# The trailing --threads 0 stops a version without the upper limits before it
# measures anything.
rejects "--steps 1000001: give 1 to 1000000" \
    "$python" "$torch_script" --steps 1000001 --threads 0
rejects "--threads 1025: give 1 to 1024" "$python" "$torch_script" --threads 1025 0

# run_bench.sh checks everything before it builds or runs anything. PYTHON
# names no interpreter in the cases below that pass every other check, so that
# a version which misses the bad value stops there instead of measuring.
no_python=PYTHON=/nonexistent/python
check "run_bench.sh --help exits 0 and gives the usage" \
    sh -c "'$run_bench' --help | grep -q -- 'Usage: framework/bench/run_bench.sh'"
rejects "ROUNDS '0' must be a whole number from 1 to 1000" "$run_bench" "$build" 2 0
rejects "STEPS 'abc' must be a whole number from 1 to 1000000" "$run_bench" "$build" abc 1
rejects "ROUNDS '99999999999999999999' must be a whole number from 1 to 1000" \
    env $no_python "$run_bench" "$build" 5 99999999999999999999
rejects "STEPS '99999999999999999999' must be a whole number from 1 to 1000000" \
    env $no_python "$run_bench" "$build" 99999999999999999999 1
rejects "STEPS '1000001' must be a whole number from 1 to 1000000" \
    env $no_python "$run_bench" "$build" 1000001 1
rejects "THREADS entry '5000' must be a whole number from 1 to 1024" \
    env THREADS="2 5000" $no_python "$run_bench" "$build" 2 1
# Leading zeros are read as decimal. So STEPS 0000000000007 and THREADS entry 02
# pass, and the check of the value after them fails.
rejects "ROUNDS '0' must be a whole number" "$run_bench" "$build" 0000000000007 0
rejects "THREADS entry '0' must be a whole number" env THREADS="02 0" "$run_bench" "$build" 2 1
rejects "STEPS '000' must be a whole number from 1 to 1000000" "$run_bench" "$build" 000 1
rejects "unexpected argument(s) after ROUNDS: 'extra'; usage: $run_bench [BUILD_DIR]" \
    env $no_python "$run_bench" "$build" 2 1 extra
# From another folder the advice names the repository, not '.'.
repo=$(cd "$(dirname "$run_bench")/../.." && pwd)
rejects "run cmake -S $repo -B /nonexistent first" \
    sh -c 'cd / && exec "$0" /nonexistent 2 1' "$run_bench"
rejects "THREADS entry '0' must be a whole number" env THREADS=0 "$run_bench" "$build" 2 1
rejects "THREADS entry '*' must be a whole number" env THREADS='*' "$run_bench" "$build" 2 1
rejects "BUILD_DIR '/nonexistent' is not a configured build" "$run_bench" /nonexistent 2 1
rejects "PYTHON '/nonexistent/python' cannot import torch" \
    env PYTHON=/nonexistent/python "$run_bench" "$build" 2 1

if [ "$failures" -ne 0 ]; then
    echo "bench_step_options: $failures check(s) failed" >&2
    exit 1
fi
echo "bench_step_options: all checks passed"
