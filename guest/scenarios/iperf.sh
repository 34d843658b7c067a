#!/bin/sh
# Network benchmark: iperf3 against the host's iperf3 server (it runs `iperf3 -s` on the TAP's address), one test
# per direction, then small TCP request/response latency against the host's `tcppeer echo` (tcppeer rr: one small
# message out, the same back, TCP_NODELAY, the median of N round trips), and the ICMP echo round trip for reference
# (busybox ping -A).
#   swiftlet.net.ip=CIDR (default 10.0.2.2/24)   swiftlet.iperf.server=IP (default 10.0.2.1)
#   swiftlet.iperf.time=S     seconds per direction (default 10)
#   swiftlet.iperf.dirs=LIST  g2h (guest sends), h2g (iperf3 -R: host sends), comma-separated (default g2h,h2g)
#   swiftlet.iperf.rr=N       TCP round trips for the latency figure (default 2000; 0: no latency figures)
#   swiftlet.iperf.rrsize=B   bytes per request and per response (1 to 64, default 1)
#   swiftlet.iperf.rrport=P   the host's tcppeer echo port (default 5003)
#   swiftlet.iperf.settle=S   seconds of quiet before and after the transfers (default 0), with a console line
#                             "SWIFTLET-MARK transfer-start|transfer-end" at each: the host marks its trace there
#   swiftlet.net.offloads=off with virtio_net.csum=0 virtio_net.gso=0: checks the driver took them
# Values: DIR_gbps (the receiver's figure, Gbit/s) for each direction, rr_us (median TCP round trip, microseconds),
# ping_us (median ICMP round trip), transfer_bytes and transfer_interrupts (eth0's rx + tx bytes and the NIC's
# interrupts in /proc/interrupts, from transfer-start to transfer-end), net_mmio (the NIC's virtio-mmio base address,
# from /proc/iomem), net_irq, eth0_bytes (rx + tx bytes at the end). iperf3 prints its 2 s intervals as it goes
# (--forceflush), so the console never goes quiet for long.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

ip=$(param swiftlet.net.ip) server=$(param swiftlet.iperf.server) time=$(param swiftlet.iperf.time)
dirs=$(param swiftlet.iperf.dirs) rr=$(param swiftlet.iperf.rr) rrsize=$(param swiftlet.iperf.rrsize)
rrport=$(param swiftlet.iperf.rrport) settle=$(param swiftlet.iperf.settle)
server=${server:-10.0.2.1} time=${time:-10} dirs=${dirs:-g2h,h2g} rr=${rr:-2000} rrsize=${rrsize:-1}
rrport=${rrport:-5003} settle=${settle:-0}
if ! command -v iperf3 >/dev/null 2>&1; then
    fail iperf3 "no iperf3 in this initramfs (make guest stages it in initramfs-full.cpio)"
    finish
fi
net_up eth0 eth0 "${ip:-10.0.2.2/24}"
net_offloads offloads
net_ping ping-host "$server" 1

# The NIC's interrupt line and register window, for the host to pick its events out of a KVM trace.
nic=$(readlink -f /sys/class/net/eth0/device)           # .../virtio-mmio.0/virtio0
irq_name=${nic##*/} platform=$(basename "$(dirname "$nic")")
net_irq=$(awk -v n="$irq_name" '$NF == n { sub(":", "", $1); print $1 }' /proc/interrupts)
report net_irq "$net_irq"
report net_mmio "0x$(awk -v p="$platform" '$NF == p { split($1, r, "-"); print r[1]; exit }' /proc/iomem)"
eth0_bytes() { echo $(($(cat /sys/class/net/eth0/statistics/rx_bytes) + $(cat /sys/class/net/eth0/statistics/tx_bytes))); }
nic_interrupts() { awk -v n="$irq_name" '$NF == n { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' /proc/interrupts; }
if [ "$settle" -gt 0 ]; then echo "SWIFTLET-MARK transfer-start"; sleep "$settle"; fi
bytes0=$(eth0_bytes) interrupts0=$(nic_interrupts)
for dir in $(echo "$dirs" | tr ',' ' '); do
    case $dir in
        g2h) reverse= ;;
        h2g) reverse=-R ;;
        *) fail "iperf-$dir" "unknown direction (g2h, h2g)"; continue ;;
    esac
    echo "iperf: $dir for ${time}s against $server"
    out=/tmp/iperf-$dir.out
    # The server may still be finishing the previous test: a few tries.
    try=0
    while :; do
        timeout $((time + 30)) iperf3 -c "$server" $reverse -t "$time" -i 2 -f m --forceflush 2>&1 | tee "$out"
        grep -q ' receiver$' "$out" && break
        try=$((try + 1))
        [ $try -lt 3 ] || break
        sleep 1
    done
    # "[  5]   0.00-10.00  sec   228 MBytes   191 Mbits/sec    receiver"
    mbps=$(awk '/ receiver$/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") v = $(i - 1) } END { print v }' "$out")
    if [ -n "$mbps" ]; then
        pass "iperf-$dir"
        report "${dir}_gbps" "$(awk -v m="$mbps" 'BEGIN { printf "%.3f", m / 1000 }')"
    else
        fail "iperf-$dir" "no receiver line: $(tail -n 3 "$out")"
    fi
done
report transfer_bytes $(($(eth0_bytes) - bytes0))
report transfer_interrupts $(($(nic_interrupts) - interrupts0))
if [ "$settle" -gt 0 ]; then sleep "$settle"; echo "SWIFTLET-MARK transfer-end"; fi
if [ "$rr" -gt 0 ]; then
    echo "iperf: $rr TCP round trips of $rrsize bytes against $server:$rrport"
    out=$(timeout 120 tcppeer rr "$rrport" "$server" "$rr" "$rrsize" 2>&1)
    echo "$out"
    median=$(echo "$out" | sed -n 's/^rr: .* median_us=\([0-9.]*\) .*/\1/p')
    if [ -n "$median" ]; then
        pass rr
        report rr_us "$median"
    else
        fail rr "tcppeer rr: $(echo "$out" | tail -n 2)"
    fi
    echo "iperf: 50 pings for the ICMP round trip"
    ping -A -c 50 -W 5 "$server" >/tmp/ping.out 2>&1
    if grep -q 'time=' /tmp/ping.out; then
        report ping_us "$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' /tmp/ping.out | sort -n |
            awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f", m * 1000 }')"
    else
        fail ping-rr "no replies: $(tail -n 2 /tmp/ping.out)"
    fi
fi
report eth0_bytes "$(eth0_bytes)"
finish
