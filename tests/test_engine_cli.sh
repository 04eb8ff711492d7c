#!/usr/bin/env bash
# test_engine_cli: drives the real svdllm-engine binary the way a person would.
#
#   tests/test_engine_cli.sh PATH/TO/svdllm-engine      (run from the source root)
#
# Good input: `eval --json` prints one JSON object whose values match the
# bundled reference (tests/data/reference/reference-values.json) for
# tinystories-656K at L=128. Bad input: every case must exit non-zero (and not
# by a signal), print nothing on stdout and exactly one line on stderr that
# names the reason. The script checks stderr for sanitizer reports too, so
# pointing it at an ASan/UBSan build (meson setup build-asan
# -Db_sanitize=address,undefined) turns it into a sanitizer run.
#
# JSON is checked in pure bash (a regular expression for a flat object of
# strings and numbers), so the test needs no python or jq.
set -u

ENGINE=${1:?usage: test_engine_cli.sh PATH/TO/svdllm-engine}
MODEL=tests/data/tinystories-656K
TEXT=tests/data/text/tinystories-valid-head.txt
[ -x "$ENGINE" ] || { echo "not executable: $ENGINE" >&2; exit 1; }
[ -f "$MODEL/model.safetensors" ] || { echo "run from the source root (no $MODEL)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/svdllm-cli.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

checks=0
failures=0
fail() {
    failures=$((failures + 1))
    echo "FAIL: $*" >&2
}
pass() { checks=$((checks + 1)); }

# --- JSON helpers -------------------------------------------------------------
JSTR='"([^"\\]|\\.)*"'
JNUM='-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?'
JVAL="($JSTR|$JNUM|true|false|null)"
JPAIR="$JSTR *: *$JVAL"
JOBJ="^\\{ *($JPAIR( *, *$JPAIR)*)? *\\}\$"

# json_num LINE KEY: prints the numeric value of KEY, or nothing.
json_num() {
    local re="\"$2\" *: *($JNUM)"
    [[ $1 =~ $re ]] && printf '%s\n' "${BASH_REMATCH[1]}"
}

# near GOT WANT TOL: |got - want| <= tol (awk does the floating point).
near() { awk -v g="$1" -v w="$2" -v t="$3" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(d <= t) }'; }

# --- good input ---------------------------------------------------------------
# check_eval NAME MAXWIN WINDOWS WANT_NLL NLL_TOL [WANT_PPL_PREFIX]
check_eval() {
    local name=$1 maxw=$2 windows=$3 want_nll=$4 tol=$5 want_ppl=${6:-}
    local out rc line k v
    "$ENGINE" eval --model "$MODEL" --text "$TEXT" --seqlen 128 --max-windows "$maxw" --json \
        >"$TMP/out" 2>"$TMP/err"
    rc=$?
    if [ $rc -ne 0 ]; then
        fail "$name: exit $rc: $(head -c 300 "$TMP/err")"
        return
    fi
    pass
    if [ "$(wc -l <"$TMP/out")" -ne 1 ]; then
        fail "$name: expected one line on stdout, got: $(head -c 300 "$TMP/out")"
        return
    fi
    pass
    if [ -s "$TMP/err" ]; then fail "$name: unexpected stderr: $(head -c 300 "$TMP/err")"; else pass; fi
    line=$(cat "$TMP/out")
    if [[ $line =~ $JOBJ ]]; then pass; else fail "$name: not a flat JSON object: $line"; return; fi
    for k in ppl mean_nll tokens windows seqlen predicted; do
        if [ -n "$(json_num "$line" "$k")" ]; then pass; else fail "$name: key '$k' missing or not a number"; fi
    done
    [ "$(json_num "$line" tokens)" = 193347 ] && pass || fail "$name: tokens $(json_num "$line" tokens), want 193347"
    [ "$(json_num "$line" windows)" = "$windows" ] && pass ||
        fail "$name: windows $(json_num "$line" windows), want $windows"
    [ "$(json_num "$line" seqlen)" = 128 ] && pass || fail "$name: seqlen $(json_num "$line" seqlen), want 128"
    [ "$(json_num "$line" predicted)" = $((windows * 127)) ] && pass ||
        fail "$name: predicted $(json_num "$line" predicted), want $((windows * 127))"
    v=$(json_num "$line" mean_nll)
    near "$v" "$want_nll" "$tol" && pass || fail "$name: mean_nll $v, want $want_nll +- $tol"
    # ppl must be exp(mean_nll) to the printed precision.
    near "$(json_num "$line" ppl)" "$(awk -v m="$v" 'BEGIN { printf "%.6f", exp(m) }')" 2e-6 && pass ||
        fail "$name: ppl $(json_num "$line" ppl) is not exp(mean_nll $v)"
    if [ -n "$want_ppl" ]; then
        case $(json_num "$line" ppl) in
        "$want_ppl"*) pass ;;
        *) fail "$name: ppl $(json_num "$line" ppl), want $want_ppl..." ;;
        esac
    fi
}

# The reference lists the mean NLL of the first three windows (3.546057,
# 3.021853, 3.620894); their average, to the 6 printed digits, is 3.396268.
check_eval "first 3 windows" 3 3 3.396268 2e-6
# The whole text: 1510 windows, reference mean NLL 3.727339, ppl 41.5683 (~10 s on 2 cores).
check_eval "full text" 0 1510 3.727339 6e-7 41.568

# --- bad input ----------------------------------------------------------------
# expect_fail NAME REASON_SUBSTRING ARGS...: non-zero exit (no signal), empty
# stdout, exactly one stderr line "svdllm-engine: ..." containing the reason.
expect_fail() {
    local name=$1 reason=$2 rc nl
    shift 2
    "$ENGINE" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    nl=$(wc -l <"$TMP/err")
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
        fail "$name: exit status $rc, want 1 or 2"
    else
        pass
    fi
    [ -s "$TMP/out" ] && fail "$name: unexpected stdout: $(head -c 200 "$TMP/out")" || pass
    if [ "$nl" -ne 1 ]; then
        fail "$name: $nl lines on stderr, want 1:"
        head -n 20 "$TMP/err" | sed 's/^/    /' >&2
        return
    fi
    pass
    if grep -q '^svdllm-engine: ' "$TMP/err" && grep -qF -- "$reason" "$TMP/err"; then
        pass
    else
        fail "$name: stderr lacks '$reason': $(cat "$TMP/err")"
    fi
}

# copy_model DIR: a writable copy of the test model.
copy_model() {
    mkdir -p "$1" && cp "$MODEL"/config.json "$MODEL"/tokenizer.json "$MODEL"/model.safetensors "$1"/ &&
        chmod u+w "$1"/*
}

SL=(--seqlen 128)

expect_fail "missing model dir" "No such file or directory" eval --model "$TMP/no-such-model" --text "$TEXT" "${SL[@]}"

copy_model "$TMP/trunc-data"
truncate -s 1000000 "$TMP/trunc-data/model.safetensors"
expect_fail "truncated tensor data" "file truncated" eval --model "$TMP/trunc-data" --text "$TEXT" "${SL[@]}"

copy_model "$TMP/trunc-tail"
size=$(stat -c %s "$TMP/trunc-tail/model.safetensors")
truncate -s $((size - 4)) "$TMP/trunc-tail/model.safetensors"
expect_fail "last tensor short by 4 bytes" "truncated" eval --model "$TMP/trunc-tail" --text "$TEXT" "${SL[@]}"

copy_model "$TMP/trunc-header"
truncate -s 100 "$TMP/trunc-header/model.safetensors"
expect_fail "truncated header" "model.safetensors" eval --model "$TMP/trunc-header" --text "$TEXT" "${SL[@]}"

copy_model "$TMP/empty-st"
: >"$TMP/empty-st/model.safetensors"
expect_fail "empty safetensors" "model.safetensors" eval --model "$TMP/empty-st" --text "$TEXT" "${SL[@]}"

# Wrong dtype: rewrite one header dtype "F32" as "I32" (same element size, so
# the byte ranges stay valid and only the dtype check can refuse it).
copy_model "$TMP/dtype"
hdr=$(od -An -t u8 -N8 "$TMP/dtype/model.safetensors" | tr -d ' ')
entry='"model.layers.0.mlp.down_proj.weight":{"dtype":"'
off=$(head -c $((8 + hdr)) "$TMP/dtype/model.safetensors" | grep -abo "${entry}F32\"" | cut -d: -f1)
if [ -z "$off" ]; then
    fail "wrong dtype: cannot find the down_proj header entry to patch"
else
    pos=$((off + ${#entry}))
    printf 'I32' | dd of="$TMP/dtype/model.safetensors" bs=1 seek="$pos" conv=notrunc status=none
    expect_fail "wrong dtype (I32)" "dtype I32 not supported" eval --model "$TMP/dtype" --text "$TEXT" "${SL[@]}"
fi

copy_model "$TMP/arch"
sed -i 's/"model_type": *"llama"/"model_type": "gpt2"/' "$TMP/arch/config.json"
expect_fail "unknown architecture" "model_type 'gpt2' is not supported" \
    eval --model "$TMP/arch" --text "$TEXT" "${SL[@]}"

copy_model "$TMP/archlist"
sed -i 's/"LlamaForCausalLM"/"GPT2LMHeadModel"/' "$TMP/archlist/config.json"
expect_fail "unknown architectures entry" "architecture 'GPT2LMHeadModel' is not supported" \
    eval --model "$TMP/archlist" --text "$TEXT" "${SL[@]}"

copy_model "$TMP/badjson"
printf '{"model_type": "llama",' >"$TMP/badjson/config.json"
expect_fail "malformed config.json" "config.json" eval --model "$TMP/badjson" --text "$TEXT" "${SL[@]}"

: >"$TMP/empty.txt"
expect_fail "empty text" "is empty" eval --model "$MODEL" --text "$TMP/empty.txt" "${SL[@]}"

printf 'Once upon a time there was a cat.' >"$TMP/short.txt"
expect_fail "text shorter than one window" "fewer than one window of 128" \
    eval --model "$MODEL" --text "$TMP/short.txt" "${SL[@]}"

expect_fail "missing text file" "No such file or directory" \
    eval --model "$MODEL" --text "$TMP/no-such.txt" "${SL[@]}"

expect_fail "missing --seqlen" "needs --model, --text and --seqlen" eval --model "$MODEL" --text "$TEXT"
expect_fail "--seqlen not a number" "--seqlen 'abc'" eval --model "$MODEL" --text "$TEXT" --seqlen abc
expect_fail "--seqlen 1" "--seqlen '1'" eval --model "$MODEL" --text "$TEXT" --seqlen 1
expect_fail "--seqlen beyond max_position_embeddings" "exceeds the model's max_position_embeddings 512" \
    eval --model "$MODEL" --text "$TEXT" --seqlen 1024

# --- tokenize -----------------------------------------------------------------
# check_tokenize NAME WANT ARGS...: exit 0, one line on stdout equal to WANT,
# nothing on stderr. Text comes from --text or, without it, from stdin ($IN).
check_tokenize() {
    local name=$1 want=$2 rc
    shift 2
    "$ENGINE" tokenize "$@" <"${IN:-/dev/null}" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    [ $rc -eq 0 ] && pass || { fail "$name: exit $rc: $(head -c 300 "$TMP/err")"; return; }
    [ -s "$TMP/err" ] && fail "$name: unexpected stderr: $(head -c 300 "$TMP/err")" || pass
    [ "$(wc -l <"$TMP/out")" -eq 1 ] && pass || fail "$name: expected one line on stdout"
    [ "$(cat "$TMP/out")" = "$want" ] && pass ||
        fail "$name: got '$(head -c 300 "$TMP/out")', want '${want:0:300}'"
}
# ids_of FILE.i32: the ids of a reference file, space-separated (od reads
# host order; the files are little-endian, as is every host we build on).
ids_of() { od -An -v -t d4 "$1" | tr -s ' \n' '  ' | sed 's/^ //; s/ $//'; }

LLAMA3=tests/data/tokenizers/llama3/tokenizer.json
QWEN3=tests/data/tokenizers/qwen3/tokenizer.json
REF=tests/data/reference/tok
# The committed @huggingface/tokenizers ids (tests/ref/gen_tok_ref.mjs).
check_tokenize "tokenize llama3 stress text" "$(ids_of $REF/llama3.stress.i32)" \
    --tokenizer "$LLAMA3" --text tests/data/text/tok-stress.txt
check_tokenize "tokenize qwen3 ill-formed UTF-8" "$(ids_of $REF/qwen3.invalid.i32)" \
    --tokenizer "$QWEN3" --text tests/data/text/tok-stress-invalid.bin
printf 'Hello world' >"$TMP/hello.txt"
IN=$TMP/hello.txt check_tokenize "tokenize stdin, llama3 (no BOS in its post-processor)" "9906 1917" --tokenizer "$LLAMA3"
IN=$TMP/hello.txt check_tokenize "tokenize --model" "1 80 1288 139 410 555" --model "$MODEL"
IN=$TMP/hello.txt check_tokenize "tokenize --no-bos" "80 1288 139 410 555" --model "$MODEL" --no-bos
IN=$TMP/hello.txt check_tokenize "tokenize --json" \
    '{"tokenizer":"tests/data/tokenizers/llama3/tokenizer.json","bytes":11,"tokens":2,"ids":[9906,1917],"pieces":["Hello","Ġworld"]}' \
    --tokenizer "$LLAMA3" --json
IN=/dev/null check_tokenize "tokenize empty text" "" --tokenizer "$LLAMA3"

expect_fail "tokenize: both --tokenizer and --model" "exactly one of --tokenizer and --model" \
    tokenize --tokenizer "$LLAMA3" --model "$MODEL"
expect_fail "tokenize: missing tokenizer" "No such file or directory" tokenize --tokenizer "$TMP/no-such.json"
printf '{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]}}' >"$TMP/unigram.json"
expect_fail "tokenize: unsupported tokenizer" "model type 'Unigram' not supported" \
    tokenize --tokenizer "$TMP/unigram.json" --text "$TMP/hello.txt"
expect_fail "tokenize: missing text" "cannot open" tokenize --tokenizer "$LLAMA3" --text "$TMP/no-such.txt"

# --- generate ------------------------------------------------------------------
# Greedy and sampled text of stories260K as llama2.c run.c prints it (its
# outputs are committed in tests/data/reference/, with their commands in
# reference-values.json), and --json's members.
S260=tests/data/stories260K-hf
check_generate() {
    local name=$1 want=$2
    shift 2
    if "$ENGINE" generate --model "$S260" "$@" >"$TMP/out" 2>"$TMP/err" && [ ! -s "$TMP/err" ] &&
        cmp -s "$TMP/out" "$want"; then
        pass
    else
        fail "$name: output differs from $want: $(head -c 300 "$TMP/out") $(cat "$TMP/err")"
    fi
}
check_generate "generate greedy 256 (run.c -t 0)" tests/data/reference/stories260K.run_c.greedy256.txt \
    --prompt '' --max-tokens 256
check_generate "generate greedy, prompt (run.c -t 0 -n 100 -i ...)" \
    tests/data/reference/stories260K.run_c.greedy100.once_upon_a_time.txt --prompt 'Once upon a time' --max-tokens 96
check_generate "generate sampled (run.c -t 1.0 -p 0.9 -s 133742)" \
    tests/data/reference/stories260K.run_c.t1.0_p0.9_s133742.txt --prompt '' --temperature 1 --top-p 0.9 --seed 133742
"$ENGINE" generate --model "$S260" --prompt 'Once upon a time' --max-tokens 4 --json >"$TMP/out" 2>"$TMP/err"
line=$(cat "$TMP/out")
want='^\{"model":"tests/data/stories260K-hf","text":"Once upon a time, there was a","ids":\[1,403,407,261,378,432,383,286,261\],"prompt_tokens":5,"generated_tokens":4,"finish":"length",'
[[ $line =~ $want ]] && pass || fail "generate --json: $line $(cat "$TMP/err")"
expect_fail "generate: no --prompt" "generate needs --model and --prompt" generate --model "$S260"
expect_fail "generate: bad --top-p" "--top-p '1.5' must be a number in [0, 1]" generate --model "$S260" --prompt x --top-p 1.5
expect_fail "generate: seed 0" "--seed '0' must be an integer" generate --model "$S260" --prompt x --seed 0
expect_fail "generate: missing model" "no-such-model" generate --model "$TMP/no-such-model" --prompt x
expect_fail "generate: empty prompt, no BOS" "the prompt is empty" generate --model "$S260" --prompt '' --no-bos

echo "engine_cli: $checks checks passed, $failures failed"
[ "$failures" -eq 0 ]
