#!/usr/bin/env bash
# One entry point for the README's two set-up commands, on Debian 12 as root:
#   tools/setup.sh demo   install what is missing, build, and compress the
#                         bundled tinystories-656K model through the daemon
#   tools/setup.sh test   install what is missing, build, run the whole test
#                         suite, then the fast suites again under ASan/UBSan
set -euo pipefail
cd "$(dirname "$0")/.."

# man-db and systemd: the install test's `man -l` and systemd-analyze checks.
# chromium (test only: about 140 MB to download, 480 MB installed, 35 s to
# install): renders the sweep's SVG plot in the svg_render test.
PKGS=(gcc meson ninja-build pkg-config python3 libblis-dev libflame-dev libuv1-dev libjansson-dev
      libsqlite3-dev libpcre2-dev libutf8proc-dev man-db systemd)
[ "${1:-}" = test ] && PKGS+=(chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

build() { # dir, extra meson args...
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then meson setup "$dir" "$@" >/dev/null; fi
  ninja -C "$dir"
}

case "${1:-}" in
demo)
  build build
  tmp=$(mktemp -d /tmp/svdllm-demo.XXXXXX)
  sock=$tmp/svdllmd.sock
  build/svdllmd --socket "$sock" --state-dir "$tmp/state" --log-level notice &
  daemon=$!
  trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$tmp"' EXIT
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  ctl() { build/svdllmctl --socket "$sock" "$@"; }
  data=$PWD/tests/data
  # Calibrate on the first 300 kB of the TinyStories validation text, evaluate
  # on the next 200 kB (held out from calibration).
  head -c 300000 "$data/text/tinystories-valid-head.txt" > "$tmp/calib.txt"
  head -c 500000 "$data/text/tinystories-valid-head.txt" | tail -c 200000 > "$tmp/eval.txt"
  # SVD-LLM with its closed-form update and ranks allocated from the spectra.
  id=$(ctl submit --model "$data/tinystories-656K" --out "$tmp/tinystories-656K-40" --method svdllm-update \
         --ranks auto --ratio 0.4 --calib "$tmp/calib.txt" --nsamples 64 --seqlen 128 --eval-text "$tmp/eval.txt")
  echo "submitted job $id"
  ctl watch "$id"
  ctl status "$id"
  echo "output:"; ls -l "$tmp/tinystories-656K-40"
  ;;
test)
  build build --buildtype=release
  meson test -C build --print-errorlogs --num-processes 2
  # Everything again under the sanitizers but the reference-logits suite
  # (test_model: minutes unoptimized, and no code path the others miss);
  # the compression suite runs every method's job code (about 2 minutes).
  build build-asan -Db_sanitize=address,undefined -Dbuildtype=debugoptimized
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  # The fault campaign (its quick form ran above) is left out here: it
  # measures durability, not memory safety, and adds 3-6 minutes.
  meson test -C build-asan --print-errorlogs --num-processes 2 --no-suite slow --no-suite campaign
  # The compression cases by suite (each case is its own test since they
  # were split; a bare `compress` would match no test name).
  meson test -C build-asan --print-errorlogs --suite compress
  ;;
*)
  echo "usage: tools/setup.sh demo|test" >&2
  exit 2
  ;;
esac
