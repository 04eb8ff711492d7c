#!/usr/bin/env bash
# One decoder layer at LLaMA-7B shapes through the real daemon: where the
# time goes, against what BLIS can do on this machine in the same run.
#
#   bench/layer7b.sh [--quick] [--nsamples N] [--methods LIST] [--keep DIR] [--no-rss]
#                    [--build DIR] [--no-build]
#
#   --quick       hidden 2048, ffn 5504, 16 heads (a smoke run of a few minutes)
#   --nsamples N  calibration windows of 128 tokens (default 32; 512 is the
#                 ROM paper's setting)
#   --methods L   comma-separated, default svdllm,svdllm-update,rom (svdllm
#                 always runs: the others are compared with it)
#   --keep DIR    work in DIR and keep it (models, ids, every job's output and
#                 daemon log); models already in DIR with the same shape are reused
#   --no-rss      skip the 4-layer svdllm job (the peak-RSS check)
#   --build DIR   build directory (default ./build); --no-build: do not run ninja
#
# What it does. svdllm-genmodel writes a BF16 model with hidden 4096, ffn
# 11008, 32 heads, 32 kv heads, vocab 4096 (the head is not part of the job)
# and --spectrum-decay 0.5 (singular values ~ (i+1)^-0.5, as pretrained
# LLaMA matrices roughly decay; Gaussian weights have a flat spectrum), one
# layer, and a 4-layer variant. Calibration: N windows of 128 uniform random
# ids with BOS = 1 first (little-endian int32, a .i32 file). Each job gets a
# FRESH svdllmd (own socket and state directory), one
#   svdllmctl submit --method M --ratio 0.4 --calib ids.i32 --nsamples N
#                    --seqlen 128 --calib-windows first
# and `svdllmctl watch`; measured: wall time from submit to the end of watch,
# the daemon's peak RSS (VmHWM just before it is stopped), and the CPU time
# of every OTHER process over the same interval: the sum of utime + stime
# over /proc/*/stat outside the daemon's and this script's process trees
# ("procs"; it misses every process that ends within the interval, e.g. a
# test suite, and has undercounted 14x), and the VM's busy time from
# /proc/stat minus ours ("VM other", which misses nothing, kernel threads
# included), with the hypervisor's steal time. On two cores the timings
# swing 10x when anything else runs, so these are printed with every job.
#
# The phase table of each job comes from its compression.json: "timing"
# (calibration_forward, statistics, factorize, write, assemble, eval, total,
# tokens, passes; sums over layers) and per matrix "seconds" and "gflop".
# GFLOP counted:
#   forward      passes x (2 x tokens x P + 4 x B x T^2 x hidden), P = the
#                parameters of a layer's seven linears, the second term the
#                full T x T attention products (QK^T, PV) the code computes,
#                B windows of T tokens. Exact when every pass is a whole dense
#                layer (passes = layers: svdllm and the other one-pass
#                methods). rom's and svdllm-update's extra passes stop early
#                and run compressed matrices, which compression.json does not
#                describe: their forward GFLOP is left out (a note gives the
#                dense bound), unless "timing" has a "forward_gflop";
#   statistics   layers x tokens x the Grams' n^2 (syrk, n^2 per token):
#                svdllm, each matrix's output covariance where d_out <= d_in
#                (q, k, v, o, down) and the MLP input's Gram (gate/up); rom,
#                its four stages' (attention input, o_proj input, MLP input,
#                down_proj output, on the compressed model); svdllm-update
#                is svdllm's plus, per matrix of rank k,
#                tokens x (2 d_in k + k^2 + 2 d_out k) for Z = X'B^T, Z^T Z
#                and Y^T Z;
#   q .. down    the matrix's "gflop" in compression.json (the double-precision
#                work of its factorization, summed over layers); if absent,
#                4/3 n^3 + 2 n^2 k with n = min(d_out, d_in), k = max.
# floor = GFLOP / the BLIS rate measured by bench_gemm in this run on the
# job's thread count (best of the runs before and after the jobs, each best of
# 3): sgemm at (min(tokens, 4096), ffn, hidden) for the forward, sgemm at
# (hidden, hidden, 256) (the Gram chunk) for the statistics, dgemm at
# (hidden, hidden, hidden) for the factorizations (they are double).
# ratio = seconds / floor: 1 would be every flop at GEMM speed. When matrices
# are factored side by side their seconds overlap: the "factorize (phase)"
# row (the phase's seconds, all seven matrices' GFLOP) is then the one to read.
# All jobs run one copy of svdllmd taken at the start (its sha256 and the
# source revision are printed), so a rebuild meanwhile does not mix binaries.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$src/build
quick=0 nsamples=32 methods=svdllm,svdllm-update,rom keep='' rss=1 dobuild=1
usage() { sed -n '5,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --nsamples) nsamples=${2:?}; shift ;;
    --methods) methods=${2:?}; shift ;;
    --keep) keep=${2:?}; shift ;;
    --no-rss) rss=0 ;;
    --build) build=${2:?}; shift ;;
    --no-build) dobuild=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "layer7b: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case $nsamples in '' | *[!0-9]* | 0*) echo "layer7b: --nsamples must be a positive integer" >&2; exit 2 ;; esac
IFS=, read -r -a mlist <<<"$methods"
jobs=(svdllm)
for m in "${mlist[@]}"; do
    case $m in
    svdllm) ;;
    svd | asvd | awsvd | svdllm-update | rom | lorap) jobs+=("$m") ;;
    *) echo "layer7b: unknown method '$m'" >&2; exit 2 ;;
    esac
done

if [ $quick = 1 ]; then hidden=2048 ffn=5504 heads=16; else hidden=4096 ffn=11008 heads=32; fi
kv=$heads vocab=4096 seqlen=128 ratio=0.4 decay=0.5

if [ $dobuild = 1 ]; then
    [ -f "$build/build.ninja" ] || meson setup "$build" "$src" >/dev/null
    ninja -C "$build" svdllmd svdllmctl svdllm-genmodel bench_gemm >/dev/null
fi
for b in svdllmd svdllmctl svdllm-genmodel bench_gemm; do
    [ -x "$build/$b" ] || { echo "layer7b: $build/$b is missing (build it first)" >&2; exit 1; }
done

# Sockets live in a short private directory (sun_path is 108 bytes).
run=$(mktemp -d /tmp/layer7b.XXXXXX)
if [ -n "$keep" ]; then
    mkdir -p "$keep"
    work=$(cd "$keep" && pwd)
else
    work=$run
fi
daemon=
cleanup() {
    if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

helper=$run/helper.py
cat >"$helper" <<'PY'
import json, os, sys

def snap(out, daemon_pid, self_pid):
    procs = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                s = f.read()
        except OSError:
            continue
        f = s[s.rindex(')') + 2:].split()
        # after the name: state ppid ... utime(11) stime cutime cstime ... starttime(19)
        procs[d] = [int(f[1]), int(f[19]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14])]
    with open('/proc/stat') as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    json.dump({'procs': procs, 'cpu': cpu, 'clk': os.sysconf('SC_CLK_TCK'),
               'daemon': int(daemon_pid), 'self': int(self_pid)}, open(out, 'w'))

def tree(procs, roots):
    kids = {}
    for pid, p in procs.items():
        kids.setdefault(str(p[0]), []).append(pid)
    seen, todo = set(), [str(r) for r in roots]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += kids.get(p, [])
    return seen

def other(before, after):
    a, b = json.load(open(before)), json.load(open(after))
    clk = float(a['clk'])
    roots = [a['daemon'], a['self']]
    mine = tree(a['procs'], roots) | tree(b['procs'], roots)
    oth = own = 0
    for pid, p in b['procs'].items():
        q = a['procs'].get(pid)
        if q and q[1] != p[1]:
            q = None  # the pid was reused
        if pid in mine:  # with the children it reaped (svdllmctl, python)
            own += max(p[2] + p[3] - (q[2] + q[3] if q else 0), 0)
        else:  # utime + stime only: a reaped child's cutime may predate the interval
            oth += max(p[2] - (q[2] if q else 0), 0)
    # /proc/stat: user nice system idle iowait irq softirq steal
    ca, cb = a['cpu'], b['cpu']
    busy = sum(cb[i] - ca[i] for i in (0, 1, 2, 5, 6))
    steal = cb[7] - ca[7] if len(cb) > 7 else 0
    dpid = str(a['daemon'])
    dcpu = b['procs'][dpid][2] - a['procs'][dpid][2] if dpid in a['procs'] and dpid in b['procs'] else 0
    # other_cpu_s misses processes that ended within the interval; machine_other_s
    # (all busy time of the VM minus ours, kernel threads included) does not.
    print(json.dumps({'other_cpu_s': oth / clk, 'machine_other_s': (busy - own) / clk,
                      'steal_s': steal / clk, 'daemon_cpu_s': dcpu / clk}))

def fmt(x, spec):
    return '-' if x is None else format(x, spec)

def report(meta_path):
    M = json.load(open(meta_path))
    h, f, nh, kvh = M['hidden'], M['ffn'], M['heads'], M['kv_heads']
    hd = h // nh
    qd, kd = nh * hd, kvh * hd
    shapes = {'q_proj': (qd, h), 'k_proj': (kd, h), 'v_proj': (kd, h), 'o_proj': (h, qd),
              'gate_proj': (f, h), 'up_proj': (f, h), 'down_proj': (h, f)}
    P = sum(o * i for o, i in shapes.values())
    rate = M['rates']
    print()
    print('layer7b: %s (source %s); hidden %d, ffn %d, %d heads / %d kv heads, BF16, --spectrum-decay %g; '
          '%d x %d calibration tokens, ratio %g' % (M['date'], M.get('rev', '?'), h, f, nh, kvh, M['decay'],
                                                    M['nsamples'], M['seqlen'], M['ratio']))
    print('BLIS in this run (GFLOP/s, best of before/after the jobs): sgemm %s %.1f, sgemm %s %.1f, dgemm %s %.1f'
          % (rate['fwd_shape'], rate['fwd'], rate['stat_shape'], rate['stat'], rate['fac_shape'], rate['fac']))
    summary, notes = [], []
    for job in M['jobs']:
        cj = json.load(open(job['report']))
        t = cj.get('timing', {})
        mats = cj.get('matrices', {})
        tok, passes = t.get('tokens', M['nsamples'] * M['seqlen']), t.get('passes', 0)
        layers = job['layers']
        rows = []  # (name, seconds, GFLOP, GFLOP/s of the floor, is a matrix)
        full = 2.0 * tok * P + 4.0 * M['nsamples'] * M['seqlen'] ** 2 * h  # one dense layer pass
        if t.get('forward_gflop') is not None:  # the engine's own count, when it reports one
            g = t['forward_gflop']
        elif passes == layers:  # one whole dense pass per layer: exact
            g = passes * full / 1e9
        else:  # partial passes of partly compressed layers: only a bound
            g = None
            notes.append('%s: forward GFLOP not in compression.json; %d dense passes would be %.0f, an upper '
                         'bound' % (job['method'], passes, passes * full / 1e9))
        rows.append(('calibration forward', t.get('calibration_forward'), g, rate['fwd'], 0))
        if job['method'] == 'rom':  # the four Grams of its stages, on the compressed model
            g = layers * tok * (3.0 * h * h + qd * qd)
        else:  # svdllm: each matrix's own output covariance where d_out <= d_in, else its input's Gram
            groups = {'q_proj': 0, 'k_proj': 0, 'v_proj': 0, 'o_proj': 1, 'gate_proj': 2, 'up_proj': 2,
                      'down_proj': 3}
            ins = {groups[name]: di for name, (do, di) in shapes.items() if do > di}
            g = layers * tok * (sum(float(do) * do for do, di in shapes.values() if do <= di) +
                                sum(float(di) * di for di in ins.values()))
        if job['method'] == 'svdllm-update':  # per matrix Z = X' B^T, Z^T Z (syrk), Y^T Z
            for key, e in mats.items():
                for name, (do, di) in shapes.items():
                    if key.endswith('.' + name) and isinstance(e, dict) and e.get('rank'):
                        k = e['rank']
                        g += tok * (2.0 * di * k + k * k + 2.0 * do * k)
        elif job['method'] not in ('svdllm', 'rom'):
            g = None
        rows.append(('statistics', t.get('statistics'), g / 1e9 if g is not None else None, rate['stat'], 0))
        for name, (do, di) in shapes.items():
            secs = gfl = None
            for key, e in mats.items():
                if key.endswith('.' + name) and isinstance(e, dict) and 'seconds' in e and 'rank' in e:
                    secs = (secs or 0) + e['seconds']
                    if 'gflop' in e:
                        gfl = (gfl or 0) + e['gflop']
                    else:
                        n, k = min(do, di), max(do, di)
                        gfl = (gfl or 0) + (4.0 / 3 * n ** 3 + 2.0 * n * n * k) / 1e9
            rows.append((name.replace('_proj', ''), secs, gfl, rate['fac'], 1))
        rows.append(('write', t.get('write'), None, None, 0))
        if t.get('assemble'):
            rows.append(('assemble', t.get('assemble'), None, None, 0))
        if t.get('eval'):
            rows.append(('eval', t.get('eval'), None, None, 0))
        known = sum(r[1] for r in rows if r[1] is not None and not r[4]) + (t.get('factorize') or 0)
        print()
        print('%s, %d layer%s (%d layer pass%s over %d calibration tokens)' % (job['method'], layers,
              '' if layers == 1 else 's', passes, '' if passes == 1 else 'es', tok))
        print('  %-20s %9s %9s %9s %9s %7s' % ('phase', 's', 'GFLOP', 'GFLOP/s', 'floor s', 'ratio'))
        fsum = 0.0
        fs = sum(r[1] for r in rows if r[4] and r[1] is not None)
        for i, (name, s, g, r, mat) in enumerate(rows):
            fl = g / r if g is not None and r else None
            fsum += fl or 0
            gs = g / s if g is not None and s else None
            ra = s / fl if s is not None and fl else None
            print('  %-20s %9s %9s %9s %9s %7s' % (name, fmt(s, '.2f'), fmt(g, '.1f'), fmt(gs, '.1f'),
                                                  fmt(fl, '.2f'), fmt(ra, '.1f')))
            if mat and not rows[i + 1][4] and t.get('factorize') is not None:
                # The phase, with the seven matrices' work: their seconds may
                # overlap (two factored side by side), the phase's do not.
                fg = sum(r[2] for r in rows if r[4] and r[2] is not None)
                ff, sf = fg / rate['fac'], t['factorize']
                print('  %-20s %9.2f %9.1f %9s %9.2f %7s   (the matrices\' seconds sum to %.2f)' %
                      ('factorize (phase)', sf, fg, fmt(fg / sf if sf else None, '.1f'), ff,
                       fmt(sf / ff if ff else None, '.1f'), fs))
        total = t.get('total')
        if any(r[2] is None and r[3] for r in rows):
            fsum = None  # a phase without a GFLOP count: no floor for the job
        if total is not None:
            print('  %-20s %9.2f %29s %7s' % ('job total', total, fmt(fsum, '.2f'),
                                              fmt(total / fsum if fsum else None, '.1f')))
            print('  %-20s %9.2f' % ('not in a phase', total - known))
        print('  wall %.1f s (submit to watch end); peak RSS %.2f GiB; %s threads; daemon %.1f CPU s' %
              (job['wall'], job['rss_kb'] / 1048576.0, cj.get('threads', '?'), job['daemon_cpu_s']))
        print('  other CPU use meanwhile: %.1f CPU s of the VM outside this benchmark (/proc/stat); %.1f CPU s '
              'by /proc/*/stat of the processes alive at the end; steal %.1f s' %
              (job['machine_other_s'], job['other_cpu_s'], job['steal_s']))
        summary.append((job, cj))
    base = [j for j, _ in summary if j['method'] == 'svdllm' and j['layers'] == 1]
    bw = base[0]['wall'] if base else None
    print()
    print('summary (1 layer):')
    print('  %-14s %9s %9s %9s %12s %12s' % ('method', 'wall s', 'x svdllm', 'RSS GiB', 'procs CPU s', 'VM other s'))
    for j, _ in summary:
        if j['layers'] != 1:
            continue
        print('  %-14s %9.1f %9s %9.2f %12.1f %12.1f' % (j['method'], j['wall'], fmt(j['wall'] / bw if bw else None, '.2f'),
                                                        j['rss_kb'] / 1048576.0, j['other_cpu_s'], j['machine_other_s']))
    for n in notes:
        print('  note: ' + n)
    four = [j for j, _ in summary if j['layers'] > 1]
    if four and base:
        j = four[0]
        print('  RSS check: svdllm on %d layers peaks at %.2f GiB, %.2fx the 1-layer job (%.2f GiB); wall %.1f s'
              % (j['layers'], j['rss_kb'] / 1048576.0, j['rss_kb'] / base[0]['rss_kb'],
                 base[0]['rss_kb'] / 1048576.0, j['wall']))

cmd = sys.argv[1]
if cmd == 'snap':
    snap(*sys.argv[2:5])
elif cmd == 'other':
    other(*sys.argv[2:4])
elif cmd == 'report':
    report(sys.argv[2])
elif cmd == 'ids':  # ids OUT NSAMPLES SEQLEN VOCAB: BOS = 1, then uniform ids in [3, VOCAB)
    import random, struct
    out, n, t, v = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    random.seed(7)
    ids = []
    for _ in range(n):
        ids += [1] + [random.randrange(3, v) for _ in range(t - 1)]
    open(out, 'wb').write(struct.pack('<%di' % len(ids), *ids))
elif cmd == 'rates':  # rates FILE...: best GFLOP/s per (type, shape) over bench_gemm outputs
    best = {}
    for path in sys.argv[2:]:
        for line in open(path):
            w = line.split()
            if len(w) == 8 and w[0] == 'gemm':
                k = '%s %s' % (w[1], 'x'.join(w[2:5]))
                best[k] = max(best.get(k, 0.0), float(w[6]))
    print(json.dumps(best))
PY

started=$(date '+%F %T %Z')
echo "layer7b: $started; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "layer7b: work directory $work"
# Every job runs the same copy of the binaries: the build directory may be
# rebuilt while the benchmark runs.
bin=$run/bin
mkdir -p "$bin"
cp -p "$build/svdllmd" "$build/svdllmctl" "$bin/"
rev=$(git -C "$src" describe --always --dirty 2>/dev/null || echo unknown)
echo "layer7b: svdllmd $(sha256sum "$bin/svdllmd" | cut -c1-12) (sha256), built $(date -r "$bin/svdllmd" '+%F %T'), source $rev"

# ---- models ------------------------------------------------------------------
genmodel() { # dir layers
    local dir=$1 layers=$2
    local stamp="hidden=$hidden ffn=$ffn heads=$heads kv=$kv vocab=$vocab layers=$layers decay=$decay dtype=bf16 seed=0"
    if [ -f "$dir/config.json" ] && [ -f "$dir/model.safetensors" ] && [ "$(cat "$dir/.layer7b" 2>/dev/null)" = "$stamp" ]; then
        echo "layer7b: reusing $dir"
        return
    fi
    local t0=$SECONDS
    "$build/svdllm-genmodel" --out "$dir" --hidden $hidden --layers "$layers" --heads $heads --kv-heads $kv \
        --ffn $ffn --vocab $vocab --dtype bf16 --max-pos 2048 --spectrum-decay $decay
    echo "$stamp" >"$dir/.layer7b"
    echo "layer7b: generated $dir ($layers layer(s)) in $((SECONDS - t0)) s"
}
genmodel "$work/model-1L" 1
[ $rss = 1 ] && genmodel "$work/model-4L" 4
ids=$work/calib-$nsamples.i32
python3 "$helper" ids "$ids" "$nsamples" $seqlen $vocab

# ---- BLIS rates, before the jobs (and again after) ---------------------------
threads=$(nproc)
tok=$((nsamples * seqlen))
m=$((tok < 4096 ? tok : 4096))
gemm() { # out
    "$build/bench_gemm" --threads "$threads" --type s $m $ffn $hidden $hidden $hidden 256 >"$1"
    "$build/bench_gemm" --threads "$threads" --type d $hidden $hidden $hidden >>"$1"
}
gemm "$work/gemm-before.txt"
sed 's/^/layer7b: /' "$work/gemm-before.txt"

# ---- jobs: a fresh daemon each -------------------------------------------------
joblist=() failed=()
runjob() { # name method model layers
    local name=$1 method=$2 model=$3 layers=$4
    local jd=$work/jobs/$name sock=$run/$name.sock
    rm -rf "$jd"
    mkdir -p "$jd"
    "$bin/svdllmd" --socket "$sock" --state-dir "$jd/state" --log-level notice 2>"$jd/daemon.log" &
    daemon=$!
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    [ -S "$sock" ] || { echo "layer7b: svdllmd did not start (see $jd/daemon.log)" >&2; exit 1; }
    local ctl=("$bin/svdllmctl" --socket "$sock")
    python3 "$helper" snap "$jd/cpu-before.json" "$daemon" $$
    local t0 t1 id
    t0=$(date +%s.%N)
    id=$("${ctl[@]}" submit --model "$model" --out "$jd/out" --method "$method" --ratio $ratio --calib "$ids" \
        --nsamples "$nsamples" --seqlen $seqlen --calib-windows first)
    if ! "${ctl[@]}" watch "$id" >"$jd/watch.txt" 2>&1; then
        # Report the others anyway (a long run should not lose them to one job).
        tail -n 2 "$jd/watch.txt" "$jd/daemon.log" | sed 's/^/layer7b:   /' >&2
        echo "layer7b: job $name failed (files in $jd); the table leaves it out" >&2
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        daemon=
        failed+=("$name")
        return 0
    fi
    t1=$(date +%s.%N)
    python3 "$helper" snap "$jd/cpu-after.json" "$daemon" $$
    local hwm
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$daemon/status")
    "${ctl[@]}" status "$id" >"$jd/status.txt" 2>&1 || true
    kill "$daemon"
    wait "$daemon" 2>/dev/null || true
    daemon=
    local cpu
    cpu=$(python3 "$helper" other "$jd/cpu-before.json" "$jd/cpu-after.json")
    python3 - "$jd/job.json" "$name" "$method" "$layers" "$id" "$t0" "$t1" "$hwm" "$jd/out/compression.json" "$cpu" <<'PY'
import json, sys
out, name, method, layers, jid, t0, t1, hwm, rep, cpu = sys.argv[1:]
d = {'name': name, 'method': method, 'layers': int(layers), 'id': jid, 'wall': float(t1) - float(t0),
     'rss_kb': int(hwm), 'report': rep}
d.update(json.loads(cpu))
json.dump(d, open(out, 'w'))
PY
    printf 'layer7b: %-14s %d layer(s): %s s wall, peak RSS %s kB, CPU seconds %s\n' "$method" "$layers" \
        "$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")" "$hwm" "$cpu"
    joblist+=("$jd/job.json")
}
for meth in "${jobs[@]}"; do
    runjob "$meth-1L" "$meth" "$work/model-1L" 1
done
[ $rss = 1 ] && runjob "svdllm-4L" svdllm "$work/model-4L" 4

gemm "$work/gemm-after.txt"
sed 's/^/layer7b: /' "$work/gemm-after.txt"
[ ${#joblist[@]} -gt 0 ] || { echo "layer7b: no job finished" >&2; exit 1; }

# ---- the table -------------------------------------------------------------------
python3 - "$work/meta.json" "$helper" "$work/gemm-before.txt" "$work/gemm-after.txt" "${joblist[@]}" <<PY
import json, subprocess, sys
out, helper, gb, ga = sys.argv[1:5]
best = json.loads(subprocess.check_output([sys.executable, helper, 'rates', gb, ga]))
fwd, stat, fac = 'sgemm ${m}x${ffn}x${hidden}', 'sgemm ${hidden}x${hidden}x256', 'dgemm ${hidden}x${hidden}x${hidden}'
meta = {'date': '$started', 'rev': '$rev', 'hidden': $hidden, 'ffn': $ffn, 'heads': $heads, 'kv_heads': $kv,
        'decay': $decay, 'nsamples': $nsamples, 'seqlen': $seqlen, 'ratio': $ratio,
        'rates': {'fwd': best[fwd], 'stat': best[stat], 'fac': best[fac],
                  'fwd_shape': fwd.split()[1], 'stat_shape': stat.split()[1], 'fac_shape': fac.split()[1]},
        'jobs': [json.load(open(p)) for p in sys.argv[5:]]}
json.dump(meta, open(out, 'w'), indent=1)
PY
python3 "$helper" report "$work/meta.json" | tee "$work/table.txt"
if [ ${#failed[@]} -gt 0 ]; then
    echo "layer7b: failed: ${failed[*]}" >&2
    exit 1
fi
