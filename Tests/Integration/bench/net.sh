# Network benchmark, run where guests boot (the lab's L1 or a KVM host). The guest (guest/scenarios/iperf.sh, the full
# initramfs, 256 MiB, 1 vCPU) runs iperf3 against an `iperf3 -s` on the host's end of a TAP (10.0.2.1 on tap0; in the
# lab that is L1, whose image has iperf3: lab/build-l1.sh), NET_TIME seconds (default 10) guest->host, then as long
# host->guest (-R), then 50 pings (busybox ping -A) for the round trip. Per round, alternating the order:
#   swiftlet       --net tap=tap0 (offloads on)
#   qemu           virtio-net-device, -netdev tap,vhost=off (a userspace backend, like Swiftlet's)
#   qemu vhost=on  the kernel's vhost-net backend, reported as vmm=qemu under the *_vhost metric names
#   swiftlet, offloads refused by the guest (virtio_net.csum=0 virtio_net.gso=0), guest->host only
# Metrics (BENCH-SAMPLE lines):
#   net_tcp_g2h_gbps, net_tcp_h2g_gbps               iperf3's receiver figure, Gbit/s (swiftlet; qemu vhost=off)
#   net_tcp_g2h_gbps_vhost, net_tcp_h2g_gbps_vhost   the same for qemu vhost=on (vmm=qemu; no swiftlet figure)
#   net_offload_gain      swiftlet's guest->host throughput with offloads on / with them off, same round
#   net_exits_per_mib     swiftlet's --stats notifications + interrupts of net0 per MiB through eth0 (rx + tx bytes
#                         the guest counted; the pings included); QEMU has no such counter: no qemu figure
#   net_rr_latency_us     median ICMP echo round trip guest->host, microseconds (busybox ping -A: a first version of
#                         a small request/response figure; it is not TCP)
. "$INTEGRATION/lib.sh"
runs=${RUNS:-3}
secs=${NET_TIME:-10}
cmdline="console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=iperf swiftlet.net.ip=10.0.2.2/24"
cmdline="$cmdline swiftlet.iperf.server=10.0.2.1 swiftlet.iperf.time=$secs"
limit=$((2 * secs + 90))   # seconds for one boot
mac=52:54:00:12:34:56

if ! command -v iperf3 >/dev/null 2>&1; then
    echo "net bench: no iperf3 here (the lab's L1 image stages it when the host has it: apt-get install iperf3)"
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-bench-net.XXXXXX") || exit 1
tunctl -t tap0 >/dev/null && ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up || { echo "net bench: no tap0"; exit 1; }
iperf3 -s -B 10.0.2.1 >"$work/iperf3-server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; ip link set tap0 down; tunctl -d tap0 >/dev/null; rm -rf "$work"' EXIT

swiftlet_run() { # LOG EXTRA-CMDLINE
    timeout "$limit" "$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M \
        --cpus 1 --console "$1" --stats --cmdline "$cmdline $2" --net "tap=tap0,mac=$mac" 2>"$1.err"
}
qemu_run() { # LOG VHOST
    timeout "$limit" "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
        -display none -serial "file:$1" -no-reboot -L "$QEMU_FIRMWARE" \
        -netdev "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=$2" -device "virtio-net-device,netdev=n0,mac=$mac" \
        -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs-full.cpio" -append "$cmdline" 2>"$1.err"
}

# sample METRIC VMM LOG NAME UNIT: a BENCH-SAMPLE from the guest's value NAME; 1 if it is missing.
sample() {
    _v=$(guest_value "$3" "$4")
    if [ -n "$_v" ]; then echo "BENCH-SAMPLE metric=$1 vmm=$2 value=$_v unit=$5"; else
        echo "net bench: $2: no $4 from the guest: $(grep -E 'fail|SWIFTLET-DONE' "$3" | tr '\n' ' ' | cut -c1-300)" \
            "$(tail -c 300 "$3.err" 2>/dev/null)"
        return 1
    fi
}

one() { # CONFIG ROUND: swiftlet | qemu | qemu-vhost | swiftlet-offloads-off
    _log=$work/$1-$2.console
    echo "step: net bench round $2/$runs: $1"
    case $1 in
        swiftlet) HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" "" ;;
        swiftlet-offloads-off) HEARTBEAT_LOG=$_log heartbeat swiftlet_run "$_log" \
            "virtio_net.csum=0 virtio_net.gso=0 swiftlet.net.offloads=off swiftlet.iperf.dirs=g2h swiftlet.iperf.rr=0" ;;
        qemu) HEARTBEAT_LOG=$_log heartbeat qemu_run "$_log" off ;;
        qemu-vhost) HEARTBEAT_LOG=$_log heartbeat qemu_run "$_log" on ;;
    esac
    _rc=$?
    echo "step: $1 exited $_rc"
    tr -d '\r' <"$_log" >"$_log.lines" && mv "$_log.lines" "$_log"
    grep '^SWIFTLET-RESULT .* fail' "$_log" | sed 's/^/step: /'
    case $1 in
        swiftlet|qemu)
            sample net_tcp_g2h_gbps "$1" "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps "$1" "$_log" h2g_gbps Gbit/s || status=1
            sample net_rr_latency_us "$1" "$_log" rr_us us || status=1 ;;
        qemu-vhost)
            sample net_tcp_g2h_gbps_vhost qemu "$_log" g2h_gbps Gbit/s || status=1
            sample net_tcp_h2g_gbps_vhost qemu "$_log" h2g_gbps Gbit/s || status=1 ;;
        swiftlet-offloads-off)
            _on=$(guest_value "$work/swiftlet-$2.console" g2h_gbps) _off=$(guest_value "$_log" g2h_gbps)
            echo "step: swiftlet guest->host: offloads on ${_on:-?} Gbit/s, off ${_off:-?} Gbit/s"
            if [ -n "$_on" ] && [ -n "$_off" ]; then
                echo "BENCH-SAMPLE metric=net_offload_gain vmm=swiftlet value=$(awk "BEGIN { printf \"%.3f\", $_on / $_off }") unit=ratio"
            else
                status=1
            fi ;;
    esac
    if [ "$1" = swiftlet ]; then
        _line=$(grep '^swiftlet: stats device=net0 ' "$_log.err" | tail -n 1)
        _n=$(echo "$_line" | sed -n 's/.* notifications=\([0-9]*\).*/\1/p')
        _i=$(echo "$_line" | sed -n 's/.* interrupts=\([0-9]*\).*/\1/p')
        _b=$(guest_value "$_log" eth0_bytes)
        if [ -n "$_n" ] && [ -n "$_i" ] && [ -n "${_b#0}" ]; then
            echo "step: swiftlet stats: $_line; eth0 bytes $_b"
            echo "BENCH-SAMPLE metric=net_exits_per_mib vmm=swiftlet value=$(awk "BEGIN { printf \"%.2f\", ($_n + $_i) / ($_b / 1048576) }") unit=per_MiB"
        else
            echo "net bench: no usable 'swiftlet: stats device=net0' line (${_line:-none}) or eth0 byte count (${_b:-none})"
            status=1
        fi
    fi
}

status=0
i=1
while [ $i -le "$runs" ]; do
    if [ $((i % 2)) = 1 ]; then order="swiftlet qemu qemu-vhost"; else order="qemu-vhost qemu swiftlet"; fi
    for c in $order; do one $c $i; done
    one swiftlet-offloads-off $i
    i=$((i + 1))
done
exit $status
