#!/usr/bin/env bash
# What each method costs at a wider shape than the bundled models: a
# synthetic 2-layer LLaMA (hidden 1024, ffn 2816, 16 heads, GQA 4 kv heads,
# BF16, random weights) compressed at ratio 0.4 by every method, calibrated on
# 32 x 256 random token ids, without evaluation (random weights make
# perplexity meaningless). Prints bench_methods' table: seconds per job, all
# jobs in one run, so their ratios are comparable. A last table evaluates
# svdllm's outputs at three ratios on 32 more windows of random ids: the
# "speed" column is the factored model's forward-pass tokens/s over the
# original's, both measured in the same job.
#
#   bench/methods_cost.sh [BUILD_DIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build}
[ -f "$build/build.ninja" ] || meson setup "$build" "$src"
ninja -C "$build" bench_methods svdllm-genmodel >/dev/null
tmp=$(mktemp -d /tmp/methods-cost.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$build/svdllm-genmodel" --out "$tmp/model" --hidden 1024 --layers 2 --heads 16 --kv-heads 4 --ffn 2816 \
    --vocab 4096 --dtype bf16 --max-pos 512
# 32 windows of 256 ids, little-endian int32, uniform in [0, 4096).
python3 -c "import random, struct, sys; random.seed(1); sys.stdout.buffer.write(struct.pack('<8192i', *[random.randrange(4096) for _ in range(8192)]))" > "$tmp/calib.i32"
common=(--model "$tmp/model" --calib "$tmp/calib.i32" --no-eval --nsamples 32 --seqlen 256 --ratio 0.4)
"$build/bench_methods" "${common[@]}"
"$build/bench_methods" "${common[@]}" --ranks auto --method svdllm --method svdllm-update --method rom
python3 -c "import random, struct, sys; random.seed(3); sys.stdout.buffer.write(struct.pack('<8192i', *[random.randrange(4096) for _ in range(8192)]))" > "$tmp/eval.i32"
"$build/bench_methods" --model "$tmp/model" --calib "$tmp/calib.i32" --eval "$tmp/eval.i32" --nsamples 32 \
    --seqlen 256 --eval-windows 32 --method svdllm --ratio 0.2 --ratio 0.4 --ratio 0.6
