#!/bin/sh
# One-command quick run of the main comparison: builds thinklab (into build/
# at the repository top, configured as Release unless build/ is already
# configured), then trains the five models of experiments/compare.lua with
# setting=quick on Tiny Shakespeare and prints where the tables and plots are.
#
#   experiments/run_main.sh                      # quick setting, seed 1
#   experiments/run_main.sh seeds=1,2 out=/tmp/r # extra key=value go to compare.lua
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# The build runs every time, so that after a pull the run uses the new
# sources. It is incremental, and with nothing changed it took about 3 s on a
# 2-core host.
if [ ! -f build/CMakeCache.txt ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
fi
cmake --build build -j2
# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed
# machine spinning made 2-thread training steps an order of magnitude slower.
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export OMP_WAIT_POLICY
start=$(date +%s)
status=0
build/bin/thinklab run experiments/compare.lua setting=quick threads=2 "$@" || status=$?
echo "run_main.sh: finished in $(( $(date +%s) - start )) s (exit status $status)"
exit $status
