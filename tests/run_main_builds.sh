#!/bin/sh
# Checks that experiments/run_main.sh runs the cmake build before every run,
# not only when build/bin/thinklab is missing, and configures build/ only
# when it has no CMakeCache.txt. cmake and thinklab are stubs that record
# their arguments, so nothing is built or trained.
#
# Usage: run_main_builds.sh RUN_MAIN
set -u
run_main=$1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
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

# Builds a repository copy with run_main.sh, a stub build/bin/thinklab and a
# stub cmake first on PATH. Both append their arguments to $scratch/calls.
setup() {
    rm -rf "$scratch/top" "$scratch/stubs" "$scratch/calls"
    mkdir -p "$scratch/top/experiments" "$scratch/top/build/bin" "$scratch/stubs"
    cp "$run_main" "$scratch/top/experiments/run_main.sh"
    for tool in "$scratch/top/build/bin/thinklab" "$scratch/stubs/cmake"; do
        printf '#!/bin/sh\necho "%s $*" >> "%s/calls"\n' "$(basename "$tool")" "$scratch" > "$tool"
        chmod +x "$tool"
    done
}

# An existing, configured build is rebuilt, then run.
setup
touch "$scratch/top/build/CMakeCache.txt"
PATH="$scratch/stubs:$PATH" sh "$scratch/top/experiments/run_main.sh" seeds=1 > "$scratch/out" 2>&1
check "run_main.sh exits 0 with a built thinklab" test $? -eq 0
check "run_main.sh rebuilds a built thinklab" \
    test "$(sed -n 1p "$scratch/calls")" = "cmake --build build -j2"
check "run_main.sh runs thinklab after the build" \
    test "$(sed -n 2p "$scratch/calls")" = "thinklab run experiments/compare.lua setting=quick threads=2 seeds=1"
check "run_main.sh keeps the existing configuration" \
    test "$(grep -c -- '-DCMAKE_BUILD_TYPE' "$scratch/calls")" -eq 0

# A fresh checkout is configured as Release first.
setup
PATH="$scratch/stubs:$PATH" sh "$scratch/top/experiments/run_main.sh" > "$scratch/out" 2>&1
check "run_main.sh exits 0 on a fresh checkout" test $? -eq 0
check "run_main.sh configures a fresh checkout as Release" \
    test "$(sed -n 1p "$scratch/calls")" = "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release"
check "run_main.sh builds a fresh checkout" \
    test "$(sed -n 2p "$scratch/calls")" = "cmake --build build -j2"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all checks passed"
