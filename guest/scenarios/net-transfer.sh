#!/bin/sh
# virtio-net, bulk TCP both ways with checksums: the guest sends swiftlet.net.mib MiB of random bytes to the host's
# nc on port 5001 (the host checksums what arrives and compares with the guest's g2h_sha256), then receives what the
# host's nc on port 5002 sends until it closes and checks its sha256 against swiftlet.net.expect_sha256.
#   swiftlet.net.ip=CIDR (default 10.0.2.2/24)   swiftlet.net.peer=IP (default 10.0.2.1)
#   swiftlet.net.mib=N            MiB each way (default 64)
#   swiftlet.net.expect_sha256=H  sha256 of what the host sends (checked when given)
#   swiftlet.net.mtu=N            eth0's MTU (set and checked when given)
#   swiftlet.net.offloads=off     with virtio_net.csum=0 virtio_net.gso=0: checks the driver took them
# Values: g2h_sha256, g2h_mbps, h2g_sha256, h2g_mbps (Mbit/s of the whole nc run, rough), eth0 byte and packet counts.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

ip=$(param swiftlet.net.ip) peer=$(param swiftlet.net.peer) mib=$(param swiftlet.net.mib)
peer=${peer:-10.0.2.1} mib=${mib:-64}
net_up eth0 eth0 "${ip:-10.0.2.2/24}" "$(param swiftlet.net.mtu)"
net_offloads offloads
net_ping ping-host "$peer" 1
net_send g2h "$peer" 5001 "$mib"
net_receive h2g "$peer" 5002 "$mib" "$(param swiftlet.net.expect_sha256)"
for c in rx_bytes rx_packets tx_bytes tx_packets rx_errors tx_errors rx_dropped; do
    report "eth0_$c" "$(cat /sys/class/net/eth0/statistics/$c)"
done
finish
