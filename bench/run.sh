#!/usr/bin/env bash
# Builds and runs the forward-pass benchmark; arguments go to bench_forward
# (e.g. --reps 3, --model DIR, --min-pct 70).
#
#   bench/run.sh [BUILD_DIR] [bench_forward options...]
#
# BUILD_DIR defaults to ./build (set up with `meson setup build` if missing).
# Without --model, bench_forward writes two synthetic BF16 models (about
# 0.5 GB each, one at a time) under $TMPDIR and removes them afterwards.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$src/build
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    build=$1
    shift
fi
[ -f "$build/build.ninja" ] || meson setup "$build" "$src"
ninja -C "$build" bench_forward svdllm-genmodel
exec "$build/bench_forward" --genmodel "$build/svdllm-genmodel" "$@"
