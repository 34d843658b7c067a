# Sourced by guest/build-kernel.sh and guest/build-fio.sh: messages, their one optional OUTDIR argument (or --help,
# which prints the script's header comment), and the cache root. The caller sets `prog` and `what` first.
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
info() { printf 'guest %s: %s\n' "$what" "$*"; }

[ $# -le 1 ] || die "usage: $prog [OUTDIR]"
case "${1:-}" in
    -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
    -*) die "unknown option $1 (usage: $prog [OUTDIR])" ;;
esac
outdir=${1:-}
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (apt-get install coreutils)"
cache_root=${SWIFTLET_CACHE:-${HOME:?HOME is not set and SWIFTLET_CACHE is not given}/.cache/swiftlet}

# Build requirements: `need COMMAND PACKAGE` and `need_file PATH WHAT PACKAGE` collect what is missing;
# `require_all` then names all of it with the Debian package to install, and stops.
missing=
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $1 (apt-get install $2)
"; }
need_file() { [ -e "$1" ] || missing="$missing $2 (apt-get install $3)
"; }
require_all() {
    [ -z "$missing" ] && return 0
    printf '%s: error: missing build requirements:\n%s' "$prog" "$missing" >&2
    exit 1
}

# lock_cache DIR: one build at a time per cache directory (builds are CPU- and disk-heavy); holds fd 9.
lock_cache() {
    mkdir -p "$1" || die "cannot create cache directory $1"
    exec 9>"$1/.lock"
    if ! flock -n 9; then
        info "another $what build holds $1/.lock; waiting"
        flock 9
    fi
}

# run_logged STEP COMMAND...: COMMAND's output goes to $log; on failure its last 40 lines go to stderr and the build
# stops, naming $log when the caller keeps it (log_kept=1). A step that runs long prints a progress line every 30 s
# (with the log's last line), so that a minutes-long build does not look hung to whoever watches the output.
run_logged() {
    step=$1; shift
    "$@" >>"$log" 2>&1 &
    _rl_pid=$!
    _rl_t=0
    while kill -0 "$_rl_pid" 2>/dev/null; do
        sleep 1
        _rl_t=$((_rl_t + 1))
        [ $((_rl_t % 30)) -ne 0 ] || info "... $step: ${_rl_t} s ($(tail -n 1 "$log" 2>/dev/null | cut -c1-80))"
    done
    if ! wait "$_rl_pid"; then
        tail -n 40 "$log" >&2
        die "$step failed${log_kept:+ (full log: $log)}"
    fi
}
