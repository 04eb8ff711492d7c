#!/usr/bin/env bash
# test_sweep: `svdllmctl sweep` through the real daemon on the bundled
# tinystories-656K model, the way a person would run it.
#
#   tests/test_sweep.sh PATH/svdllmd PATH/svdllmctl      (run from the source root)
#
# Starts svdllmd in a mkdtemp directory (waits for READY=1 on --ready-fd),
# then: usage errors and an unknown method or a bad evaluation text are
# refused before any job is queued; a 2 methods x 2 ratios sweep ends 0 with
# its table, sweep.json and SVG, whose numbers must agree with each other,
# with the jobs' status (submitted without eval_text: the original is not
# re-evaluated per job) and with an independent `svdllmctl eval` of each
# output and of the original; a sweep whose second submit is refused
# (`exists`) cancels the job it had already queued; a rerun with
# --overwrite --json prints one JSON object with the same perplexity (same
# seed, same output). The daemon must still answer and its log, like
# svdllmctl's stderr, must hold no sanitizer report.
set -u
SVDLLMD=${1:?usage: test_sweep.sh PATH/svdllmd PATH/svdllmctl}
CTL=${2:?usage: test_sweep.sh PATH/svdllmd PATH/svdllmctl}
MODEL=$PWD/tests/data/tinystories-656K
TEXT=$PWD/tests/data/text/tinystories-valid-head.txt
[ -f "$MODEL/model.safetensors" ] || { echo "run from the source root (no $MODEL)" >&2; exit 1; }
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

T=$(mktemp -d "${TMPDIR:-/tmp}/svdllm-sweep.XXXXXX") || exit 1
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

checks=0 failures=0
fail() { failures=$((failures + 1)); echo "FAIL: $*" >&2; }
check() { # description, command...
    local what=$1; shift
    checks=$((checks + 1))
    if "$@"; then :; else fail "$what"; fi
}
sanitizer_clean() { ! grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$@"; }

# ---- The daemon --------------------------------------------------------------------------
mkfifo "$T/ready"
"$SVDLLMD" --socket "$T/s.sock" --state-dir "$T/state" --log-level info 3>"$T/ready" --ready-fd 3 2>"$T/daemon.log" &
pid=$!
if ! read -r -t 60 line <"$T/ready" || [ "$line" != READY=1 ]; then
    echo "svdllmd did not become ready:" >&2; cat "$T/daemon.log" >&2; exit 1
fi
ctl() { "$CTL" --socket "$T/s.sock" "$@"; }
head -c 100000 "$TEXT" >"$T/calib.txt"
head -c 300000 "$TEXT" | tail -c 100000 >"$T/eval.txt"
COMMON=(--calib "$T/calib.txt" --nsamples 16 --seqlen 64 --eval-max-windows 8)
n_jobs() { ctl --json list | "$PY" -c 'import json, sys; print(len(json.loads(sys.stdin.read())["jobs"]))'; }

# ---- Refused before anything runs --------------------------------------------------------
expect() { # want-rc, stderr needle, args...
    local want=$1 needle=$2; shift 2
    ctl sweep "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    [ "$rc" = "$want" ] || { echo "exit $rc, want $want: $(cat "$T/err")" >&2; return 1; }
    grep -q -F -- "$needle" "$T/err" || { echo "stderr lacks '$needle': $(cat "$T/err")" >&2; return 1; }
    sanitizer_clean "$T/err"
}
check "sweep without --model" expect 2 "--model DIR is required" --methods svdllm --ratios 0.2 --eval-text "$T/eval.txt"
check "sweep without --ratios" expect 2 "--ratios LIST is required" --model "$MODEL" --methods svdllm --eval-text "$T/eval.txt"
check "ratio out of range" expect 2 "--ratios: 1.5 is not in (0, 1)" --model "$MODEL" --methods svdllm --ratios 0.2,1.5 --eval-text "$T/eval.txt"
check "repeated method" expect 2 "--methods: 'rom' given twice" --model "$MODEL" --methods rom,rom --ratios 0.2 --eval-text "$T/eval.txt"
check "option of no command" expect 2 "unknown option '--text'" --model "$MODEL" --methods rom --ratios 0.2 --text x
check "sweep --help" bash -c '"$1" sweep --help | grep -q -- "--methods LIST"' _ "$CTL"
check "help sweep" bash -c '"$1" help sweep | grep -q -- "--ratios LIST"' _ "$CTL"
check "no daemon: exit 3, nothing queued" bash -c '"$1" --socket "$2/none.sock" sweep --model "$3" --methods svdllm \
    --ratios 0.2 --eval-text x 2>&1 >/dev/null | grep -q "cannot connect"; test "${PIPESTATUS[0]}" = 3' _ "$CTL" "$T" "$MODEL"
check "unknown method (asked of the daemon)" expect 2 "--methods: unknown method 'nope' (svdllmd accepts svd," \
    --model "$MODEL" --methods svdllm,nope --ratios 0.2 --eval-text "$T/eval.txt"
: >"$T/empty.txt"
check "empty evaluation text" expect 1 "--eval-text '$T/empty.txt'" \
    --model "$MODEL" --methods svdllm --ratios 0.2 --eval-text "$T/empty.txt" --out-dir "$T/never"
check "no job queued by the refusals" test "$(n_jobs)" = 0
check "no output directory made by the refusals" test ! -e "$T/never"

# ---- A 2 x 2 sweep -----------------------------------------------------------------------
ctl sweep --model "$MODEL" --methods svdllm,rom --ratios 0.6,0.3 --eval-text "$T/eval.txt" \
    --out-dir "$T/sw" "${COMMON[@]}" >"$T/table" 2>"$T/progress"
rc=$?
check "sweep exits 0 (stderr: $(tail -3 "$T/progress"))" test "$rc" = 0
check "svdllmctl stderr clean" sanitizer_clean "$T/progress"
cat "$T/table"
for row in "original " "svdllm          0.30" "svdllm          0.60" "rom             0.30" "rom             0.60"; do
    check "table row '$row'" grep -q -F -- "$row" "$T/table"
done
check "table's perplexity grid" grep -q -E "^perplexity +0\.30 +0\.60$" "$T/table"
check "outputs and reports" test -f "$T/sw/svdllm-0.3/compression.json" -a -f "$T/sw/rom-0.6/compression.json" \
    -a -f "$T/sw/sweep.json" -a -f "$T/sw/sweep.svg"

# Independent evaluations of the original and of each output.
ev() { ctl --json eval --model "$1" --text "$T/eval.txt" --seqlen 64 --max-windows 8; }
ev "$MODEL" >"$T/ev-original.json"
for o in svdllm-0.3 svdllm-0.6 rom-0.3 rom-0.6; do ev "$T/sw/$o" >"$T/ev-$o.json"; done
for id in 1 2 3 4; do ctl --json status "$id" >"$T/status-$id.json"; done
check "sweep.json, the SVG, the jobs and independent evals agree" "$PY" - "$T" <<'EOF'
import json, math, re, sys
import xml.etree.ElementTree as ET
T = sys.argv[1]
s = json.load(open(T + "/sw/sweep.json"))
errors = []
def want(cond, what):
    if not cond:
        errors.append(what)
runs = s["runs"]
want([(r["method"], r["ratio"]) for r in runs] == [("svdllm", 0.3), ("svdllm", 0.6), ("rom", 0.3), ("rom", 0.6)],
     "runs in method order, ratios ascending")
orig = s["original"]
ev0 = json.loads(open(T + "/ev-original.json").read())
want(abs(orig["ppl"] - ev0["ppl"]) <= 1e-9 * ev0["ppl"], "original ppl %r vs eval %r" % (orig["ppl"], ev0["ppl"]))
want(s["eval_windows"] == 8 and s["eval_seqlen"] == 64, "eval windows/seqlen")
for r in runs:
    name = "%s-%g" % (r["method"], r["ratio"])
    ev = json.loads(open(T + "/ev-%s.json" % name).read())
    want(r["state"] == "done" and r["error"] is None, name + " done")
    want(r["out"] == T + "/sw/" + name, name + " out")
    want(abs(r["ppl"] - ev["ppl"]) <= 1e-9 * ev["ppl"], "%s ppl %r vs eval %r" % (name, r["ppl"], ev["ppl"]))
    want(r["ppl"] > orig["ppl"], name + " worse than the original")
    want(r["tokens_per_s"] > 0, name + " tokens/s")
    want(abs(r["kept_pct"] / (100.0 * r["params_after"] / r["params_before"]) - 1) < 1e-9, name + " kept_pct")
    want(r["params_before"] == orig["params"], name + " params_before")
    job = json.loads(open(T + "/status-%d.json" % r["job"]).read())["job"]
    want(job["out"] == r["out"] and job["method"] == r["method"] and job["ratio"] == r["ratio"], name + " job")
    want(not job.get("eval_text"), name + " job submitted without eval_text (the original is evaluated once)")
    want(job["result"]["params_after"] == r["params_after"], name + " params vs status")
    want(job["nsamples"] == 16 and job["seqlen"] == 64, name + " submit options passed through")
by = {(r["method"], r["ratio"]): r for r in runs}
for m in ("svdllm", "rom"):
    want(by[(m, 0.6)]["kept_pct"] < by[(m, 0.3)]["kept_pct"] < 100, m + " kept decreases with the ratio")
    want(by[(m, 0.6)]["ppl"] > by[(m, 0.3)]["ppl"], m + " perplexity grows with the ratio")
# The plot: one point per run at its perplexity, the original's mark.
NS = "{http://www.w3.org/2000/svg}"
root = ET.parse(T + "/sw/sweep.svg").getroot()
series = [g for g in root.iter(NS + "g") if g.get("class") == "series"]
want([g.get("data-name") for g in series] == ["svdllm", "rom"], "one line per method")
for g, m in zip(series, ("svdllm", "rom")):
    pts = sorted((float(c.get("data-x")), float(c.get("data-y"))) for c in g.iter(NS + "circle"))
    exp = sorted((by[(m, q)]["kept_pct"], by[(m, q)]["ppl"]) for q in (0.3, 0.6))
    want(len(pts) == 2 and all(abs(a - c) < 1e-6 * c and abs(b - d) < 1e-6 * d for (a, b), (c, d) in zip(pts, exp)),
         "%s points %r vs %r" % (m, pts, exp))
mark = [g for g in root.iter(NS + "g") if g.get("class") == "mark"]
want(len(mark) == 1 and float(mark[0].get("data-x")) == 100 and
     abs(float(mark[0].get("data-y")) - orig["ppl"]) < 1e-6 * orig["ppl"], "the original's point")
texts = {t.get("class"): "".join(t.itertext()) for t in root.iter(NS + "text")}
want(texts.get("x-label") == "decoder-linear parameters kept (%)", "x label")
want(texts.get("y-label", "").startswith("perplexity"), "y label")
if errors:
    print("\n".join(errors))
    sys.exit(1)
EOF

# ---- A refused submit cancels what the sweep had queued ----------------------------------
mkdir -p "$T/sw2/rom-0.3"
check "second submit refused" expect 1 "rom ratio 0.3: exists:" --model "$MODEL" --methods svdllm,rom --ratios 0.3 \
    --eval-text "$T/eval.txt" --out-dir "$T/sw2" "${COMMON[@]}"
check "it says how to replace" grep -q -F -- "--overwrite" "$T/err"
job_state() { ctl --json status "$1" | "$PY" -c 'import json, sys; print(json.loads(sys.stdin.read())["job"]["state"])'; }
state=
for _ in $(seq 120); do
    state=$(job_state 5)
    [ "$state" = cancelled ] && break
    sleep 0.5
done
check "the svdllm job it had queued is cancelled (state $state)" test "$state" = cancelled
check "no other job queued" test "$(n_jobs)" = 5

# ---- --overwrite --json: one JSON object, the same result --------------------------------
ctl --json sweep --model "$MODEL" --methods svdllm --ratios 0.3 --eval-text "$T/eval.txt" --out-dir "$T/sw" \
    --overwrite "${COMMON[@]}" >"$T/json" 2>"$T/progress2"
rc=$?
check "rerun exits 0 ($(tail -2 "$T/progress2"))" test "$rc" = 0
check "--json prints one object equal in result to the first run" "$PY" - "$T" <<'EOF'
import json, sys
T = sys.argv[1]
lines = open(T + "/json").read().splitlines()
assert len(lines) == 1, "%d lines on stdout" % len(lines)
o = json.loads(lines[0])
r = o["runs"][0]
assert len(o["runs"]) == 1 and r["state"] == "done", o["runs"]
ev = json.loads(open(T + "/ev-svdllm-0.3.json").read())
assert abs(r["ppl"] - ev["ppl"]) <= 1e-9 * ev["ppl"], (r["ppl"], ev["ppl"])
assert o["submit"]["overwrite"] is True and o["submit"]["nsamples"] == 16, o["submit"]
EOF

check "daemon still answers" bash -c '"$1" --socket "$2" ping >/dev/null' _ "$CTL" "$T/s.sock"
kill "$pid"; wait "$pid"; pid=
check "daemon log has no sanitizer report" sanitizer_clean "$T/daemon.log"
echo "test_sweep: $checks checks, $failures failed"
[ "$failures" = 0 ]
