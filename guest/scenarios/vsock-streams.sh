#!/bin/sh
# virtio-vsock without the agent: the guest's own streams through the device.
#   1. guest -> host: vsockpeer sends 8 MiB to host port 5000 (the VMM's SOCKET_5000 listener)
#   2. host -> guest: vsockpeer listens on port 6000 (prints "vsock: listening"), receives until the host closes
#   3. a connection to host port 5999, where nothing listens, is refused
# Each vsockpeer line is reported as a value (bytes and FNV-1a checksum), so the host can compare its own end.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

if [ -e /dev/vsock ]; then pass vsock-device; else fail vsock-device "no /dev/vsock: the driver found no device"; fi
out=$(vsockpeer connect vsock:2:5000 send 8M 2>&1)
case $out in *bytes=8388608*) pass g2h-sent ;; *) fail g2h-sent "$out" ;; esac
report g2h "$(echo "$out" | sed 's/ ns=.*//; s/^vsockpeer: //; s/ /,/g')"
echo "vsock: listening"
out=$(vsockpeer listen vsock:6000 recv 2>&1)
case $out in *bytes=*) pass h2g-received ;; *) fail h2g-received "$out" ;; esac
report h2g "$(echo "$out" | sed 's/ ns=.*//; s/^vsockpeer: //; s/ /,/g')"
out=$(vsockpeer connect vsock:2:5999 recv 2>&1)
case $out in *refused*) pass refused ;; *) fail refused "$out" ;; esac
finish
