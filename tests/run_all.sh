#!/usr/bin/env bash
# Builds thinklab with warnings as errors and runs the whole test suite twice:
# once optimised, once under AddressSanitizer and UndefinedBehaviorSanitizer.
# Build folders: build/ and build-sanitize/ beside this repository's top.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
jobs="$(nproc)"

cmake -S "$top" -B "$top/build" -DCMAKE_BUILD_TYPE=Release -DTL_WERROR=ON
cmake --build "$top/build" -j "$jobs"
ctest --test-dir "$top/build" --output-on-failure -j 1

echo "== sanitizer pass (AddressSanitizer, UndefinedBehaviorSanitizer, LeakSanitizer) =="
cmake -S "$top" -B "$top/build-sanitize" -DCMAKE_BUILD_TYPE=Debug -DTL_WERROR=ON -DTL_SANITIZE=ON
cmake --build "$top/build-sanitize" -j "$jobs"
# allocator_may_return_null: a request too large for the machine returns NULL
# as it does without ASan, so the tests of the out-of-memory messages run.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=1 \
LSAN_OPTIONS="suppressions=$top/tests/lsan.supp:print_suppressions=0" \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$top/build-sanitize" --output-on-failure -j 1 -LE no_sanitize
