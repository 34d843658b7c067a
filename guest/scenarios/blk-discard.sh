#!/bin/sh
# Discard (VIRTIO_BLK_F_DISCARD) on /dev/vda: write 48 MiB of pattern blocks (tag "discard", blocks 0..12287;
# format in blk-ext4.sh) with O_DIRECT, discard the first 32 MiB with blkdiscard, sync. Discarded sectors must read
# back as zeros (the device punches holes in the image) and the rest must be intact. The host then checks that the
# image's allocated size shrank to about 16 MiB and that blocks 8192..12287 are there.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

dev=/dev/vda
require_block_device device $dev


max=$(cat /sys/block/vda/queue/discard_max_bytes)
report discard_max_bytes "$max"
report discard_granularity "$(cat /sys/block/vda/queue/discard_granularity)"
report write_zeroes_max_bytes "$(cat /sys/block/vda/queue/write_zeroes_max_bytes 2>/dev/null)"
if [ "${max:-0}" -gt 0 ]; then pass discard-supported; else fail discard-supported "discard_max_bytes=$max"; finish; fi

echo "blk-discard: writing 48 MiB"
if pattern discard 0 12288 | dd of=$dev bs=1M iflag=fullblock oflag=direct conv=fsync 2>/tmp/dd.err; then
    pass write
else
    fail write "$(cat /tmp/dd.err)"
fi
check_eq written "$(dd if=$dev bs=1M count=48 iflag=direct 2>/dev/null | grep -c 'SWIFTLET-PATTERN discard block=')" 12288
check blkdiscard blkdiscard -o 0 -l $((32 << 20)) $dev
sync
zero=$(dd if=/dev/zero bs=1M count=32 2>/dev/null | md5sum | cut -d' ' -f1)
check_eq discarded-reads-zero "$(dd if=$dev bs=1M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)" "$zero"
check_eq kept "$(dd if=$dev bs=1M skip=32 count=16 iflag=direct 2>/dev/null | grep -c 'SWIFTLET-PATTERN discard block=')" 4096
finish
