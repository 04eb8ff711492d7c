#!/usr/bin/env bash
# The fault campaign: the real svdllmd under kill -9 at random moments, full
# disks, I/O errors, load and hostile peers; one line of a final table per
# scenario (scenario, runs, faults injected, passed, failed, notes). Exit 1 if
# any run failed, 0 otherwise (a scenario that cannot run here, e.g. tmpfs
# mounts without root, prints why and counts as skipped, not passed).
#
#   tests/campaign.sh [--long] [--build DIR] [--only LIST] [--seed N] [--keep]
#                     [--strict-latency]
#   tests/campaign.sh --svdllmd P --svdllmctl P --shim P --load-client P ...
#
# --long: rounds of the seven methods until >= 100 kills, every I/O case at
# every layer, the load three times; the quick form (the meson test
# 'campaign') runs one round (10 kills at least, usually 20-40). --only takes a
# comma list of kill,disk,io,load,peer. --seed fixes the kill times (printed
# either way). --keep leaves the work directory for a post-mortem.
# --strict-latency makes the load's p99 target (< 10 ms) a pass criterion.
#
# What each scenario expects (issue 10, deliverable 5):
#   kill   jobs of every method; kill -9 at a uniform time within the work
#          still expected, restart, repeat until every job is done. Every
#          output equals an uninterrupted reference run byte for byte
#          (compression.json without its wall-clock fields); after every kill
#          each committed layer row is still there, matches its file, and
#          that file was never rewritten (inode, mtime); layers_resumed is the
#          row count at the last interruption; PRAGMA integrity_check is ok
#          after every kill.
#   disk   state directory, then output, on a small tmpfs that fills in the
#          middle of a layer (of the assembly): the job ends failed, its
#          error names the file and the errno, the daemon answers ping and
#          status, committed checkpoints are intact, no OUT.tmp is left;
#          after `mount -o remount,size=...`, `svdllmctl resume ID` resumes
#          the job to identical output with the committed layers reused (a
#          restart does not retry a failed job; one whose final state could
#          not be recorded is still running in the database and the restart
#          resumes it).
#   io     the same expectations with tests/fault_shim.c (LD_PRELOAD) failing
#          one write/fsync/rename of a checkpoint, of the hidden states, of
#          the output, or SQLite's own WAL writes and syncs for good (ENOSPC
#          writes: a disk full during a commit; EIO syncs); "fixed" by a
#          restart without the shim, then resume. A WAL write or sync that
#          fails once is retried by the daemon after 1 s: that job must end
#          done, identical, with the retry logged.
#   load   64 clients x 1000 requests (status, list, ping, watch
#          subscribe/unsubscribe) plus idle, half-sent, malformed, oversize
#          and vanishing connections while a job runs (tests/load_client.c),
#          with max_clients, max_clients_per_uid and the timeouts set so that
#          all of them are legitimate: no well-formed request fails, every
#          malformed/oversize line is answered, the job's output is
#          unchanged, status p50/p99 printed (target p99 < 10 ms). Then, at
#          the default limits, one connection more than max_clients gets a
#          too_many_clients reply (or is served), never a bare close, and
#          (as root) a second uid over max_clients_per_uid (16) gets
#          too_many_clients naming that limit.
#   peer   a second real user (useradd; root only) cannot make the daemon
#          read what it cannot read, write or overwrite outside what it may
#          write (the state directory included), see root's paths in
#          status/list, or watch or cancel root's job; its own job works.
#
# Every daemon started is killed at exit, mounts are unmounted, the user is
# removed and the work directory deleted (trap). Progress goes to stderr.
set -u
set -o pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LONG=0
BUILD=""
ONLY="kill,disk,io,load,peer"
SEED=""
KEEP=0
STRICT_LATENCY=0
SVDLLMD="" SVDLLMCTL="" SHIM="" LOADC=""
while (($#)); do
    case "$1" in
    --long) LONG=1 ;;
    --build) BUILD=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --seed) SEED=$2; shift ;;
    --keep) KEEP=1 ;;
    --strict-latency) STRICT_LATENCY=1 ;;
    --svdllmd) SVDLLMD=$2; shift ;;
    --svdllmctl) SVDLLMCTL=$2; shift ;;
    --shim) SHIM=$2; shift ;;
    --load-client) LOADC=$2; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "campaign: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
[[ -z $BUILD && -z $SVDLLMD ]] && BUILD=$SRC/build
if [[ -n $BUILD ]]; then
    BUILD=$(cd "$BUILD" && pwd) || exit 2
    : "${SVDLLMD:=$BUILD/svdllmd}" "${SVDLLMCTL:=$BUILD/svdllmctl}"
    : "${SHIM:=$BUILD/libsvdllm_fault_shim.so}" "${LOADC:=$BUILD/load_client}"
fi
for f in "$SVDLLMD" "$SVDLLMCTL" "$SHIM" "$LOADC"; do
    [[ -f $f ]] || { echo "campaign: $f not found (build first: ninja -C build)" >&2; exit 2; }
done
SVDLLMD=$(realpath "$SVDLLMD") SVDLLMCTL=$(realpath "$SVDLLMCTL")
SHIM=$(realpath "$SHIM") LOADC=$(realpath "$LOADC")
command -v python3 >/dev/null || { echo "campaign: python3 is needed (store checks)" >&2; exit 2; }
[[ -z $SEED ]] && SEED=$(( $(date +%s) % 100000 ))
CHECK="python3 $SRC/tests/campaign/store_check.py"
MODEL=$SRC/tests/data/stories260K-hf
TEXT=$SRC/tests/data/text/tinystories-valid-head.txt
WIKI=$SRC/tests/data/text/wikitext-2-raw-v1-test.joined.txt
IS_ROOT=0; [[ $(id -u) == 0 ]] && IS_ROOT=1

if ((LONG)); then
    KILL_TARGET=100 KILL_ROUNDS=40 LOAD_REQUESTS=1000 LOAD_REPEAT=3
else
    KILL_TARGET=10 KILL_ROUNDS=8 LOAD_REQUESTS=1000 LOAD_REPEAT=1
fi
WAIT_S=120           # how long a job may take to reach its end state; set from
                     # the reference runs (a sanitizer build or a loaded
                     # machine makes them several times slower)

T=$(mktemp -d /tmp/svdllm-campaign.XXXXXX) || exit 2
chmod 0711 "$T"      # the peer user must reach its own directory below
T0=$(date +%s.%N)
# The machine's busy CPU ticks (/proc/stat: all but idle and iowait); at the
# end, minus the campaign's own (this shell and every child it waited for,
# daemons included), they say how much CPU other processes took meanwhile,
# since that moves every time and latency printed here.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
own_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{ print $12 + $13 + $14 + $15 }'; }
BUSY0=$(busy_ticks) OWN0=$(own_ticks)
MOUNTS=()
PEER_USER=""
DPIDS=()

log() { printf '[campaign %6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*" >&2; }

cleanup() {
    local p m i
    for p in "${DPIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
    done
    [[ -n $PEER_USER ]] && userdel "$PEER_USER" 2>/dev/null
    if ((KEEP)); then echo "campaign: work directory kept: $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the table ---------------------------------------------------------------------
ROWS=()
TOTAL_FAILED=0
# row SCENARIO RUNS FAULTS PASSED FAILED NOTES
row() {
    ROWS+=("$1|$2|$3|$4|$5|$6")
    TOTAL_FAILED=$((TOTAL_FAILED + $5))
    log "$1: runs $2, faults $3, passed $4, failed $5${6:+ - $6}"
}
print_table() {
    local r s n f p x notes
    printf '\n%-9s %5s %7s %7s %7s  %s\n' scenario runs faults passed failed notes
    printf '%-9s %5s %7s %7s %7s  %s\n' --------- ----- ------- ------- ------- -----
    for r in "${ROWS[@]}"; do
        IFS='|' read -r s n f p x notes <<<"$r"
        printf '%-9s %5s %7s %7s %7s  %s\n' "$s" "$n" "$f" "$p" "$x" "$notes"
    done
    local hz wall busy own
    hz=$(getconf CLK_TCK)
    wall=$(echo "$(date +%s.%N) - $T0" | bc)
    busy=$(( $(busy_ticks) - BUSY0 )) own=$(( $(own_ticks) - OWN0 ))
    printf '\nseed %s, %s form, %.0f s, svdllmd %s\n' "$SEED" "$( ((LONG)) && echo long || echo quick)" "$wall" "$SVDLLMD"
    printf 'CPU: the campaign used %.1f s, other processes %.1f s, of %.0f s (%d CPUs x wall time)\n' \
        "$(echo "$own / $hz" | bc -l)" "$(echo "($busy - $own) / $hz" | bc -l)" \
        "$(echo "$wall * $(nproc)" | bc -l)" "$(nproc)"
}

# ---- one daemon at a time: D_STATE D_SOCK D_LOG D_CONF, D_PID when running ----------
D_STATE="" D_SOCK="" D_LOG="" D_CONF="" D_PID=""
daemon_use() { D_STATE=$1 D_SOCK=$2 D_LOG=$3 D_CONF=${4:-}; mkdir -p "$D_STATE"; }

# daemon_start [--no-wait] [VAR=VALUE...]: starts svdllmd with those
# environment variables; waits for READY=1 on --ready-fd unless --no-wait.
# Must run in the main shell (not in $(...)) so that wait can reap it.
daemon_start() {
    local nowait=0
    [[ ${1:-} == --no-wait ]] && { nowait=1; shift; }
    local rf=$T/ready.$RANDOM$RANDOM
    : >"$rf"
    env "$@" "$SVDLLMD" --socket "$D_SOCK" --state-dir "$D_STATE" --ready-fd 3 --log-level info \
        --threads 1 ${D_CONF:+--config "$D_CONF"} 3>"$rf" 2>>"$D_LOG" </dev/null &
    D_PID=$!
    DPIDS+=("$D_PID")
    ((nowait)) && return 0
    local i
    for ((i = 0; i < 3000; i++)); do
        grep -q READY=1 "$rf" 2>/dev/null && return 0
        kill -0 "$D_PID" 2>/dev/null || { log "svdllmd exited before READY (log $D_LOG)"; D_PID=""; return 1; }
        sleep 0.02
    done
    log "svdllmd not ready within 60 s"
    return 1
}

daemon_kill9() {
    [[ -n $D_PID ]] || return 0
    kill -9 "$D_PID" 2>/dev/null
    wait "$D_PID" 2>/dev/null
    D_PID=""
}

# SIGTERM, up to 30 s, then SIGKILL; returns 0 only for a clean exit 0.
daemon_stop() {
    [[ -n $D_PID ]] || return 0
    kill -TERM "$D_PID" 2>/dev/null
    local i st=0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$D_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$D_PID" 2>/dev/null; then
        log "svdllmd $D_PID ignored SIGTERM for 30 s; SIGKILL"
        kill -9 "$D_PID"
        st=1
    fi
    wait "$D_PID" 2>/dev/null || st=1
    D_PID=""
    return $st
}

ctl() { timeout 120 "$SVDLLMCTL" --socket "$D_SOCK" "$@"; }
jget() { $CHECK get "$1"; }
job_json() { ctl --json status "$1" 2>/dev/null; }
job_state() { job_json "$1" | jget job.state; }
# Follows job to its end (at most WAIT_S s); prints the end state ('' on timeout).
job_wait() {
    timeout "$WAIT_S" "$SVDLLMCTL" --socket "$D_SOCK" --json watch "$1" >/dev/null 2>&1
    job_state "$1"
}
# joined DEFAULT NOTE...: the notes separated by " | " (DEFAULT when none).
joined() {
    local d=$1 out="" n
    shift
    for n in "$@"; do
        n=${n%"; "}
        out+="${out:+ | }$n"
    done
    echo "${out:-$d}"
}
# grouped DEFAULT "NAME: reason; reason; "...: each distinct reason once,
# followed by the names it applies to (paths under the work directory
# shortened, so that the same failure in two cases reads the same).
grouped() {
    local d=$1 item name reasons r key out=""
    shift
    local -A where=()
    local order=()
    for item in "$@"; do
        name=${item%%: *}
        reasons=${item#*: }
        while [[ -n $reasons ]]; do
            r=${reasons%%; *}
            [[ $r == "$reasons" ]] && reasons="" || reasons=${reasons#*; }
            r=${r%;}
            [[ -n ${r// /} ]] || continue
            key=$(sed -E "s#$T/[^ ']*\.tmp#OUT.tmp#g; s#$T/[^ ']*#WORK#g" <<<"$r")
            [[ -n ${where[$key]+x} ]] || order+=("$key")
            where[$key]+="${where[$key]:+, }$name"
        done
    done
    for key in "${order[@]}"; do out+="${out:+ | }$key [${where[$key]}]"; done
    echo "${out:-$d}"
}
sanitizer_clean() { ! grep -qE 'Sanitizer|runtime error:' "$1" 2>/dev/null; }
HAVE_RESUME=0
"$SVDLLMCTL" --help 2>&1 | grep -qE '^ +resume ' && HAVE_RESUME=1

# ---- jobs: one spec per method ---------------------------------------------------------
CALIB=$T/calib.txt
EVALT=$T/eval.txt
head -c 200000 "$TEXT" >"$CALIB"
head -c 30000 "$WIKI" >"$EVALT"
chmod 0644 "$CALIB" "$EVALT"
METHODS=(svd svdllm asvd awsvd svdllm-update rom lorap)
declare -A SPEC=(
    [svd]="--method svd --ratio 0.4 --eval-text $EVALT --eval-max-windows 4"
    [svdllm]="--method svdllm --ratio 0.4 --calib $CALIB --nsamples 32 --seqlen 128"
    [asvd]="--method asvd --ratio 0.4 --alpha 0.75 --calib $CALIB --nsamples 32 --seqlen 128"
    [awsvd]="--method awsvd --ratio 0.3 --calib $CALIB --nsamples 32 --seqlen 128"
    [svdllm-update]="--method svdllm-update --ranks auto --ratio 0.4 --calib $CALIB --nsamples 16 --seqlen 128"
    [rom]="--method rom --ratio 0.4 --calib $CALIB --nsamples 16 --seqlen 128 --eval-text $EVALT --eval-max-windows 4"
    [lorap]="--method lorap --ratio 0.4 --dense --calib $CALIB --nsamples 32 --seqlen 128"
    [load]="--method svdllm-update --ranks auto --ratio 0.4 --calib $CALIB --nsamples 128 --seqlen 128"
)
declare -A REF_SECONDS
T_READY=0.1
# submit SPECNAME OUT: prints the job id (empty on failure).
submit() {
    # shellcheck disable=SC2086
    ctl submit --model "$MODEL" --out "$2" ${SPEC[$1]} 2>>"$T/submit.err"
}

# ---- reference runs ----------------------------------------------------------------------

reference_runs() {
    local names=("${METHODS[@]}")
    [[ $ONLY == *load* ]] && names+=(load)
    log "reference runs (uninterrupted): ${names[*]}"
    daemon_use "$T/ref/state" "$T/ref/sock" "$T/ref/daemon.log"
    local t
    t=$(date +%s.%N)
    daemon_start || return 1
    T_READY=$(echo "$(date +%s.%N) - $t" | bc)
    local m id st
    for m in "${names[@]}"; do
        id=$(submit "$m" "$T/ref/$m")
        st=$( [[ -n $id ]] && job_wait "$id")
        if [[ $st != "done" ]]; then
            log "reference $m: '$st' (log $D_LOG): $(job_json "$id" | jget job.error)"
            daemon_stop
            return 1
        fi
        REF_SECONDS[$m]=$(job_json "$id" | jget job.result.seconds)
        log "reference $m: job $id done in ${REF_SECONDS[$m]} s"
    done
    daemon_stop
    # Room for a job 10x slower than its reference (other processes'
    # load comes and goes), at least 30 s: a timeout is a failure, so it
    # must not be a matter of the machine's mood.
    WAIT_S=$(printf '%s\n' "${REF_SECONDS[@]}" | awk 'BEGIN { w = 30 } { if ($1 * 10 + 10 > w) w = $1 * 10 + 10 } END { printf "%d", w }')
    log "a job may take up to $WAIT_S s to reach its end"
}

# rand_uniform MAX: sets RAND_T to a uniform time in [0, MAX), drawn from
# SEED and a counter (call it in this shell, not in $(...), or the counter
# would not advance).
rand_uniform() {
    RAND_N=$((RAND_N + 1))
    RAND_T=$(awk -v s="$SEED" -v n="$RAND_N" -v d="$1" 'BEGIN { srand(s * 7919 + n); printf "%.3f", rand() * d }')
}
RAND_N=0 RAND_T=0

# ---- kill -9 at random moments ------------------------------------------------------------
scenario_kill() {
    local dir=$T/kill
    mkdir -p "$dir"
    daemon_use "$dir/state" "$dir/sock" "$dir/daemon.log"
    local kills=0 late=0 rounds=0 jobs=0 passed=0 failed=0 checks=0 notes=() m id v st
    daemon_start || { row kill-9 0 0 0 1 "daemon did not start"; return; }
    while ((kills < KILL_TARGET && rounds < KILL_ROUNDS)); do
        rounds=$((rounds + 1))
        for m in "${METHODS[@]}"; do
            [[ -n $D_PID ]] || daemon_start || { notes+=("r$rounds $m: daemon did not start"); failed=$((failed + 1)); break 2; }
            local out=$dir/r$rounds-$m rows=0 seg=0 bad="" stretch=1 prev=0
            id=$(submit "$m" "$out")
            if [[ -z $id ]]; then
                notes+=("r$rounds $m: submit failed"); failed=$((failed + 1)); continue
            fi
            jobs=$((jobs + 1))
            while :; do
                # A uniform moment within the work still expected: start-up
                # plus the reference time of the layers not yet committed,
                # stretched by half after each kill that found no new layer
                # committed (work before layer 0, or after the last one, is
                # not in the row count; without the stretch a short job could
                # be killed forever before it gets there).
                local rem
                rem=$(echo "($T_READY + 0.05 + ${REF_SECONDS[$m]} * (5 - $rows) / 5) * $stretch" | bc -l)
                rand_uniform "$rem"
                sleep "$RAND_T"
                daemon_kill9
                seg=$((seg + 1))
                v=$($CHECK job "$D_STATE" "$id")
                st=$(jget state <<<"$v")
                checks=$((checks + 1))
                if [[ $st == "done" || $st == failed || $st == cancelled ]]; then
                    late=$((late + 1))
                else
                    kills=$((kills + 1))
                    rows=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["rows"]))' <<<"$v")
                    if ((rows > prev)); then stretch=1; else stretch=$(echo "$stretch * 1.5" | bc -l); fi
                    prev=$rows
                fi
                v=$($CHECK snap "$dir/snap-$id.json" "$D_STATE" "$id") || bad+="after kill $seg: $v; "
                v=$($CHECK integrity "$D_STATE") || bad+="integrity_check after kill $seg: $v; "
                [[ $st == "done" || $st == failed || $st == cancelled ]] && break
                if ((seg >= 40)); then bad+="40 kills and still '$st'; "; break; fi
                daemon_start --no-wait
            done
            # The final look: done, resumed from the last interruption's rows,
            # identical output, nothing redone.
            daemon_start || { bad+="daemon did not restart; "; }
            st=$(job_wait "$id")
            local j res
            j=$(job_json "$id")
            [[ $st == "done" ]] || bad+="ended '$st': $(jget job.error <<<"$j"); "
            res=$(jget job.result.layers_resumed <<<"$j")
            [[ $st != "done" || $res == "$rows" ]] || bad+="layers_resumed $res, but $rows rows at the last kill; "
            if [[ $st == "done" ]] && ! v=$($CHECK compare "$T/ref/$m" "$out"); then bad+="$v; "; fi
            v=$($CHECK snap "$dir/snap-$id.json" "$D_STATE" "$id" --live) || bad+="final: $v; "
            if [[ -z $bad ]]; then
                passed=$((passed + 1))
            else
                failed=$((failed + 1))
                notes+=("r$rounds $m (job $id): $bad")
            fi
        done
        log "kill: round $rounds: $kills kills during jobs so far ($late after the job had ended)"
    done
    daemon_stop || notes+=("SIGTERM did not stop the daemon cleanly")
    sanitizer_clean "$dir/daemon.log" || { notes+=("sanitizer report in $dir/daemon.log"); failed=$((failed + 1)); }
    ((kills >= KILL_TARGET)) || notes+=("only $kills kills landed during jobs (target $KILL_TARGET)")
    row kill-9 "$jobs" "$kills" "$passed" "$failed" \
        "$(joined "" "$rounds round(s) x ${#METHODS[@]} methods, $checks integrity checks, $late more kills after a job had ended" "${notes[@]}")"
}

# ---- a job that fails on a fault and is resumed ------------------------------------------
# fault_case NAME DIR OUT [EXPECT]: the daemon (D_*) runs with the fault
# active; submits the svdllm job to OUT, expects it failed (EXPECT "failed",
# the default) or, for a store write that fails once (EXPECT "retried"),
# done after the daemon's one retry (schema/protocol.md, Store writes that
# fail: the log names the database and the error); checks the error, the
# daemon, the checkpoints and leftovers. The caller then removes the fault
# and calls resume_case (not for "retried"). Sets CASE_BAD (problems) and
# CASE_ID, CASE_ROWS, CASE_STATE.
CASE_BAD="" CASE_ID="" CASE_ROWS=0 CASE_STATE=""
fault_case() {
    local name=$1 dir=$2 out=$3 expect=${4:-failed} v st j err
    CASE_BAD="" CASE_ROWS=0
    CASE_ID=$(submit svdllm "$out")
    if [[ -z $CASE_ID ]]; then
        CASE_BAD="submit refused: $(tail -n 1 "$T/submit.err"); "
        return
    fi
    st=$(job_wait "$CASE_ID")
    j=$(job_json "$CASE_ID")
    err=$(jget job.error <<<"$j")
    CASE_STATE=$st
    if [[ $st == running || $st == queued || -z $st ]]; then
        CASE_BAD+="still '${st:-no status}' ${WAIT_S} s after the fault (watch got no end); "
    elif [[ $expect == retried ]]; then
        if [[ $st != "done" ]]; then
            CASE_BAD+="ended '$st' ($err), not done after the retry; "
        elif ! grep -qE "database $D_STATE/svdllmd.db: .*(I/O error|disk is full).*; retrying in" "$D_LOG"; then
            CASE_BAD+="done, but the log shows no retry naming the database and the error; "
        fi
    elif [[ $st != failed ]]; then
        CASE_BAD+="ended '$st', not failed; "
    fi
    if [[ $st == failed ]]; then
        # A path: '/' after a non-alphanumeric (so "I/O" is not one) and
        # a second component.
        [[ $err =~ (^|[^[:alnum:]])/[^/\ \']+/ ]] || CASE_BAD+="error names no file; "
        [[ $err =~ (Input/output error|I/O error|No space left|disk is full|ENOSPC|EIO|Disk quota) ]] ||
            CASE_BAD+="error names no errno; "
    fi
    ctl ping >/dev/null 2>&1 || CASE_BAD+="ping failed after the fault; "
    [[ -n $(job_json "$CASE_ID" | jget job.id) ]] || CASE_BAD+="status failed after the fault; "
    v=$($CHECK snap "$dir/snap.json" "$D_STATE" "$CASE_ID" --live) || CASE_BAD+="checkpoints: $v; "
    CASE_ROWS=$(sed -n 's/^ok \([0-9]*\)$/\1/p' <<<"$v")
    : "${CASE_ROWS:=0}"
    [[ -e $out.tmp ]] && CASE_BAD+="$out.tmp left behind; "
    log "$name: job $CASE_ID '$st' with $CASE_ROWS layers committed: ${err:-no error}"
}

# resume_case NAME DIR OUT MINROWS: the fault is gone (space freed, or the
# daemon restarted without the shim). A failed job is not retried by a
# restart (schema/protocol.md, Restart): it must still be failed, and
# `svdllmctl resume ID` requeues it. A job whose final state could not be
# recorded stays running in the database, so a restart has requeued it
# already (then it is not failed, and resume is not needed). Expects done,
# identical output, the committed layers reused.
resume_case() {
    local name=$1 dir=$2 out=$3 want=$4 st how="" v j
    [[ -n $CASE_ID ]] || return
    ((HAVE_RESUME)) || { CASE_BAD+="svdllmctl has no resume; "; return; }
    st=$(job_state "$CASE_ID")
    if [[ $st == failed ]]; then
        if v=$(ctl resume "$CASE_ID" 2>&1); then how="svdllmctl resume"; else CASE_BAD+="svdllmctl resume: $v; "; fi
    else
        how="the restart (final state not recorded: '$st')"
    fi
    st=$(job_wait "$CASE_ID")
    j=$(job_json "$CASE_ID")
    if [[ $st != "done" ]]; then
        CASE_BAD+="after the fault was removed (${how:-nothing}): '$st': $(jget job.error <<<"$j"); "
        return
    fi
    v=$($CHECK compare "$T/ref/svdllm" "$out") || CASE_BAD+="output: $v; "
    local res
    res=$(jget job.result.layers_resumed <<<"$j")
    ((res >= want)) || CASE_BAD+="layers_resumed $res < $want committed before the fault; "
    v=$($CHECK snap "$dir/snap.json" "$D_STATE" "$CASE_ID" --live) || CASE_BAD+="checkpoints after resume: $v; "
    v=$($CHECK integrity "$D_STATE" --live) || CASE_BAD+="integrity_check: $v; "
    log "$name: resumed by $how: done, layers_resumed $res"
}

# ---- full disk (tmpfs) ---------------------------------------------------------------------
mount_tmpfs() {   # mount_tmpfs DIR SIZE
    mkdir -p "$1"
    mount -t tmpfs -o "size=$2,mode=0755" tmpfs "$1" 2>>"$T/mount.err" || return 1
    MOUNTS+=("$1")
}
used_bytes() { stat -f -c '%b %f %S' "$1" | awk '{ print ($1 - $2) * $3 }'; }

# measure_state L: bytes a tmpfs state directory holds once layer L of the
# svdllm job is committed (the engine's after-commit:L crash point); sets
# MEASURED and LAYER_BYTES (the size of layer L's checkpoint).
MEASURED=0 LAYER_BYTES=0
measure_state() {
    local m=$T/disk/measure$1
    mount_tmpfs "$m" 64m || return 1
    daemon_use "$m/state" "$T/disk/measure.sock" "$T/disk/measure.log"
    daemon_start "SVDLLM_FAULT=after-commit:$1" && submit svdllm "$T/disk/out-measure$1" >/dev/null
    wait "$D_PID" 2>/dev/null
    D_PID=""
    MEASURED=$(used_bytes "$m")
    LAYER_BYTES=$(stat -c %s "$m/state/jobs/1/layer-$1.safetensors" 2>/dev/null || echo 0)
    umount "$m"
    ((LAYER_BYTES > 0))
}

# disk_case NAME TMPFS SIZE STATE OUT MINROWS: the daemon on STATE, the job's
# output OUT, TMPFS mounted with SIZE bytes; grown to 64 MiB after the fault.
disk_case() {
    local name=$1 mnt=$2 size=$3 state=$4 out=$5 minrows=$6
    DISK_RUNS=$((DISK_RUNS + 1))
    rm -f "$T/disk/snap.json"
    mount_tmpfs "$mnt" "$size" || { DISK_FAILED=$((DISK_FAILED + 1)); DISK_NOTES+=("$name: mount failed"); return; }
    daemon_use "$state" "$T/disk/$name.sock" "$T/disk/$name.log"
    daemon_start || { DISK_FAILED=$((DISK_FAILED + 1)); DISK_NOTES+=("$name: daemon did not start"); return; }
    DISK_FAULTS=$((DISK_FAULTS + 1))
    fault_case "disk/$name" "$T/disk" "$out"
    mount -o remount,size=64m "$mnt"
    [[ $minrows == rows ]] && minrows=$CASE_ROWS
    resume_case "disk/$name" "$T/disk" "$out" "$minrows"
    daemon_stop
    sanitizer_clean "$T/disk/$name.log" || CASE_BAD+="sanitizer report; "
    if [[ -z $CASE_BAD ]]; then DISK_PASSED=$((DISK_PASSED + 1)); else DISK_FAILED=$((DISK_FAILED + 1)); DISK_NOTES+=("$name: $CASE_BAD"); fi
}

scenario_disk() {
    if ((!IS_ROOT)); then row disk 0 0 0 0 "skipped: tmpfs mounts need root"; return; fi
    local dir=$T/disk
    DISK_RUNS=0 DISK_PASSED=0 DISK_FAILED=0 DISK_FAULTS=0 DISK_NOTES=()
    mkdir -p "$dir"
    if ! mount_tmpfs "$dir/probe" 1m; then
        row disk 0 0 0 0 "skipped: mount -t tmpfs failed: $(tail -n 1 "$T/mount.err")"
        return
    fi
    umount "$dir/probe"

    # 1. The state directory fills in the middle of layer 2's checkpoint:
    # what layer 1's commit leaves plus half a checkpoint.
    if measure_state 1; then
        local size=$(( (MEASURED + LAYER_BYTES / 2 + 4095) / 4096 * 4096 ))
        log "disk/state: $MEASURED bytes used after layer 1's commit; tmpfs of $size bytes"
        disk_case state "$dir/s" "$size" "$dir/s/state" "$dir/out-state" rows
    else
        DISK_RUNS=$((DISK_RUNS + 1)) DISK_FAILED=$((DISK_FAILED + 1))
        DISK_NOTES+=("state: the measuring run did not reach layer 1 ($dir/measure.log)")
    fi
    # 2. The state directory fills during SQLite's commit of layer 2: two
    # pages less than that commit leaves, so the checkpoint files fit and the
    # WAL append does not.
    if measure_state 2; then
        local size=$(( MEASURED / 4096 * 4096 - 8192 ))
        log "disk/state-db: $MEASURED bytes used after layer 2's commit; tmpfs of $size bytes"
        disk_case state-db "$dir/d" "$size" "$dir/d/state" "$dir/out-db" rows
    else
        DISK_RUNS=$((DISK_RUNS + 1)) DISK_FAILED=$((DISK_FAILED + 1))
        DISK_NOTES+=("state-db: the measuring run did not reach layer 2 ($dir/measure.log)")
    fi
    # 3. The output: its parent holds half of model.safetensors.
    local msize
    msize=$(stat -c %s "$T/ref/svdllm/model.safetensors")
    disk_case out "$dir/o" $(( (msize / 2 + 4095) / 4096 * 4096 )) "$dir/o-state" "$dir/o/out" 5
    row disk "$DISK_RUNS" "$DISK_FAULTS" "$DISK_PASSED" "$DISK_FAILED" \
        "$(grouped "state dir filled mid-layer and mid-commit, output filled mid-assembly" "${DISK_NOTES[@]}")"
}

# ---- I/O errors (LD_PRELOAD shim) ----------------------------------------------------------
shim_env() {   # shim_env OP PATTERN NTH TIMES ERRNO LOG
    # A sanitizer build wants its runtime first; the shim only wraps libc.
    echo "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 LD_PRELOAD=$SHIM SVDLLM_SHIM_OP=$1 SVDLLM_SHIM_PATTERN=$2 SVDLLM_SHIM_NTH=$3 SVDLLM_SHIM_TIMES=$4 SVDLLM_SHIM_ERRNO=$5 SVDLLM_SHIM_LOG=$6"
}

# The Nth SQLite WAL write and sync that belong to layer L's commit, from a
# traced run (the same daemon, the same single job, so the same sequence).
declare -A WAL_PW WAL_FS
trace_wal() {
    local dir=$T/io/trace
    mkdir -p "$dir"
    daemon_use "$dir/state" "$dir/sock" "$dir/daemon.log"
    # shellcheck disable=SC2046
    daemon_start $(shim_env pwrite64,pwrite,fdatasync,fsync,rename "*/svdllmd.db-wal:*/layer-*.safetensors.tmp" 0 1 EIO "$dir/trace.log") || return 1
    local id
    id=$(submit svdllm "$dir/out")
    job_wait "$id" >/dev/null
    daemon_stop
    # After layer-L's rename, the next WAL pwrite and sync are its commit.
    eval "$(awk '
        /path=.*svdllmd\.db-wal$/ && /op=pwrite/ { pw++ }
        /path=.*svdllmd\.db-wal$/ && /op=(fdatasync|fsync)/ { fs++ }
        /op=rename/ { match($0, /layer-[0-9]+/); l = substr($0, RSTART + 6, RLENGTH - 6); want[l] = 1; cur = l; next }
        cur != "" && /op=pwrite/ && !(cur in pwd) { pwd[cur] = pw; printf "WAL_PW[%s]=%d;", cur, pw }
        cur != "" && /op=(fdatasync|fsync)/ && /db-wal/ && !(cur in fsd) { fsd[cur] = fs; printf "WAL_FS[%s]=%d;", cur, fs }
    ' "$dir/trace.log")"
    log "io: WAL writes of layer commits: $(for l in 0 1 2 3 4; do printf '%s:%s/%s ' "$l" "${WAL_PW[$l]:-?}" "${WAL_FS[$l]:-?}"; done)(pwrite/sync ordinal)"
    [[ -n ${WAL_PW[1]:-} && -n ${WAL_FS[1]:-} ]]
}

scenario_io() {
    local dir=$T/io runs=0 passed=0 failed=0 faults=0 notes=() v
    mkdir -p "$dir"
    trace_wal || notes+=("could not trace SQLite's WAL calls ($T/io/trace)")
    # name | op | pattern (OUT = the job's output) | nth | times | errno
    local cases=(
        "ckpt-write|write|*/jobs/*/layer-2.safetensors.tmp|3|1|EIO"
        "ckpt-fsync|fsync|*/jobs/*/layer-1.safetensors.tmp|1|1|EIO"
        "ckpt-rename|rename|*/jobs/*/layer-3.safetensors.tmp|1|1|EIO"
        "hidden-write|write|*/jobs/*/hidden-3.f32.tmp|1|1|EIO"
        "dir-fsync|fsync|*/state/jobs/1|6|1|EIO"
        "out-write|write|OUT.tmp/model.safetensors.tmp|10|1|EIO"
        "out-fsync|fsync|OUT.tmp/model.safetensors.tmp|1|1|EIO"
        "out-publish|rename|OUT.tmp|1|1|EIO"
        "wal-write|pwrite64,pwrite|*/svdllmd.db-wal|${WAL_PW[1]:-0}|1|EIO|retried"
        "wal-sync|fdatasync,fsync|*/svdllmd.db-wal|${WAL_FS[1]:-0}|1|EIO|retried"
        "wal-full|pwrite64,pwrite|*/svdllmd.db-wal|${WAL_PW[1]:-0}|0|ENOSPC"
        "wal-sync-dead|fdatasync,fsync|*/svdllmd.db-wal|${WAL_FS[1]:-0}|0|EIO"
    )
    if ((LONG)); then
        local l
        for l in 0 1 2 3 4; do
            cases+=("ckpt-write-$l|write|*/jobs/*/layer-$l.safetensors.tmp|1|1|EIO"
                "ckpt-nospace-$l|write|*/jobs/*/layer-$l.safetensors.tmp|2|0|ENOSPC"
                "hidden-write-$((l + 1))|write|*/jobs/*/hidden-$((l + 1)).f32.tmp|1|1|EIO"
                "wal-write-$l|pwrite64,pwrite|*/svdllmd.db-wal|${WAL_PW[$l]:-0}|1|EIO|retried"
                "wal-sync-$l|fdatasync,fsync|*/svdllmd.db-wal|${WAL_FS[$l]:-0}|1|EIO|retried"
                "wal-full-$l|pwrite64,pwrite|*/svdllmd.db-wal|${WAL_PW[$l]:-0}|0|ENOSPC"
                "wal-sync-dead-$l|fdatasync,fsync|*/svdllmd.db-wal|${WAL_FS[$l]:-0}|0|EIO")
        done
    fi
    local c name op pat nth times errno expect cdir out n
    for c in "${cases[@]}"; do
        IFS='|' read -r name op pat nth times errno expect <<<"$c"
        runs=$((runs + 1))
        if ((nth <= 0)); then failed=$((failed + 1)); notes+=("$name: no call to fail (trace)"); continue; fi
        cdir=$dir/$name
        out=$cdir/out
        mkdir -p "$cdir"
        pat=${pat//OUT/$out}
        daemon_use "$cdir/state" "$cdir/sock" "$cdir/daemon.log"
        # shellcheck disable=SC2046
        if ! daemon_start $(shim_env "$op" "$pat" "$nth" "$times" "$errno" "$cdir/shim.log"); then
            failed=$((failed + 1)); notes+=("$name: daemon did not start"); continue
        fi
        fault_case "io/$name" "$cdir" "$out" "${expect:-failed}"
        n=$(grep -c '^FAULT' "$cdir/shim.log" 2>/dev/null)
        faults=$((faults + ${n:-0}))
        if ((${n:-0} == 0)); then
            CASE_BAD="the shim never fired (no $op on $pat): campaign out of date with the engine; $CASE_BAD"
            daemon_stop
        elif [[ $expect == retried ]]; then
            # Done despite the fault: the output and the store are checked
            # as after a resume.
            if [[ $CASE_STATE == "done" ]]; then
                v=$($CHECK compare "$T/ref/svdllm" "$out") || CASE_BAD+="output: $v; "
                v=$($CHECK integrity "$D_STATE" --live) || CASE_BAD+="integrity_check: $v; "
            fi
            daemon_stop || CASE_BAD+="SIGTERM did not stop the daemon cleanly; "
        else
            # The fault is "fixed": the next daemon runs without the shim.
            daemon_stop || CASE_BAD+="SIGTERM did not stop the daemon cleanly; "
            daemon_start || CASE_BAD+="daemon did not restart; "
            resume_case "io/$name" "$cdir" "$out" "$CASE_ROWS"
            daemon_stop
        fi
        sanitizer_clean "$cdir/daemon.log" || CASE_BAD+="sanitizer report; "
        if [[ -z $CASE_BAD ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); notes+=("$name: $CASE_BAD"); fi
    done
    row io "$runs" "$faults" "$passed" "$failed" "$(grouped "write/fsync/rename of checkpoints, hidden states, output: failed, resumed; SQLite WAL write/sync EIO once: retried to done; WAL ENOSPC, sync EIO for good: failed, resumed" "${notes[@]}")"
}

# ---- load ------------------------------------------------------------------------------------
scenario_load() {
    local dir=$T/load runs=0 passed=0 failed=0 notes=() faults=0
    mkdir -p "$dir"
    # Within the limits (schema/protocol.md, Limits and Timeouts): 64
    # clients + their watch connections + 100 idle + 8 half-sent + the
    # abusers, all of one uid (root is exempt from the per-uid limit, but
    # the campaign may run as another user), and idle or half-sent for the
    # whole load: the timeouts are an hour. Extra lines come from
    # $CAMPAIGN_LOAD_CONFIG. The limits themselves are tested after the load.
    printf '%s\n' 'max_clients = 1024' 'max_clients_per_uid = 1024' 'root_reserved_clients = 4' \
        'idle_timeout = 3600' 'line_timeout = 3600' "${CAMPAIGN_LOAD_CONFIG:-}" >"$dir/svdllmd.conf"
    daemon_use "$dir/state" "$dir/sock" "$dir/daemon.log" "$dir/svdllmd.conf"
    if ! daemon_start; then
        row load 1 0 0 1 "daemon did not start with $dir/svdllmd.conf: $(tail -n 2 "$dir/daemon.log" | tr '\n' ' ')"
        return
    fi
    g() { jget "$1" <<<"$out"; }
    note_once() {
        local n
        for n in "${notes[@]}"; do [[ $n == "$1" ]] && return; done
        notes+=("$1")
    }
    local rep served=0 id bad out j st
    for ((rep = 1; rep <= LOAD_REPEAT; rep++)); do
        bad=""
        runs=$((runs + 1))
        id=$(submit load "$dir/out$rep")
        [[ -n $id ]] || bad+="submit failed; "
        local i
        for ((i = 0; i < 100; i++)); do [[ $(job_state "$id") == running ]] && break; sleep 0.05; done
        local st0
        st0=$(job_state "$id")
        log "load: job $id '$st0'; 64 clients x $LOAD_REQUESTS requests, 100 idle, 8 half-sent, malformed, oversize, vanishing"
        out=$("$LOADC" --socket "$D_SOCK" load --job "${id:-1}" --clients 64 --requests "$LOAD_REQUESTS" --idle 100 \
            --half 8 --malformed 40 --oversize 4 --vanish 40 2>"$dir/load$rep.err")
        local st1
        st1=$(job_state "$id")
        echo "$out" >"$dir/load$rep.json"

        faults=$(( faults + $(g idle) + $(g half) + $(g malformed) + $(g oversize) + $(g vanished) ))
        [[ -n $out ]] || bad+="load_client printed nothing: $(tail -n 3 "$dir/load$rep.err"); "
        (($(g failed) == 0)) || bad+="$(g failed) of $(g requests) well-formed requests failed (first: $(g first_error)); "
        (($(g malformed_answered) == $(g malformed))) || bad+="$(g malformed_answered)/$(g malformed) malformed lines answered; "
        (($(g oversize_answered) == $(g oversize))) || bad+="$(g oversize_answered)/$(g oversize) oversize lines answered (too_large) before the close; "
        [[ $(g alive_after) == true ]] || bad+="no ping after the load; "
        local p99
        p99=$(g status_p99_ms)
        # The p99 target is printed; it fails the run only with --strict-latency,
        # since on a shared 2-core machine other processes' load moves it.
        local target="met"
        if ! awk -v p="$p99" 'BEGIN { exit !(p >= 0 && p < 10) }'; then
            target="MISSED (load average $(cut -d' ' -f1 /proc/loadavg))"
            ((STRICT_LATENCY)) && bad+="status p99 $(printf '%.1f' "$p99") ms (target < 10 ms); "
        fi
        [[ $st0 == running || $st1 == running ]] || bad+="the job was '$st0' at the start and '$st1' at the end of the load (campaign: make it longer); "
        (($(g oversize_written_whole) == $(g oversize))) ||
            note_once "$(( $(g oversize) - $(g oversize_written_whole) ))/$(g oversize) oversize writes cut short by the daemon's close (EPIPE), reply read anyway"
        st=$(job_wait "$id")
        [[ $st == "done" ]] || bad+="job ended '$st'; "
        if [[ $st == "done" ]]; then j=$($CHECK compare "$T/ref/load" "$dir/out$rep") || bad+="output: $j; "; fi
        local lat
        lat=$(printf "$( ((LOAD_REPEAT > 1)) && echo "run $rep: ")job '$st0' -> '$st1' during the load; "'status p50 %.2f ms, p99 %.2f ms (target < 10 ms '"$target"'), max %.1f ms over %s requests in %.1f s (%.0f/s); idle open at end %s/%s, half-sent open %s/%s' \
            "$(g status_p50_ms)" "$p99" "$(g status_max_ms)" "$(g requests)" "$(g seconds)" \
            "$(echo "$(g requests) / $(g seconds)" | bc -l)" "$(g idle_open_at_end)" "$(g idle_connected)" \
            "$(g half_open_at_end)" "$(g half_connected)")
        served=$((served + $(g ok)))
        log "load $rep/$LOAD_REPEAT: $lat"
        notes+=("$lat")
        if [[ -z $bad ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); notes+=("$bad"); fi
    done
    notes+=("$served well-formed requests served")
    daemon_stop

    # At the default limits: one connection over max_clients.
    runs=$((runs + 1))
    D_CONF=""
    bad=""
    daemon_start || bad+="daemon did not restart; "
    out=$("$LOADC" --socket "$D_SOCK" limit --idle 70 --exec "$SVDLLMCTL" --socket "$D_SOCK" ping 2>>"$dir/load.err")
    echo "$out" >"$dir/limit.json"
    faults=$((faults + 70))
    local probe
    probe=$(g probe)
    [[ $probe == too_many_clients || $probe == pong ]] ||
        bad+="the 71st connection (70 idle, default limits) got '$probe'$( [[ -n $(g probe_send) ]] && echo ", send: $(g probe_send)"), not too_many_clients; "
    [[ $(g exec_clean) == "$(g exec_runs)" ]] ||
        bad+="svdllmctl ping with 70 idle connections: $(( $(g exec_runs) - $(g exec_clean) ))/$(g exec_runs) runs neither pong nor too_many_clients: exit $(g exec_status), '$(g exec_output)'; "
    [[ $(g ping_after_release) == true ]] || bad+="no ping once the idle connections closed; "
    log "limit: 70 idle connections, the next one got '$probe'; svdllmctl ping: $(g exec_clean)/$(g exec_runs) clean, e.g. exit $(g exec_status) '$(g exec_output)'"
    if [[ -z $bad ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); notes+=("limit: $bad"); fi
    daemon_stop

    # The per-uid limit at its default (16): a user other than root (nobody)
    # holds 16 idle connections; its 17th gets too_many_clients naming
    # max_clients_per_uid, and so does its svdllmctl ping, every time.
    if ((IS_ROOT)) && command -v setpriv >/dev/null; then
        runs=$((runs + 1))
        bad=""
        printf 'socket_mode = 0666\n' >"$dir/uid.conf"
        chmod 0755 "$dir"
        D_CONF=$dir/uid.conf
        daemon_start || bad+="daemon did not restart; "
        # nobody runs a copy: the build tree may sit in a 0700 directory
        # (a clone under mktemp -d), which uid 65534 cannot traverse.
        mkdir -p "$dir/bin" && chmod 0755 "$dir/bin"
        cp "$SVDLLMCTL" "$dir/bin/svdllmctl" && chmod 0755 "$dir/bin/svdllmctl"
        out=$(setpriv --reuid=65534 --regid=65534 --clear-groups -- "$LOADC" --socket "$D_SOCK" limit --idle 16 \
            --exec "$dir/bin/svdllmctl" --socket "$D_SOCK" ping 2>>"$dir/load.err")
        echo "$out" >"$dir/limit-uid.json"
        faults=$((faults + 16))
        [[ $(g idle_connected) == 16 ]] || bad+="$(g idle_connected)/16 connections of uid 65534 accepted; "
        [[ $(g probe) == too_many_clients && $(g probe_message) == *max_clients_per_uid* ]] ||
            bad+="uid 65534's 17th connection got '$(g probe)' ('$(g probe_message)'), not too_many_clients for max_clients_per_uid; "
        [[ $(g exec_clean) == "$(g exec_runs)" && $(g exec_status) != 0 ]] ||
            bad+="uid 65534's svdllmctl ping over its limit: $(g exec_clean)/$(g exec_runs) clean, exit $(g exec_status), '$(g exec_output)'; "
        ctl ping >/dev/null 2>&1 || bad+="root's ping failed; "
        [[ $(g ping_after_release) == true ]] || bad+="no ping of uid 65534 once its connections closed; "
        log "limit per uid: 16 idle connections of uid 65534, the next one got '$(g probe)': $(g probe_message)"
        if [[ -z $bad ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); notes+=("limit per uid: $bad"); fi
        daemon_stop
    else
        notes+=("per-uid limit skipped: needs root and setpriv to connect as another uid")
    fi
    sanitizer_clean "$dir/daemon.log" || { notes+=("sanitizer report"); failed=$((failed + 1)); }
    row load "$runs" "$faults" "$passed" "$failed" "$(joined "" "${notes[@]}")"
}

# ---- peer checks -------------------------------------------------------------------------------
scenario_peer() {
    if ((!IS_ROOT)); then row peer 0 0 0 0 "skipped: needs root to create a second user"; return; fi
    local u=svcamp$$
    if ! useradd -M -N -r -s /usr/sbin/nologin "$u" 2>"$T/useradd.err"; then
        row peer 0 0 0 0 "skipped: useradd failed: $(tail -n 1 "$T/useradd.err")"
        return
    fi
    PEER_USER=$u
    local uid gid
    uid=$(id -u "$u") gid=$(id -g "$u")
    local dir=$T/peer
    mkdir -p "$dir/bin" "$dir/home" "$dir/secret" "$dir/rootdir/victim" "$dir/pub"
    chmod 0755 "$dir" "$dir/bin" "$dir/pub" "$dir/rootdir" "$dir/rootdir/victim"
    chmod 0700 "$dir/secret"
    chown "$uid:$gid" "$dir/home"
    cp "$SVDLLMCTL" "$dir/bin/svdllmctl"; chmod 0755 "$dir/bin/svdllmctl"
    cp -r "$MODEL" "$dir/pub/model"; cp "$CALIB" "$dir/pub/calib.txt"
    cp -r "$MODEL" "$dir/secret/model"; cp "$CALIB" "$dir/secret/calib.txt"
    chmod -R a+rX "$dir/pub"
    echo "root's data" >"$dir/rootdir/victim/keep.txt"
    mkdir -p "$dir/home/mydata"; echo mine >"$dir/home/mydata/notes.txt"; chown -R "$uid:$gid" "$dir/home/mydata"
    printf 'socket_mode = 0666\n' >"$dir/svdllmd.conf"
    daemon_use "$dir/state" "$dir/sock" "$dir/daemon.log" "$dir/svdllmd.conf"
    chmod 0711 "$dir/state"
    # Root's job holds the runner after its layer 0 (up to 60 s) so that it
    # is certainly running while the user pokes at it.
    if ! daemon_start SVDLLM_FAULT=stall-after-commit:0; then
        row peer 0 0 0 1 "daemon did not start"; return
    fi
    local rootjob
    rootjob=$(ctl submit --model "$dir/pub/model" --out "$dir/rootdir/rootout" --ratio 0.4 --method svdllm --calib "$dir/secret/calib.txt" --nsamples 8 --seqlen 64)
    local runs=0 passed=0 failed=0 notes=() hostile=0
    # as_user ARGS...: svdllmctl as the second user; output in $PO, status $PS
    PO="" PS=0
    as_user() {
        PO=$(timeout "${WATCH_TIMEOUT:-60}" setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$dir/bin/svdllmctl" --socket "$D_SOCK" "$@" 2>&1)
        PS=$?
    }
    # refused NAME DESCRIPTION ARGS...: the request (sent with --json) must
    # get an error reply; a job it created anyway is cancelled by root (so
    # nothing is harmed) and counts against it. No reply at all is a failure
    # too (the daemon, or this script, is broken).
    refused() {
        local name=$1 what=$2 first
        shift 2
        runs=$((runs + 1)) hostile=$((hostile + 1))
        as_user --json "$@"
        first=$(head -n 1 <<<"$PO")
        if [[ $first == *'"ok":false'* ]]; then
            passed=$((passed + 1))
            log "peer $name: refused: $(jget error.code <<<"$first"): $(jget error.message <<<"$first" | head -c 160)"
        elif [[ $first == *'"ok":true'* ]]; then
            failed=$((failed + 1))
            notes+=("$name: accepted ($what)")
            local jid
            jid=$(jget job.id <<<"$first")
            [[ -n $jid && $1 == submit ]] && ctl cancel "$jid" >/dev/null 2>&1
        else
            failed=$((failed + 1))
            notes+=("$name: no reply ($what): $(head -c 160 <<<"$PO")")
        fi
    }
    local base="--ratio 0.4 --method svdllm --nsamples 8 --seqlen 64"
    # shellcheck disable=SC2086
    {
        refused unreadable-calib "calib in a 0700 root directory" submit --model "$dir/pub/model" --out "$dir/home/o1" --calib "$dir/secret/calib.txt" $base
        refused unreadable-model "model in a 0700 root directory" submit --model "$dir/secret/model" --out "$dir/home/o2" --calib "$dir/pub/calib.txt" $base
        refused unreadable-eval "eval text in a 0700 root directory" submit --model "$dir/pub/model" --out "$dir/home/o3" --calib "$dir/pub/calib.txt" --eval-text "$dir/secret/calib.txt" $base
        refused eval-unreadable "eval op on a 0700 root model" eval --model "$dir/secret/model" --text "$dir/pub/calib.txt" --max-windows 1
        refused out-not-writable "out in a root 0755 directory" submit --model "$dir/pub/model" --out "$dir/rootdir/o4" --calib "$dir/pub/calib.txt" $base
        refused overwrite-root "overwrite of root's directory" submit --model "$dir/pub/model" --out "$dir/rootdir/victim" --overwrite --calib "$dir/pub/calib.txt" $base
        refused overwrite-state "overwrite of the state directory" submit --model "$dir/pub/model" --out "$dir/state" --overwrite --calib "$dir/pub/calib.txt" $base
        refused overwrite-workdir "overwrite of root's job's work directory" submit --model "$dir/pub/model" --out "$dir/state/jobs/$rootjob" --overwrite --calib "$dir/pub/calib.txt" $base
        refused out-in-state "output inside the state directory" submit --model "$dir/pub/model" --out "$dir/state/jobs/mine" --calib "$dir/pub/calib.txt" $base
        refused overwrite-own-data "overwrite of a non-svdllm directory (its own)" submit --model "$dir/pub/model" --out "$dir/home/mydata" --overwrite --calib "$dir/pub/calib.txt" $base
        WATCH_TIMEOUT=3 refused watch-other "watch of root's job" watch "$rootjob"
        refused cancel-other "cancel of root's job" cancel "$rootjob"
    }
    # Paths of root's job in what the user sees.
    runs=$((runs + 1)) hostile=$((hostile + 1))
    as_user --json status "$rootjob"
    if grep -qE "$dir/(pub|secret|rootdir|state)" <<<"$PO"; then
        failed=$((failed + 1)); notes+=("status-other: root's paths visible: $(grep -oE "\"(model|out|calib|work_dir)\":\"[^\"]*\"" <<<"$PO" | head -2 | tr '\n' ' ')")
    else passed=$((passed + 1)); fi
    runs=$((runs + 1)) hostile=$((hostile + 1))
    as_user --json list
    if grep -qE "$dir/(pub|secret|rootdir|state)" <<<"$PO"; then
        failed=$((failed + 1)); notes+=("list-other: root's paths visible")
    else passed=$((passed + 1)); fi
    # Nothing of root's was harmed.
    runs=$((runs + 1))
    local harm=""
    [[ $(cat "$dir/rootdir/victim/keep.txt" 2>/dev/null) == "root's data" ]] || harm+="rootdir/victim lost; "
    [[ -f $dir/home/mydata/notes.txt ]] || harm+="the user's mydata lost; "
    [[ -f $dir/state/svdllmd.db && -d $dir/state/jobs/$rootjob ]] || harm+="state directory damaged; "
    [[ $(job_state "$rootjob") == running ]] || harm+="root's job is '$(job_state "$rootjob")', not running; "
    if [[ -z $harm ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); notes+=("harm: $harm"); fi
    ctl cancel "$rootjob" >/dev/null 2>&1
    job_wait "$rootjob" >/dev/null
    # The user's own job: accepted, done, the output the user's.
    daemon_stop
    daemon_start
    runs=$((runs + 1))
    local own st owner
    as_user submit --model "$dir/pub/model" --out "$dir/home/own" --calib "$dir/pub/calib.txt" --ratio 0.4 --method svdllm --nsamples 8 --seqlen 64
    own=$PO
    if ((PS != 0)); then
        failed=$((failed + 1)); notes+=("own job refused: $PO")
    else
        st=$(job_wait "$own")
        owner=$(stat -c %u "$dir/home/own/model.safetensors" 2>/dev/null)
        as_user --json status "$own"
        if [[ $st != "done" ]]; then
            failed=$((failed + 1)); notes+=("own job ended '$st': $(job_json "$own" | jget job.error)")
        elif [[ $owner != "$uid" ]]; then
            failed=$((failed + 1)); notes+=("own job's output belongs to uid $owner, not the submitter $uid")
        elif ! grep -q "$dir/home/own" <<<"$PO"; then
            failed=$((failed + 1)); notes+=("own job's paths hidden from its owner")
        else passed=$((passed + 1)); fi
    fi
    daemon_stop
    sanitizer_clean "$dir/daemon.log" || { notes+=("sanitizer report"); failed=$((failed + 1)); }
    row peer "$runs" "$hostile" "$passed" "$failed" "$(joined "user $u (uid $uid)" "${notes[@]}")"
}

# ---- main ----------------------------------------------------------------------------------------
log "work directory $T, seed $SEED, $( ((LONG)) && echo long || echo quick) form, svdllmctl resume: $( ((HAVE_RESUME)) && echo yes || echo no)"
if [[ $ONLY =~ kill|disk|io|load ]]; then
    reference_runs || { row reference 1 0 0 1 "the uninterrupted reference runs failed ($T/ref/daemon.log)"; print_table; exit 1; }
fi
for s in kill disk io load peer; do
    [[ ,$ONLY, == *,$s,* ]] || continue
    log "scenario $s"
    "scenario_$s"
done
print_table
((TOTAL_FAILED == 0))
