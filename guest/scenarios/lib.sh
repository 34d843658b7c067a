# shellcheck shell=sh
# Shared helpers for Swiftlet guest scenarios (busybox sh). Source it first:
#   . "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"
#
# Output protocol, one line each, parsed by the host:
#   SWIFTLET-RESULT test=TEST check=CHECK ok
#   SWIFTLET-RESULT test=TEST check=CHECK fail DETAIL...
#   SWIFTLET-VALUE test=TEST name=NAME value=VALUE
# init prints SWIFTLET-READY before and SWIFTLET-DONE test=TEST status=N after
# the scenario; N is the scenario's exit status (finish: 0 if every check
# passed, else 1).

SWIFTLET_TEST=${SWIFTLET_TEST:-unknown}
swiftlet_failures=0

# Collapse whitespace and cut, so a detail never breaks the one-line format.
_swiftlet_oneline() {
    printf '%s' "$*" | tr -s '\n\t\r ' '    ' | cut -c1-160
}

# pass CHECK / fail CHECK DETAIL...: report an outcome decided by the caller.
pass() {
    echo "SWIFTLET-RESULT test=$SWIFTLET_TEST check=$1 ok"
}
fail() {
    _check=$1; shift
    echo "SWIFTLET-RESULT test=$SWIFTLET_TEST check=$_check fail $(_swiftlet_oneline "${*:-failed}")"
    swiftlet_failures=$((swiftlet_failures + 1))
}

# check CHECK COMMAND [ARG...]: ok when COMMAND exits 0; otherwise fail with
# its exit status and the start of its output.
check() {
    _check=$1; shift
    if _out=$("$@" 2>&1); then
        pass "$_check"
    else
        _rc=$?
        fail "$_check" "exit=$_rc $*${_out:+: $_out}"
    fi
}

# check_eq CHECK GOT WANT
check_eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got $2 want $3"; fi
}

# check_range CHECK VALUE LO HI: integers, LO <= VALUE <= HI
check_range() {
    if [ "$2" -ge "$3" ] 2>/dev/null && [ "$2" -le "$4" ] 2>/dev/null; then
        pass "$1"
    else
        fail "$1" "got $2 want [$3, $4]"
    fi
}

# report NAME VALUE...: a measured value for the host to record.
report() {
    _name=$1; shift
    echo "SWIFTLET-VALUE test=$SWIFTLET_TEST name=$_name value=$(_swiftlet_oneline "$*" | tr ' ' '_')"
}

# param KEY: the value of the last KEY=VALUE word on the kernel command line
# (or in $SWIFTLET_CMDLINE when set, for tests outside a guest); empty if absent.
param() {
    _val=
    _line=${SWIFTLET_CMDLINE:-$(cat /proc/cmdline 2>/dev/null)}
    set -f
    for _w in $_line; do
        case $_w in "$1"=*) _val=${_w#*=} ;; esac
    done
    set +f
    printf '%s' "$_val"
}

# finish: exit 0 when every check passed, 1 otherwise.
finish() {
    [ "$swiftlet_failures" -eq 0 ]
    exit $?
}

# pattern TAG FIRST COUNT: COUNT 4 KiB pattern blocks numbered from FIRST, on stdout: "SWIFTLET-PATTERN TAG
# block=NNNNNNNN " padded with dots to 4095 bytes, then a newline. The block tests write them and the host finds them
# in the image (Tests/Integration/tests/swiftlet-blk.sh has the same generator for images it prepares).
pattern() {
    awk -v tag="$1" -v first="$2" -v n="$3" 'BEGIN {
        for (i = first; i < first + n; i++) {
            head = sprintf("SWIFTLET-PATTERN %s block=%08d ", tag, i)
            if (length(head) != hl) { hl = length(head); pad = sprintf("%" (4095 - hl) "s", ""); gsub(/ /, ".", pad) }
            printf "%s%s\n", head, pad
        }
    }'
}

# require_block_device CHECK DEV: passes CHECK when DEV is a block device; otherwise fails it, naming the block
# devices there are, and ends the scenario.
require_block_device() {
    if [ -b "$2" ]; then
        pass "$1"
    else
        fail "$1" "no $2 (block devices: $(ls /sys/block 2>/dev/null | tr '\n' ' '))"
        finish
    fi
}
