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

# check_rings: with swiftlet.expect.ring=packed|split on the command line, every virtio device the kernel drives
# must have negotiated that virtqueue layout (VIRTIO_F_RING_PACKED, bit 34: the 35th character of the features file).
check_rings() {
    _cr_want=$(param swiftlet.expect.ring)
    [ -n "$_cr_want" ] || return 0
    for _cr_dev in /sys/bus/virtio/devices/*; do
        [ -r "$_cr_dev/features" ] && [ -e "$_cr_dev/driver" ] || continue
        _cr_layout=split
        [ "$(cut -c35 "$_cr_dev/features")" = 1 ] && _cr_layout=packed
        check_eq "ring-$(basename "$_cr_dev")-$(cat "$_cr_dev/device")" "$_cr_layout" "$_cr_want"
    done
}

# finish: exit 0 when every check passed, 1 otherwise.
finish() {
    check_rings
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

# --- Networking (the net-* and iperf scenarios) -----------------------------------------------------------------------

# net_up CHECK IFACE CIDR [MTU] [MAC]: brings IFACE up with the address CIDR (and MTU when given), waits up to 5 s for
# its carrier, and checks its MAC when MAC is given (CHECK-mac). Ends the scenario when IFACE does not exist.
net_up() {
    if [ ! -d "/sys/class/net/$2" ]; then
        fail "$1" "no $2 (interfaces: $(ls /sys/class/net 2>/dev/null | tr '\n' ' '))"
        finish
    fi
    ip link set lo up 2>/dev/null
    [ -z "$5" ] || check_eq "$1-mac" "$(cat "/sys/class/net/$2/address")" "$5"
    if [ -n "$4" ]; then
        check "$1-set-mtu" ip link set "$2" mtu "$4"
        check_eq "$1-mtu" "$(cat "/sys/class/net/$2/mtu")" "$4"
    fi
    if ! _nu_out=$(ip addr add "$3" dev "$2" 2>&1 && ip link set "$2" up 2>&1); then
        fail "$1" "ip: $_nu_out"
        finish
    fi
    _nu_i=0
    while [ "$(cat "/sys/class/net/$2/carrier" 2>/dev/null)" != 1 ] && [ $_nu_i -lt 50 ]; do
        sleep 0.1
        _nu_i=$((_nu_i + 1))
    done
    check_eq "$1" "$(cat "/sys/class/net/$2/carrier" 2>/dev/null)" 1
    report "$2_features" "$(cat "/sys/class/net/$2/device/features" 2>/dev/null)"
}

# net_ping CHECK HOST [COUNT] [ping options...]: COUNT (default 3) pings of HOST must all come back.
net_ping() {
    _np_check=$1 _np_host=$2 _np_count=${3:-3}
    shift 2
    [ $# -eq 0 ] || shift
    if _np_out=$(ping -c "$_np_count" -W 5 "$@" "$_np_host" 2>&1) &&
        echo "$_np_out" | grep -q " $_np_count packets received"; then
        pass "$_np_check"
    else
        fail "$_np_check" "$(echo "$_np_out" | tail -n 3)"
    fi
}

# net_hold: fd 3 becomes a FIFO that is open for reading and writing, so it never reports end of file. busybox nc
# shuts down its sending half when its stdin ends and exits when the peer's half ends: an nc that only receives
# reads its stdin from fd 3 (<&3), or it would tell the peer it is done before it started.
net_hold() {
    [ -p /tmp/net-hold ] || mkfifo /tmp/net-hold
    exec 3<>/tmp/net-hold
}

# net_uptime_cs: /proc/uptime in centiseconds (busybox date has no sub-second clock).
net_uptime_cs() {
    read -r _nc_up _ </proc/uptime
    echo "${_nc_up%.*}${_nc_up#*.}" | sed 's/^0*//;s/^$/0/'
}

# net_progress PID WHAT: prints "net: WHAT Ns" every 2 s while PID runs (the lab's watchdog wants console output).
net_progress() {
    _pp_t=0
    while kill -0 "$1" 2>/dev/null; do
        sleep 1
        _pp_t=$((_pp_t + 1))
        [ $((_pp_t % 2)) -ne 0 ] || echo "net: $2 ${_pp_t}s"
    done
}

# net_connect send|recv HOST PORT: a TCP stream to HOST:PORT from stdin, or from it to stdout: tcppeer (1 MiB
# copies; the full initramfs has it) when there is one, else busybox nc (1 KiB copies, slow under the lab's TCG).
# (busybox timeout runs programs, not shell functions: the limit is applied here.)
net_connect() {
    if command -v tcppeer >/dev/null 2>&1; then timeout 300 tcppeer "$1" "$3" "$2"; else timeout 300 nc "$2" "$3"; fi
}

# net_send CHECK HOST PORT MIB: sends MIB MiB of /dev/urandom to HOST:PORT (the host listens and checksums what
# it gets) and reports CHECK_sha256 (what was sent) and CHECK_mbps (Mbit/s, rough: nc in the guest).
net_send() {
    net_hold
    rm -f /tmp/net-send.fifo
    mkfifo /tmp/net-send.fifo
    sha256sum </tmp/net-send.fifo | cut -d' ' -f1 >/tmp/net-send.sum &
    _ns_sum=$!
    _ns_t0=$(net_uptime_cs)
    { dd if=/dev/urandom bs=1M count="$4" 2>/dev/null | tee /tmp/net-send.fifo |
        net_connect send "$2" "$3" >/dev/null; echo $? >/tmp/net-send.rc; } &
    _ns_pid=$!
    net_progress $_ns_pid "$1: sending $4 MiB to $2:$3"
    wait $_ns_pid
    wait $_ns_sum
    _ns_t1=$(net_uptime_cs)
    check_eq "$1" "$(cat /tmp/net-send.rc)" 0
    report "$1_sha256" "$(cat /tmp/net-send.sum)"
    report "$1_mbps" "$(awk -v m="$4" -v cs=$((_ns_t1 - _ns_t0)) 'BEGIN { printf "%.0f", (cs > 0 ? m * 8 * 1.048576 * 100 / cs : 0) }')"
}

# net_receive CHECK HOST PORT MIB SHA256: receives from HOST:PORT until it closes; MIB MiB with SHA256 (when given)
# must arrive. Reports CHECK_sha256 and CHECK_mbps.
net_receive() {
    net_hold
    _nr_t0=$(net_uptime_cs)
    rm -f /tmp/net-receive.sum
    { net_connect recv "$2" "$3" <&3 | sha256sum >/tmp/net-receive.sum; } &
    _nr_pid=$!
    net_progress $_nr_pid "$1: receiving $4 MiB from $2:$3"
    wait $_nr_pid
    _nr_t1=$(net_uptime_cs)
    _nr_got=$(cut -d' ' -f1 /tmp/net-receive.sum)
    report "$1_sha256" "$_nr_got"
    if [ -n "$5" ]; then check_eq "$1" "$_nr_got" "$5"; else pass "$1"; fi
    report "$1_mbps" "$(awk -v m="$4" -v cs=$((_nr_t1 - _nr_t0)) 'BEGIN { printf "%.0f", (cs > 0 ? m * 8 * 1.048576 * 100 / cs : 0) }')"
}

# net_wait_host PORT: tells the host (a console line) that the guest waits, then waits up to 60 s for the host to
# connect to PORT and close (what the host does in between, pinging the guest, is the host's to check).
net_wait_host() {
    net_hold
    echo "net: waiting for the host on port $1"
    if timeout 60 nc -l -p "$1" <&3 >/dev/null; then pass host-done; else fail host-done "the host never connected to port $1"; fi
}

# net_offloads CHECK: with swiftlet.net.offloads=off on the command line (next to virtio_net.csum=0
# virtio_net.gso=0), checks that the driver took those parameters; reports them either way.
net_offloads() {
    _no_csum=$(cat /sys/module/virtio_net/parameters/csum 2>/dev/null)
    _no_gso=$(cat /sys/module/virtio_net/parameters/gso 2>/dev/null)
    report virtio_net_csum "${_no_csum:-none}"
    report virtio_net_gso "${_no_gso:-none}"
    if [ "$(param swiftlet.net.offloads)" = off ]; then
        check_eq "$1-csum-off" "$_no_csum" N
        check_eq "$1-gso-off" "$_no_gso" N
    fi
}

# --- Memory balloon (the balloon-* scenarios) -------------------------------------------------------------------------

# meminfo_kib FIELD: a /proc/meminfo field (MemTotal, MemFree, MemAvailable) in KiB.
meminfo_kib() { awk -v f="$1:" '$1 == f { print $2 }' /proc/meminfo; }

# balloon_tmpfs SIZE_MIB: a tmpfs at /mnt/balloon that can hold SIZE_MIB (tmpfs pages are what the scenarios
# allocate: they stay until removed, and no swap can take them).
balloon_tmpfs() {
    mkdir -p /mnt/balloon
    mountpoint -q /mnt/balloon || mount -t tmpfs -o "size=$1m" balloon /mnt/balloon
}

# balloon_fill MIB: writes MIB MiB into the tmpfs; exit status of dd.
balloon_fill() { dd if=/dev/zero of=/mnt/balloon/fill bs=1M count="$1" 2>/tmp/balloon-dd.err; }

# balloon_marker WORD: a console line the host waits for, with the guest's view of its memory.
balloon_marker() {
    echo "balloon: $1 memtotal_kib=$(meminfo_kib MemTotal) memfree_kib=$(meminfo_kib MemFree) memavailable_kib=$(meminfo_kib MemAvailable)"
}

# balloon_wait CHECK SECONDS TEST...: waits until `test TEST...` holds (re-evaluated every 0.5 s: TEST names the
# shell function balloon_now, which sets $now_kib), printing a line every 2 s for the lab's watchdog.
balloon_wait() {
    _bw_check=$1 _bw_secs=$2
    shift 2
    _bw_i=0
    while [ $_bw_i -lt $((_bw_secs * 2)) ]; do
        if "$@"; then pass "$_bw_check"; return 0; fi
        [ $((_bw_i % 4)) -ne 0 ] || balloon_marker "waiting-$_bw_check"
        sleep 0.5
        _bw_i=$((_bw_i + 1))
    done
    fail "$_bw_check" "not within ${_bw_secs}s: MemTotal $(meminfo_kib MemTotal) KiB MemFree $(meminfo_kib MemFree) KiB"
    return 1
}
