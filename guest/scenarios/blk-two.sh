#!/bin/sh
# Two virtio disks: /dev/vda and /dev/vdb in command-line order, with their sizes and their own contents.
#   swiftlet.expect.vda_mib=N, swiftlet.expect.vdb_mib=M   sizes in MiB (checked when given)
# The host put 16 pattern blocks (format in blk-ext4.sh) with tag "diska" at the start of the first image and
# "diskb" at the start of the second. The guest checks each disk has its own, then writes 16 blocks tagged
# "wrotea"/"wroteb" at 1 MiB and 16 more in the last 64 KiB of each disk (O_DIRECT, fsync); the host finds them at
# those offsets, in the right image only.
# shellcheck source=lib.sh
. "${SWIFTLET_SCENARIOS:-/scenarios}/lib.sh"

# count DEV SKIP_64K TAG: pattern blocks with TAG in the 64 KiB at SKIP_64K * 64 KiB of DEV, read with O_DIRECT.
count() {
    dd if="$1" bs=64k skip="$2" count=1 iflag=direct 2>/dev/null | grep -c "SWIFTLET-PATTERN $3 block="
}

for d in vda vdb; do
    require_block_device $d /dev/$d
    bytes=$(($(cat /sys/block/$d/size) * 512))
    report ${d}_bytes "$bytes"
    want=$(param swiftlet.expect.${d}_mib)
    [ -z "$want" ] || check_eq $d-size "$bytes" $((want << 20))
done
[ -e /dev/vdc ] && fail no-vdc "a third disk /dev/vdc exists"

check_eq vda-own "$(count /dev/vda 0 diska)" 16
check_eq vda-not-b "$(count /dev/vda 0 diskb)" 0
check_eq vdb-own "$(count /dev/vdb 0 diskb)" 16
check_eq vdb-not-a "$(count /dev/vdb 0 diska)" 0

for d in vda vdb; do
    tag=wrote${d#vd}
    last=$(($(cat /sys/block/$d/size) * 512 / 65536 - 1))
    for at in 16 "$last"; do
        if pattern "$tag" 0 16 | dd of=/dev/$d bs=64k seek="$at" count=1 iflag=fullblock oflag=direct conv=notrunc,fsync 2>/tmp/dd.err
        then pass $d-write-$at; else fail $d-write-$at "$(cat /tmp/dd.err)"; fi
    done
done
sync
echo 3 >/proc/sys/vm/drop_caches
for d in vda vdb; do
    last=$(($(cat /sys/block/$d/size) * 512 / 65536 - 1))
    check_eq $d-readback "$(count /dev/$d 16 wrote${d#vd})" 16
    check_eq $d-readback-end "$(count /dev/$d "$last" wrote${d#vd})" 16
done
finish
