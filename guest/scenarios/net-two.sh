#!/bin/sh
# Two virtio-net NICs: eth0 and eth1 in command-line order, each with its MAC, on its own subnet; each pings its own
# peer; then (with swiftlet.net.wait) the guest waits for the host to ping both and say it is done.
#   swiftlet.net.ip=CIDR, swiftlet.net.peer=IP, swiftlet.net.mac=MAC      eth0 (defaults 10.0.2.2/24, 10.0.2.1)
#   swiftlet.net.ip1=CIDR, swiftlet.net.peer1=IP, swiftlet.net.mac1=MAC   eth1 (defaults 10.0.3.2/24, 10.0.3.1)
#   swiftlet.net.wait=PORT   as net-ping
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

ip=$(param swiftlet.net.ip) peer=$(param swiftlet.net.peer)
ip1=$(param swiftlet.net.ip1) peer1=$(param swiftlet.net.peer1) wait=$(param swiftlet.net.wait)
net_up eth0 eth0 "${ip:-10.0.2.2/24}" "" "$(param swiftlet.net.mac)"
net_up eth1 eth1 "${ip1:-10.0.3.2/24}" "" "$(param swiftlet.net.mac1)"
[ ! -e /sys/class/net/eth2 ] || fail no-eth2 "a third interface eth2 exists"
net_ping ping-peer0 "${peer:-10.0.2.1}" 3 -I eth0
net_ping ping-peer1 "${peer1:-10.0.3.1}" 3 -I eth1
for i in eth0 eth1; do
    report "${i}_rx_packets" "$(cat /sys/class/net/$i/statistics/rx_packets)"
    report "${i}_tx_packets" "$(cat /sys/class/net/$i/statistics/tx_packets)"
done
[ -z "$wait" ] || net_wait_host "$wait"
finish
