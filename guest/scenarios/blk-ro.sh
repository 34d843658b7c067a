#!/bin/sh
# A read-only virtio disk (VIRTIO_BLK_F_RO): the kernel marks /dev/vda read-only, reads work, writes fail.
# The host put 256 pattern blocks with tag "ro" (1 MiB; format in blk-ext4.sh) at the start of the image and checks
# afterwards that the image did not change.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

dev=/dev/vda
require_block_device device $dev
check_eq sysfs-ro "$(cat /sys/block/vda/ro)" 1
check_eq getro "$(blockdev --getro $dev)" 1
check read dd if=$dev of=/dev/null bs=64k count=64 iflag=direct
check_eq read-pattern "$(dd if=$dev bs=1M count=1 iflag=direct 2>/dev/null | grep -c 'SWIFTLET-PATTERN ro block=')" 256
if out=$(dd if=/dev/zero of=$dev bs=4096 count=1 oflag=direct conv=fsync 2>&1); then
    fail write-refused "dd wrote to the read-only disk: $out"
else
    pass write-refused
    report write_error "$(echo "$out" | head -n 1)"
fi
if out=$(dd if=/dev/zero of=$dev bs=4096 count=1 seek=16 conv=fsync 2>&1); then
    fail buffered-write-refused "a buffered write to the read-only disk succeeded: $out"
else
    pass buffered-write-refused
fi
check_eq read-pattern-after "$(dd if=$dev bs=1M count=1 iflag=direct 2>/dev/null | grep -c 'SWIFTLET-PATTERN ro block=')" 256
finish
