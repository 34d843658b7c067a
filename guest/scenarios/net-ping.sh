#!/bin/sh
# virtio-net, first contact: eth0 up with an address, the guest pings the host, then (with swiftlet.net.wait) waits
# for the host to ping it and say it is done.
#   swiftlet.net.ip=CIDR      eth0's address (default 10.0.2.2/24)
#   swiftlet.net.peer=IP      the host's end of the TAP (default 10.0.2.1)
#   swiftlet.net.mac=MAC      eth0's expected MAC (checked when given)
#   swiftlet.net.wait=PORT    after pinging, print "net: waiting for the host on port PORT" and wait (60 s at most)
#                             for the host to connect there and close
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

ip=$(param swiftlet.net.ip) peer=$(param swiftlet.net.peer) wait=$(param swiftlet.net.wait)
net_up eth0 eth0 "${ip:-10.0.2.2/24}" "" "$(param swiftlet.net.mac)"
[ ! -e /sys/class/net/eth1 ] || fail no-eth1 "a second interface eth1 exists"
net_offloads offloads
net_ping ping-host "${peer:-10.0.2.1}" 3
report eth0_rx_packets "$(cat /sys/class/net/eth0/statistics/rx_packets)"
report eth0_tx_packets "$(cat /sys/class/net/eth0/statistics/tx_packets)"
[ -z "$wait" ] || net_wait_host "$wait"
finish
