#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS (default 60).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]   TARGET: st, st_index, proto, config, tok
#                                             (default: all)
#
# The build goes to build-fuzz/ (FUZZ_BUILD_DIR to change it), configured with
# CC=clang -Dfuzz=true; the normal build directories are not touched. Each
# target runs on a copy of tests/fuzz/corpus/<target>/ in a scratch directory
# under /tmp (removed at the end unless FUZZ_KEEP=1), with its dictionary.
# Extra libFuzzer flags can be passed in FUZZ_ARGS (e.g. "-max_len=65536").
#
# A crash, leak, timeout, out-of-memory or sanitizer report makes the script
# exit 1; the offending input is copied to tests/fuzz/crashes/ and the tail of
# the log is printed. Reproduce with build-fuzz/tests/fuzz/fuzz_<target> FILE.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

secs=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
((${#targets[@]})) || targets=(st st_index proto config tok)
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
  echo "usage: $0 [SECONDS] [st|st_index|proto|config|tok ...]" >&2
  exit 2
fi
for t in "${targets[@]}"; do
  [ -d "tests/fuzz/corpus/$t" ] || { echo "run.sh: unknown target '$t'" >&2; exit 2; }
done

build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
command -v clang >/dev/null || { echo "run.sh: clang not found (apt-get install clang)" >&2; exit 2; }
if [ -f "$build/build.ninja" ]; then
  if ! grep -Eq '^ command = (\S*/)?clang(-[0-9]+)? ' "$build/build.ninja"; then
    echo "run.sh: $build was configured with another compiler; remove it or set FUZZ_BUILD_DIR" >&2
    exit 2
  fi
  meson configure "$build" -Dfuzz=true >/dev/null || exit 2
else
  CC=clang meson setup "$build" -Dfuzz=true -Dbuildtype=debugoptimized -Db_ndebug=false >/dev/null || exit 2
fi
ninja -C "$build" "${targets[@]/#/tests/fuzz/fuzz_}" >/dev/null || { echo "run.sh: build failed" >&2; exit 2; }

work=$(mktemp -d /tmp/svdllm-fuzz.XXXXXX)
[ "${FUZZ_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
status=0
rows=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp tests/fuzz/corpus/"$t"/* "$work/$t/corpus/"
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  # 8 KiB lets proto's lines outgrow the buffer's first 4 KiB; tok's real
  # tokenizer.json seed is ~10 KB.
  maxlen=8192
  [ "$t" = tok ] && maxlen=16384
  echo "run.sh: fuzz_$t for ${secs}s ..." >&2
  # shellcheck disable=SC2086
  "$build/tests/fuzz/fuzz_$t" "$work/$t/corpus" "${dict[@]}" -max_total_time="$secs" -max_len=$maxlen -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" ${FUZZ_ARGS:-} \
    >"$work/$t/log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$work/$t/log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$work/$t/log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -o 'corp: [0-9]*' "$work/$t/log" | tail -1 | cut -d' ' -f2)
  found=no
  if ((rc != 0)) || compgen -G "$work/$t/artifacts/*" >/dev/null; then
    found="YES (exit $rc)"
    status=1
    mkdir -p tests/fuzz/crashes
    for a in "$work/$t/artifacts"/*; do
      [ -e "$a" ] || continue
      cp "$a" "tests/fuzz/crashes/$t-$(basename "$a")"
      found+=" tests/fuzz/crashes/$t-$(basename "$a")"
    done
    cp "$work/$t/log" "tests/fuzz/crashes/$t.log"
    echo "---- fuzz_$t: last lines of the log (whole log: tests/fuzz/crashes/$t.log) ----" >&2
    tail -40 "$work/$t/log" >&2
  fi
  rows+=("$(printf '%-12s %12s %9s %6s %7s %6s  %s' "fuzz_$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" \
            "${corp:-?}" "$found")")
done

printf '%-12s %12s %9s %6s %7s %6s  %s\n' target runs exec/s cov ft corpus crashes
printf '%s\n' "${rows[@]}"
exit $status
