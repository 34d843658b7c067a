#!/bin/sh
# The disk's serial (VIRTIO_BLK_T_GET_ID), as the guest kernel shows it in /sys/block/vda/serial.
#   swiftlet.expect.serial=S   must equal S (at most 20 bytes: the virtio-blk ID length)
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

require_block_device device /dev/vda
if ! [ -r /sys/block/vda/serial ]; then
    fail serial "no /sys/block/vda/serial"
    finish
fi
got=$(cat /sys/block/vda/serial 2>&1) || { fail serial "reading it failed: $got"; finish; }
report serial "$got"
want=$(param swiftlet.expect.serial)
[ -z "$want" ] || check_eq serial "$got" "$want"
finish
