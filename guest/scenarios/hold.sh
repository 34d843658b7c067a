#!/bin/sh
# Keeps the guest running for a while, printing a line every second, so that the host can do something while the
# VMM runs (the block device lock test opens the same image a second time).
#   swiftlet.hold=S   seconds (default 30)
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

secs=$(param swiftlet.hold)
secs=${secs:-30}
pass holding
i=0
while [ $i -lt "$secs" ]; do
    echo "hold: ${i}s"
    sleep 1
    i=$((i + 1))
done
finish
