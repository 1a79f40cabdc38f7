#!/bin/sh
# Data-parallel scaling: runs thinklab-bench-mpi at 1 and 2 ranks, one
# thread per rank and the same rows per rank, and prints the global tokens
# per second of each and the scaling efficiency
# tokens/s(2 ranks) / (2 x tokens/s(1 rank)).
#
# Usage: framework/bench/bench_mpi.sh [BUILD_DIR] [STEPS] [EXTRA_ARGS...]
#   BUILD_DIR   a configured thinklab build with MPI (default: build)
#   STEPS       timed steps per run (default 30)
#   EXTRA_ARGS  passed to thinklab-bench-mpi, e.g. --deterministic
# Ranks are bound to cores (one thread each) and talk over shared memory.
set -eu

build=${1:-build}
steps=${2:-30}
[ $# -ge 2 ] && shift 2 || shift $#
cmake --build "$build" --target thinklab-bench-mpi -j2 >/dev/null
bench="$build/framework/bench/thinklab-bench-mpi"
mpirun=${MPIRUN:-mpirun}
flags="--allow-run-as-root --oversubscribe --bind-to core --map-by core \
--mca btl self,vader --mca btl_vader_single_copy_mechanism none"

rate() { sed -n 's/.*| \([0-9]*\) tokens\/s.*/\1/p'; }

# shellcheck disable=SC2086
one=$($mpirun $flags -np 1 "$bench" --threads 1 --steps "$steps" "$@")
echo "$one"
# shellcheck disable=SC2086
two=$($mpirun $flags -np 2 "$bench" --threads 1 --steps "$steps" "$@")
echo "$two"
r1=$(echo "$one" | rate)
r2=$(echo "$two" | rate)
awk -v a="$r1" -v b="$r2" 'BEGIN { printf "scaling efficiency at 2 ranks: %.1f%% (%s -> %s tokens/s)\n", 100 * b / (2 * a), a, b }'
