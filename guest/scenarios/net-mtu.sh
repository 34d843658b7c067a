#!/bin/sh
# virtio-net with jumbo frames: eth0 at swiftlet.net.mtu (default 9000); 4 pings of 8000 bytes must come back, each
# as one frame (eth0's tx and rx packet counters grow by at most 4 + 2 each: no IP fragments); then a TCP transfer
# both ways with checksums, like net-transfer (ports 5001 and 5002).
#   swiftlet.net.ip, swiftlet.net.peer, swiftlet.net.mib (default 16), swiftlet.net.expect_sha256: as net-transfer
#   swiftlet.net.mtu=N (default 9000)   swiftlet.net.ping_size=S (default 8000)
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

ip=$(param swiftlet.net.ip) peer=$(param swiftlet.net.peer) mib=$(param swiftlet.net.mib)
mtu=$(param swiftlet.net.mtu) size=$(param swiftlet.net.ping_size)
peer=${peer:-10.0.2.1} mib=${mib:-16} mtu=${mtu:-9000} size=${size:-8000}
net_up eth0 eth0 "${ip:-10.0.2.2/24}" "$mtu"
net_ping ping-host "$peer" 1
tx0=$(cat /sys/class/net/eth0/statistics/tx_packets) rx0=$(cat /sys/class/net/eth0/statistics/rx_packets)
net_ping ping-jumbo "$peer" 4 -s "$size"
tx=$(($(cat /sys/class/net/eth0/statistics/tx_packets) - tx0))
rx=$(($(cat /sys/class/net/eth0/statistics/rx_packets) - rx0))
# Unfragmented, 4 pings are 4 frames each way (a stray ARP or two may join them); fragmented at 1500 they would be 24.
check_range jumbo-tx-frames "$tx" 4 8
check_range jumbo-rx-frames "$rx" 4 8
net_send g2h "$peer" 5001 "$mib"
net_receive h2g "$peer" 5002 "$mib" "$(param swiftlet.net.expect_sha256)"
finish
