#!/bin/sh
# ext4 on the first virtio disk, end to end: mkfs.ext4 on /dev/vda, mount, write a 64 MiB file of pattern blocks,
# sync, drop the page cache, read it back (from the device) and compare, unmount, e2fsck. The host then finds every block in the raw
# image (see Tests/Integration/tests/swiftlet-blk.sh).
#
# Pattern blocks (shared by the blk-* scenarios and the host checks): 4096 bytes each,
#   "SWIFTLET-PATTERN <tag> block=<8 digits> " then dots up to byte 4095, then "\n"
# so the host counts them with grep, one line per block. Here tag=ext4, blocks 0..16383.
#
# Parameters: swiftlet.blk.mib=N  size of the file in MiB (default 64)
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

dev=/dev/vda
mib=$(param swiftlet.blk.mib)
mib=${mib:-64}
blocks=$((mib * 256))

require_block_device device $dev
report vda_bytes $(($(cat /sys/block/vda/size) * 512))

check mkfs mkfs.ext4 -q -F $dev
mkdir -p /mnt
check mount mount -t ext4 $dev /mnt
if ! grep -q " /mnt ext4 " /proc/mounts; then
    fail mounted "no ext4 on /mnt: $(grep /mnt /proc/mounts)"
    finish
fi

echo "blk-ext4: writing $mib MiB"
sum_written=$(pattern ext4 0 "$blocks" | tee /mnt/pattern | md5sum | cut -d' ' -f1)
check_eq write-size "$(stat -c %s /mnt/pattern)" $((blocks * 4096))
check sync sync
echo 3 >/proc/sys/vm/drop_caches
echo "blk-ext4: reading back"
sum_read=$(md5sum </mnt/pattern | cut -d' ' -f1)
check_eq readback "$sum_read" "$sum_written"
check umount umount /mnt
if command -v e2fsck >/dev/null 2>&1; then
    check fsck e2fsck -fn $dev
fi
report blocks "$blocks"
finish
