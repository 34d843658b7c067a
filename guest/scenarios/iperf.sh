#!/bin/sh
# Network benchmark: iperf3 against the host's iperf3 server (it runs `iperf3 -s` on the TAP's address), one test
# per direction, then small request/response latency as the median ICMP echo round trip (busybox ping -A: the next
# request goes out when the reply is in; a first version of a TCP request/response figure).
#   swiftlet.net.ip=CIDR (default 10.0.2.2/24)   swiftlet.iperf.server=IP (default 10.0.2.1)
#   swiftlet.iperf.time=S     seconds per direction (default 10)
#   swiftlet.iperf.dirs=LIST  g2h (guest sends), h2g (iperf3 -R: host sends), comma-separated (default g2h,h2g)
#   swiftlet.iperf.rr=N       pings for the latency figure (default 50; 0: none)
#   swiftlet.net.offloads=off with virtio_net.csum=0 virtio_net.gso=0: checks the driver took them
# Values: DIR_gbps (the receiver's figure, Gbit/s) for each direction, rr_us (median round trip, microseconds),
# eth0_bytes (eth0's rx + tx bytes at the end, for exits per MiB). iperf3 prints its 2 s intervals as it goes
# (--forceflush), so the console never goes quiet for long.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

ip=$(param swiftlet.net.ip) server=$(param swiftlet.iperf.server) time=$(param swiftlet.iperf.time)
dirs=$(param swiftlet.iperf.dirs) rr=$(param swiftlet.iperf.rr)
server=${server:-10.0.2.1} time=${time:-10} dirs=${dirs:-g2h,h2g} rr=${rr:-50}
if ! command -v iperf3 >/dev/null 2>&1; then
    fail iperf3 "no iperf3 in this initramfs (make guest stages it in initramfs-full.cpio)"
    finish
fi
net_up eth0 eth0 "${ip:-10.0.2.2/24}"
net_offloads offloads
net_ping ping-host "$server" 1
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
if [ "$rr" -gt 0 ]; then
    echo "iperf: $rr pings for the round trip"
    ping -A -c "$rr" -W 5 "$server" >/tmp/ping.out 2>&1
    n=$(grep -c 'time=' /tmp/ping.out)
    if [ "$n" -gt 0 ]; then
        pass rr
        report rr_us "$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' /tmp/ping.out | sort -n |
            awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f", m * 1000 }')"
    else
        fail rr "no replies: $(tail -n 2 /tmp/ping.out)"
    fi
fi
report eth0_bytes $(($(cat /sys/class/net/eth0/statistics/rx_bytes) + $(cat /sys/class/net/eth0/statistics/tx_bytes)))
finish
