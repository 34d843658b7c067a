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
