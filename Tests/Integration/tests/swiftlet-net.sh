# virtio-net on TAP end to end: the guest's net-* scenarios (guest/scenarios) against TAP devices that this script
# creates in the machine that runs the VMM (in the lab: L1, so all traffic stays inside L1), with busybox nc and
# ping as the host's peers, and Tests/Integration/tools/tcppeer for the bulk transfers (busybox nc is too slow on the
# lab's TCG). Checks: guest and host ping each other; NET_MIB MiB (default 128) each way over TCP with
# matching sha256 sums, with the guest's offloads on (the guest's TSO frames reach the TAP: average frame > 1514
# bytes) and refused by the guest (virtio_net.csum=0 virtio_net.gso=0: every frame fits the 1500 MTU); MTU 9000
# (jumbo pings as single frames both ways, a transfer); two NICs, each on its own TAP and subnet, with its own MAC.
#
# The TAPs exist before the VMM starts (tunctl -t NAME: busybox has no `ip tuntap`; L1's busybox `ip` has no netns
# either, and L1 is isolated anyway), and the VMM attaches to them by name: Swiftlet with --net tap=NAME,mac=MAC,
# QEMU with -netdev tap,ifname=NAME,script=no,downscript=no,vhost=$NET_VHOST (default off) and virtio-net-device.
#
# NET_VMM=qemu runs the same boots and checks with QEMU's microvm (tests/qemu-net.sh does): the reference that shows
# the guest side and the checks are right.
. "$INTEGRATION/lib.sh"
vmm=${NET_VMM:-swiftlet}
vhost=${NET_VHOST:-off}
mib=${NET_MIB:-128}
t=$vmm-net
INITRD=$GUEST/initramfs-full.cpio
mac0=52:54:00:12:34:56 mac1=52:54:00:12:34:57

command -v tunctl >/dev/null 2>&1 || { test_skip "$t" "no tunctl (busybox) here to make TAP devices"; exit 0; }

# check_eq NAME GOT WANT
check_eq() { if [ "$2" = "$3" ]; then test_pass "$1"; else test_fail "$1" "got $2, want $3"; fi; }

# tap_add NAME CIDR [MTU] / tap_del NAME
tap_add() {
    tunctl -t "$1" >/dev/null && ip addr add "$2" dev "$1" && ip link set "$1" ${3:+mtu "$3"} up
}
tap_del() { ip link set "$1" down 2>/dev/null; tunctl -d "$1" >/dev/null 2>&1; }
# tapstat TAP COUNTER: a counter of /sys/class/net/TAP/statistics (rx_* counts frames the VMM wrote: the guest's TX)
tapstat() { cat "/sys/class/net/$1/statistics/$2"; }
# avg_frame RX_BYTES RX_PACKETS: average frame size, bytes
avg_frame() { awk -v b="$1" -v p="$2" 'BEGIN { printf "%d", (p > 0 ? b / p : 0) }'; }  # (parenthesised: a bare > in printf's arguments is a redirection)

# hold: fd 3 is a FIFO open both ways, never at end of file: stdin for a busybox nc that only receives (it shuts down
# its sending half when its stdin ends, and the peer then stops).
mkfifo "$WORK/hold"
exec 3<>"$WORK/hold"

# boot NAME GUEST_PARAMETERS NIC...: boots the guest in the background (NIC: TAP,MAC[,MTU]), console in
# $WORK/NAME.console; sets $vm_pid. vm_end NAME waits for it and turns its results into TEST-RESULT lines $t.NAME.*.
boot() {
    _name=$1 _params=$2
    shift 2
    _log=$WORK/$_name.console
    if [ "$vmm" = swiftlet ]; then
        for _nic in "$@"; do
            IFS=, read -r _tap _mac _mtu <<EOF2
$_nic
EOF2
            set -- "$@" --net "tap=$_tap,mac=$_mac${_mtu:+,mtu=$_mtu}"
            shift
        done
        HEARTBEAT_LOG=$_log heartbeat swiftlet_boot "$_log" --kernel "$GUEST/bzImage" --initrd "$INITRD" \
            --memory 256M --stats --cmdline "$SWIFTLET_CMDLINE_BASE $_params" "$@" &
    else
        _n=0
        for _nic in "$@"; do
            IFS=, read -r _tap _mac _mtu <<EOF2
$_nic
EOF2
            set -- "$@" -netdev "tap,id=n$_n,ifname=$_tap,script=no,downscript=no,vhost=$vhost" \
                -device "virtio-net-device,netdev=n$_n,mac=$_mac${_mtu:+,host_mtu=$_mtu}"
            shift
            _n=$((_n + 1))
        done
        HEARTBEAT_LOG=$_log heartbeat qemu_boot "$_log" 256 1 "$GUEST/bzImage" "$QEMU_CMDLINE_BASE $_params" "$@" &
    fi
    vm_pid=$!
}
vm_end() {
    wait "$vm_pid"
    expect_status "$t.$1.exit" $? 0 "stderr: $(tail -c 400 "$WORK/$1.console.err")"
    guest_results "$t.$1" "$WORK/$1.console"
    grep '^swiftlet: stats ' "$WORK/$1.console.err" 2>/dev/null | sed 's/^/step: /'
}
# wait_console NAME PATTERN: up to 60 s for a console line with PATTERN while the VMM runs; 1 if it never came.
wait_console() {
    _wc=0
    while [ $_wc -lt 300 ] && kill -0 "$vm_pid" 2>/dev/null; do
        grep -q "$2" "$WORK/$1.console" 2>/dev/null && return 0
        sleep 0.2
        _wc=$((_wc + 1))
    done
    grep -q "$2" "$WORK/$1.console" 2>/dev/null
}
# host_pings NAME CHECK IP [ping options]: 3 pings from here to the guest must all come back.
host_pings() {
    _hn=$1 _hc=$2 _hip=$3
    shift 3
    if _out=$(ping -c 3 -W 5 "$@" "$_hip" 2>&1) && echo "$_out" | grep -q ' 3 packets received'; then
        test_pass "$t.$_hn.$_hc"
    else
        test_fail "$t.$_hn.$_hc" "$(echo "$_out" | tail -n 2)"
    fi
}
# device_thread NAME FIELD: a field of swiftlet's "stats device-thread" line for the run NAME (rounds, batch_rounds,
# batch_switches).
device_thread() { sed -n "s/^swiftlet: stats device-thread .* $2=\([0-9]*\).*/\1/p" "$WORK/$1.console.err" 2>/dev/null; }

# release NAME PORT: lets a guest that waits in net_wait_host finish.
release() { nc -w 5 10.0.2.2 "$2" </dev/null >/dev/null 2>&1 || echo "step: $1: could not reach the guest's port $2"; }

# data MIB: MIB MiB on stdout: a 16 MiB random chunk (made once; /dev/urandom is slow under the lab's TCG), repeated.
chunk=$WORK/chunk
dd if=/dev/urandom of="$chunk" bs=1M count=16 2>/dev/null
data() {
    _d=0
    while [ $_d -lt "$1" ]; do
        if [ $(($1 - _d)) -ge 16 ]; then cat "$chunk"; _d=$((_d + 16)); else head -c $((($1 - _d) << 20)) "$chunk"; _d=$1; fi
    done
}

# sum_data MIB: the sha256 of data MIB, in $WORK/h2g.sum.
sum_data() { data "$1" | sha256sum | cut -d' ' -f1 >"$WORK/h2g.sum"; }

# transfer NAME MIB GUEST_PARAMETERS TAP[,MAC,MTU]: tcppeer listeners here (5001 receives and checksums, 5002 sends MIB MiB),
# the guest's net-transfer (or what GUEST_PARAMETERS names) against them, and the sums compared both ways. Sets
# g2h_avg and h2g_avg: average frame sizes on the TAP in each direction.
transfer() {
    _tn=$1 _tm=$2 _tp=$3 _tt=${4%%,*}
    echo "step: $_tn: checksumming the $_tm MiB the host sends"
    heartbeat sum_data "$_tm"
    _want=$(cat "$WORK/h2g.sum")
    rm -f "$WORK/g2h.sum" "$WORK/g2h.fifo" "$WORK/h2g.fifo"
    mkfifo "$WORK/g2h.fifo" "$WORK/h2g.fifo"
    "$TCPPEER" recv 5001 >"$WORK/g2h.fifo" &
    _rx=$!
    sha256sum <"$WORK/g2h.fifo" | cut -d' ' -f1 >"$WORK/g2h.sum" &
    "$TCPPEER" send 5002 <"$WORK/h2g.fifo" &
    _tx=$!
    data "$_tm" >"$WORK/h2g.fifo" &
    _rb0=$(tapstat "$_tt" rx_bytes) _rp0=$(tapstat "$_tt" rx_packets) _tb0=$(tapstat "$_tt" tx_bytes) _tp0=$(tapstat "$_tt" tx_packets)
    boot "$_tn" "$_tp swiftlet.net.mib=$_tm swiftlet.net.expect_sha256=$_want" "$4"
    vm_end "$_tn"
    g2h_avg=$(avg_frame $(($(tapstat "$_tt" rx_bytes) - _rb0)) $(($(tapstat "$_tt" rx_packets) - _rp0)))
    h2g_avg=$(avg_frame $(($(tapstat "$_tt" tx_bytes) - _tb0)) $(($(tapstat "$_tt" tx_packets) - _tp0)))
    echo "step: $_tn: average frame on $_tt: guest->host $g2h_avg bytes, host->guest $h2g_avg bytes;" \
        "guest's nc: $(guest_value "$WORK/$_tn.console" g2h_mbps) Mbit/s out, $(guest_value "$WORK/$_tn.console" h2g_mbps) Mbit/s in"
    kill $_rx $_tx 2>/dev/null   # (only if the guest never came; they end with their connection)
    wait
    check_eq "$t.$_tn.g2h-sha256" "$(cat "$WORK/g2h.sum" 2>/dev/null)" "$(guest_value "$WORK/$_tn.console" g2h_sha256)"
}

# --- NET_ROUNDS=N: only the offloads-on transfer, N times (the lab's stall measurement, Tests/Integration/lab) -----
if [ -n "${NET_ROUNDS:-}" ]; then
    tap_add tap0 10.0.2.1/24
    r=1
    while [ $r -le "$NET_ROUNDS" ]; do
        lab-step "net-round $r/$NET_ROUNDS" 2>/dev/null || echo "LAB-STEP net-round $r/$NET_ROUNDS"
        transfer "round$r" "$mib" "swiftlet.test=net-transfer" tap0,$mac0
        echo "NET-ROUND-DONE $r"
        r=$((r + 1))
    done
    tap_del tap0
    exit 0
fi

# --- ping both ways ----------------------------------------------------------------------------------------------
tap_add tap0 10.0.2.1/24
boot ping "swiftlet.test=net-ping swiftlet.net.ip=10.0.2.2/24 swiftlet.net.peer=10.0.2.1 swiftlet.net.mac=$mac0 swiftlet.net.wait=7777" tap0,$mac0
if wait_console ping "^net: waiting for the host"; then
    host_pings ping host-to-guest 10.0.2.2
    release ping 7777
else
    test_fail "$t.ping.host-to-guest" "the guest never waited for the host: $(tail -c 300 "$WORK/ping.console" 2>/dev/null)"
fi
vm_end ping
if [ "$vmm" = swiftlet ]; then # pings and the guest's set-up are small requests: never batched (adaptive scheduling)
    check_eq "$t.ping.device-thread-unbatched" "$(device_thread ping batch_rounds)" 0
fi

# --- Bulk transfers (NET_TRANSFERS=0 leaves them out, for quick runs) -----------------------------------------------
if [ "${NET_TRANSFERS:-1}" != 1 ]; then
    for check in transfer offloads-off mtu; do test_skip "$t.$check" "NET_TRANSFERS=0"; done
else
# --- TCP both ways with checksums, offloads on: the guest's TSO frames reach the TAP ---------------------------------
transfer transfer "$mib" "swiftlet.test=net-transfer" tap0,$mac0
if [ "$g2h_avg" -gt 1514 ]; then test_pass "$t.transfer.g2h-tso"; else
    test_fail "$t.transfer.g2h-tso" "average guest->host frame $g2h_avg bytes: the guest's TSO frames never reached the TAP"
fi
if [ "$vmm" = swiftlet ]; then # streams: the device thread yields to the vCPU (adaptive scheduling, SCHED_BATCH)
    check_ge "$t.transfer.device-thread-batched" "$(device_thread transfer batch_rounds)" 1 \
        "the device thread never ran under SCHED_BATCH during the transfer"
fi

# --- the same with the guest's offloads refused (kernel command line): every guest frame fits the MTU ---------------
transfer offloads-off "$mib" "swiftlet.test=net-transfer virtio_net.csum=0 virtio_net.gso=0 swiftlet.net.offloads=off" \
    tap0,$mac0
if [ "$g2h_avg" -gt 0 ] && [ "$g2h_avg" -le 1514 ]; then test_pass "$t.offloads-off.g2h-no-tso"; else
    test_fail "$t.offloads-off.g2h-no-tso" "average guest->host frame $g2h_avg bytes, want at most 1514"
fi
tap_del tap0

# --- MTU 9000: jumbo pings as single frames both ways, then a transfer -------------------------------------------------
tap_add tap0 10.0.2.1/24 9000
transfer mtu "$((mib / 4))" "swiftlet.test=net-mtu swiftlet.net.mtu=9000" tap0,$mac0,9000
tap_del tap0
fi

# --- two NICs: eth0 on tap0 (10.0.2.0/24), eth1 on tap1 (10.0.3.0/24), each with its MAC ------------------------------
tap_add tap0 10.0.2.1/24
tap_add tap1 10.0.3.1/24
boot two "swiftlet.test=net-two swiftlet.net.mac=$mac0 swiftlet.net.mac1=$mac1 swiftlet.net.wait=7777" \
    tap0,$mac0 tap1,$mac1
if wait_console two "^net: waiting for the host"; then
    host_pings two host-to-eth0 10.0.2.2
    host_pings two host-to-eth1 10.0.3.2
    check_eq "$t.two.tap0-sees-mac0" "$(ip neigh show 10.0.2.2 dev tap0 | grep -o "$mac0")" "$mac0"
    check_eq "$t.two.tap1-sees-mac1" "$(ip neigh show 10.0.3.2 dev tap1 | grep -o "$mac1")" "$mac1"
    release two 7777
else
    test_fail "$t.two.host-to-guest" "the guest never waited for the host: $(tail -c 300 "$WORK/two.console" 2>/dev/null)"
fi
vm_end two
tap_del tap0
tap_del tap1
