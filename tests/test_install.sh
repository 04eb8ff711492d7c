#!/usr/bin/env bash
# `meson install --destdir` into a temporary directory, then checks what an
# administrator gets: the exact file list and modes, the unit's configured
# paths (ExecStart=, --config, Documentation=, ReadWritePaths= against the
# tmpfiles.d rule), the installed daemon starting on the installed default
# config and answering the installed client, the config kept by a second
# install, `systemd-analyze verify` and `security` on the installed unit,
# systemd-sysusers and systemd-tmpfiles applied to a copy of the destdir (the
# user, the group, the output directory's owner and mode), every man page
# rendering without warnings and documenting every flag of its program's
# --help, and the bash completion.
#
# Usage: test_install.sh MESON BUILDDIR, with the install directories in
# SV_PREFIX, SV_BINDIR, ... (set by meson.build from the configured options).
# systemd-analyze and man are optional: without them those checks are skipped
# with the reason printed.
set -uo pipefail
meson=$1 builddir=$2

fails=0 passes=0 skips=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
skip() { skips=$((skips + 1)); echo "skip: $*"; }
check() { # description, command...
  local what=$1; shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

tmp=$(mktemp -d /tmp/svdllm-install.XXXXXX)
daemon=
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
root=$tmp/root

if ! "$meson" install -C "$builddir" --no-rebuild --destdir "$root" >"$tmp/install.log" 2>&1; then
  cat "$tmp/install.log"
  echo "FAIL: meson install --destdir"
  exit 1
fi
ok "meson install --destdir $root"

# ---- The file list: exactly these, with these modes. --------------------------
expected=$(sort <<EOF
755 $SV_BINDIR/svdllm-engine
755 $SV_BINDIR/svdllmctl
755 $SV_SBINDIR/svdllmd
644 $SV_SYSCONFDIR/svdllmd.conf
644 $SV_UNITDIR/svdllmd.service
644 $SV_SYSUSERSDIR/svdllmd.conf
644 $SV_TMPFILESDIR/svdllmd.conf
644 $SV_BASHCOMPDIR/svdllmctl
644 $SV_MANDIR/man1/svdllm-engine.1
644 $SV_MANDIR/man1/svdllmctl.1
644 $SV_MANDIR/man5/svdllmd.conf.5
644 $SV_MANDIR/man8/svdllmd.8
644 $SV_DOCDIR/README.md
644 $SV_DOCDIR/protocol.md
644 $SV_DOCDIR/job.schema.json
644 $SV_DOCDIR/svdllmd.conf
EOF
)
actual=$(cd "$root" && find . \( -type f -o -type l \) -printf '%m /%P\n' | sort)
if [ "$expected" = "$actual" ]; then
  ok "installed file list and modes (16 files)"
else
  bad "installed file list and modes differ (- expected, + installed):"
  diff <(echo "$expected") <(echo "$actual") | sed -n 's/^[<>]/  &/p'
fi
check "installed README and protocol are the source tree's" \
  cmp -s "$root$SV_DOCDIR/protocol.md" "$SV_SRCDIR/schema/protocol.md"
check "no unsubstituted @VAR@ in the configured files" \
  bash -c '! grep -l "@[A-Z_]*@" "$@"' _ "$root$SV_UNITDIR/svdllmd.service" "$root$SV_TMPFILESDIR/svdllmd.conf" \
  "$root$SV_MANDIR"/man*/*

# ---- The unit's paths are the installed ones. -------------------------------------
unit=$root$SV_UNITDIR/svdllmd.service
# ExecStart= with its continuation line joined.
exec_line=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$unit" | sed -n 's/^ExecStart=//p')
read -r -a exec_argv <<<"$exec_line"
check "ExecStart= runs the installed daemon (${exec_argv[0]})" \
  test "${exec_argv[0]}" = "$SV_SBINDIR/svdllmd" -a -x "$root${exec_argv[0]}"
conf_arg=
for ((i = 1; i < ${#exec_argv[@]}; i++)); do
  [ "${exec_argv[i]}" = --config ] && conf_arg=${exec_argv[i + 1]}
done
check "ExecStart= passes --config $SV_SYSCONFDIR/svdllmd.conf, which is installed" \
  test "$conf_arg" = "$SV_SYSCONFDIR/svdllmd.conf" -a -f "$root$conf_arg"
docs_ok=true
for d in $(sed -n 's/^Documentation=//p' "$unit"); do
  case $d in
  file:*) [ -f "$root${d#file:}" ] || { echo "  $d is not installed"; docs_ok=false; } ;;
  man:*)
    page=${d#man:} name=${page%(*} sec=${page##*(}; sec=${sec%)}
    [ -f "$root$SV_MANDIR/man$sec/$name.$sec" ] || { echo "  $d is not installed"; docs_ok=false; } ;;
  *) echo "  $d: unexpected scheme"; docs_ok=false ;;
  esac
done
check "every Documentation= entry of the unit is installed" $docs_ok
rw=$(sed -n 's/^ReadWritePaths=-\{0,1\}//p' "$unit")
tmpd=$(awk '$1 == "d" {print $2}' "$root$SV_TMPFILESDIR/svdllmd.conf")
check "the tmpfiles.d rule creates the unit's ReadWritePaths= ($rw)" \
  test -n "$rw" -a "$rw" = "$SV_OUTPUTDIR" -a "$tmpd" = "$rw"
check "sysusers.d creates the unit's User= (svdllmd)" \
  bash -c 'grep -q "^User=svdllmd$" "$1" && grep -q "^u svdllmd " "$2"' _ "$unit" "$root$SV_SYSUSERSDIR/svdllmd.conf"

# ---- The installed programs run; the daemon accepts the installed config. ---------
check "installed svdllmd --version" \
  bash -c '[ "$("$1" --version)" = "svdllmd $2" ]' _ "$root$SV_SBINDIR/svdllmd" "$SV_VERSION"
check "installed svdllm-engine --help" bash -c '"$1" --help >/dev/null' _ "$root$SV_BINDIR/svdllm-engine"
mkfifo "$tmp/ready"
"$root$SV_SBINDIR/svdllmd" --config "$root$SV_SYSCONFDIR/svdllmd.conf" --socket "$tmp/s.sock" \
  --state-dir "$tmp/state" --log-level warning --ready-fd 3 3>"$tmp/ready" 2>"$tmp/daemon.err" &
daemon=$!
ready=
read -r -t 60 ready <"$tmp/ready"
check "installed svdllmd starts on the installed default config" test "$ready" = READY=1
check "installed svdllmctl pings it" \
  bash -c '"$1" --socket "$2" ping >/dev/null' _ "$root$SV_BINDIR/svdllmctl" "$tmp/s.sock"
kill -TERM "$daemon"
wait "$daemon"
rc=$?
daemon=
check "svdllmd exits 0 on SIGTERM" test "$rc" = 0
[ -s "$tmp/daemon.err" ] && sed 's/^/  daemon: /' "$tmp/daemon.err"

# ---- A second install keeps an edited config. -------------------------------------
echo "threads = 1" >>"$root$SV_SYSCONFDIR/svdllmd.conf"
"$meson" install -C "$builddir" --no-rebuild --destdir "$root" >"$tmp/install2.log" 2>&1 || cat "$tmp/install2.log"
check "a second meson install keeps the edited $SV_SYSCONFDIR/svdllmd.conf" \
  grep -q '^threads = 1$' "$root$SV_SYSCONFDIR/svdllmd.conf"

# ---- systemd-analyze on the installed unit. -----------------------------------------
if ! command -v systemd-analyze >/dev/null; then
  skip "systemd-analyze verify/security: systemd-analyze is not installed"
else
  # --root resolves ExecStart= and the unit search path inside the destdir;
  # the targets the unit refers to come from the system's own unit directory.
  vroot=$tmp/vroot
  cp -a "$root" "$vroot"
  sysunits=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
  mkdir -p "$vroot/usr/lib/systemd"
  cp -a "$sysunits/." "$vroot/usr/lib/systemd/system/" 2>/dev/null
  # Documentation=man: entries are looked up with man(1).
  if MANPATH=$root$SV_MANDIR systemd-analyze verify --root="$vroot" svdllmd.service >"$tmp/verify.out" 2>&1; then
    vrc=0
  else
    vrc=$?
  fi
  if grep -q 'sysinit.target not found\|Failed to initialize manager' "$tmp/verify.out"; then
    skip "systemd-analyze verify: cannot load the system's units here: $(head -1 "$tmp/verify.out")"
  elif [ "$vrc" = 0 ] && [ ! -s "$tmp/verify.out" ]; then
    ok "systemd-analyze verify --root=DESTDIR svdllmd.service: no finding"
  else
    bad "systemd-analyze verify (rc $vrc):"
    sed 's/^/  /' "$tmp/verify.out"
  fi
  # Overall exposure on systemd's 0..10 scale (0.9 before PrivateMounts= and
  # IPAddressDeny=, 0.6 since); --threshold is in tenths.
  score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for svdllmd.service: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    skip "systemd-analyze security --offline=true: not supported by this systemd"
  else
    check "systemd-analyze security --offline=true: exposure $score <= 0.6" \
      bash -c 'systemd-analyze security --offline=true --threshold=6 "$1" >/dev/null 2>&1' _ "$unit"
  fi
fi

# ---- sysusers.d and tmpfiles.d applied to a copy of the destdir. ----------------
if ! command -v systemd-sysusers >/dev/null || ! command -v systemd-tmpfiles >/dev/null; then
  skip "systemd-sysusers/systemd-tmpfiles --root: not installed"
elif [ "$(id -u)" != 0 ]; then
  skip "systemd-sysusers/systemd-tmpfiles --root: need root (they chown inside the root)"
else
  sroot=$tmp/sroot
  cp -a "$root" "$sroot"
  mkdir -p "$sroot/etc"
  if systemd-sysusers --root="$sroot" >"$tmp/sysusers.out" 2>&1 &&
     systemd-tmpfiles --root="$sroot" --create >"$tmp/tmpfiles.out" 2>&1; then
    uid=$(awk -F: '$1 == "svdllmd" {print $3}' "$sroot/etc/passwd")
    gid=$(awk -F: '$1 == "svdllmd" {print $3}' "$sroot/etc/group")
    home=$(awk -F: '$1 == "svdllmd" {print $6}' "$sroot/etc/passwd")
    got=$(stat -c '%a %u:%g' "$sroot$SV_OUTPUTDIR" 2>/dev/null)
    check "systemd-sysusers --root: user and group svdllmd ($uid:$gid), home /var/lib/svdllmd" \
      test -n "$uid" -a -n "$gid" -a "$home" = /var/lib/svdllmd
    check "systemd-tmpfiles --root --create: $SV_OUTPUTDIR is '2775 $uid:$gid' (got '$got')" \
      test "$got" = "2775 $uid:$gid"
  else
    bad "systemd-sysusers/systemd-tmpfiles --root:"
    sed 's/^/  /' "$tmp/sysusers.out" "$tmp/tmpfiles.out" 2>/dev/null
  fi
fi

# ---- Man pages: render without warnings; every --help flag is documented. --------
if ! command -v man >/dev/null; then
  skip "man -l: man is not installed"
else
  for p in "$root$SV_MANDIR"/man*/*; do
    LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$p" >"$tmp/man.out" 2>"$tmp/man.err"
    if [ -s "$tmp/man.err" ] || ! grep -q '^NAME' "$tmp/man.out"; then
      bad "man -l ${p##*/}:"; sed 's/^/  /' "$tmp/man.err"
    else
      ok "man -l ${p##*/} renders without warnings"
    fi
  done
fi
flags_documented() { # program, page
  local missing="" f
  for f in $("$1" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    grep -q -- "$(sed 's/-/\\\\-/g' <<<"$f")" "$2" || missing+=" $f"
  done
  [ -z "$missing" ] || echo "  not in ${2##*/}:$missing"
  [ -z "$missing" ]
}
check "svdllmd.8 documents every flag of svdllmd --help" \
  flags_documented "$root$SV_SBINDIR/svdllmd" "$root$SV_MANDIR/man8/svdllmd.8"
check "svdllmctl.1 documents every flag of svdllmctl --help" \
  flags_documented "$root$SV_BINDIR/svdllmctl" "$root$SV_MANDIR/man1/svdllmctl.1"
# Each command's own --help (svdllmctl CMD --help) lists its flags.
ctl_commands() {
  "$root$SV_BINDIR/svdllmctl" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p'
}
command_help() { # a stand-in program: svdllmctl CMD --help for every command
  local c; for c in $(ctl_commands); do "$root$SV_BINDIR/svdllmctl" "$c" --help; done
}
export -f command_help ctl_commands
export root SV_BINDIR
check "svdllmctl.1 documents every flag of every svdllmctl COMMAND --help" \
  flags_documented command_help "$root$SV_MANDIR/man1/svdllmctl.1"
check "every svdllmctl COMMAND --help exits 0 and lists the exit status" \
  bash -c 'for c in $(ctl_commands); do "$root$SV_BINDIR/svdllmctl" "$c" --help | grep -q "^  3  svdllmd unreachable" || { echo "  $c"; exit 1; }; done'
for prog in "$root$SV_BINDIR/svdllmctl" "$root$SV_BINDIR/svdllm-engine" "$root$SV_SBINDIR/svdllmd"; do
  check "${prog##*/} --version prints its name and $SV_VERSION" \
    bash -c '[ "$("$1" --version)" = "${1##*/} $2" ]' _ "$prog" "$SV_VERSION"
done
check "svdllm-engine.1 documents every flag of svdllm-engine --help" \
  flags_documented "$root$SV_BINDIR/svdllm-engine" "$root$SV_MANDIR/man1/svdllm-engine.1"
keys_documented() {
  local missing="" k
  for k in $(sed -n 's/^#\([a-z_]*\) = .*/\1/p' "$root$SV_SYSCONFDIR/svdllmd.conf"); do
    grep -q "^\.B $k\$" "$root$SV_MANDIR/man5/svdllmd.conf.5" || missing+=" $k"
  done
  [ -z "$missing" ] || echo "  not in svdllmd.conf.5:$missing"
  [ -z "$missing" ]
}
check "svdllmd.conf.5 documents every key of the default svdllmd.conf" keys_documented

# ---- Bash completion (plain bash; no bash-completion package needed). -------------
comp=$root$SV_BASHCOMPDIR/svdllmctl
complete_words() { # words of the command line, the last one being completed
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _svdllmctl; echo "${COMPREPLY[*]}"' \
    _ "$comp" "$@"
}
expect_completion() { # expected, words...
  local want=$1; shift
  local got; got=$(complete_words "$@")
  [ "$got" = "$want" ] || echo "  '$*': got '$got', expected '$want'"
  [ "$got" = "$want" ]
}
check "completion: commands" expect_completion "submit status sweep" svdllmctl s
check "completion: sweep --methods, the list's last item" expect_completion "svdllm,rom" svdllmctl sweep --methods svdllm,ro
check "completion: submit's options" expect_completion "--model --method" svdllmctl submit --m
check "completion: --method values" expect_completion "svd svdllm svdllm-update" svdllmctl submit --method svd
check "completion: list --state values" expect_completion "failed" svdllmctl --json list --state f
check "completion: an option of another command is not offered" expect_completion "--text" svdllmctl eval --te
completion_covers_help() {
  local missing="" w
  local help; help=$("$root$SV_BINDIR/svdllmctl" --help; command_help)
  for w in $(grep -o -- '--[a-z][a-z-]*' <<<"$help" | sort -u) \
           $(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p' <<<"$help"); do
    grep -q -- "\(^\|[ \"|]\)$w\([ \")|]\|$\)" "$comp" || missing+=" $w"
  done
  [ -z "$missing" ] || echo "  not completed:$missing"
  [ -z "$missing" ]
}
check "completion knows every command and flag of svdllmctl --help" completion_covers_help

echo "$passes passed, $fails failed, $skips skipped"
[ "$fails" = 0 ]
