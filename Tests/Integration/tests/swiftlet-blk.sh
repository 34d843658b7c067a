# virtio-blk end to end: the guest's blk-* scenarios (guest/scenarios) on raw image files, and the host checks the
# images afterwards: ext4 with a 64 MiB file of pattern blocks (every block in the raw image), a read-only disk that
# refuses writes and stays unchanged, discard that punches holes (allocated blocks shrink), two disks in order with
# their own sizes and contents, the serial (GET_ID), and the exclusive lock on a writable image.
#
# BLK_VMM=qemu runs the same boots and checks with QEMU's microvm (tests/qemu-blk.sh does): the reference that shows
# the guest side and the checks are right. Images are sparse files in $WORK (in the lab: L1's RAM).
. "$INTEGRATION/lib.sh"
vmm=${BLK_VMM:-swiftlet}
t=$vmm-blk
# The initramfs with mkfs.ext4 (qemu_boot reads INITRD too).
INITRD=$GUEST/initramfs-full.cpio

# GNU grep may take a disk image for binary (with -o it would then print only "binary file matches"): -a says it
# is text. Busybox grep has no -a and always reads text.
ga=
if echo x | grep -a -q x 2>/dev/null; then ga=-a; fi

# pattern TAG FIRST COUNT: COUNT pattern blocks numbered from FIRST, the format of guest/scenarios/blk-ext4.sh:
# 4096 bytes, "SWIFTLET-PATTERN TAG block=NNNNNNNN " and dots, ending in a newline.
pattern() {
    awk -v tag="$1" -v first="$2" -v n="$3" 'BEGIN {
        for (i = first; i < first + n; i++) {
            head = sprintf("SWIFTLET-PATTERN %s block=%08d ", tag, i)
            if (length(head) != hl) { hl = length(head); pad = sprintf("%" (4095 - hl) "s", ""); gsub(/ /, ".", pad) }
            printf "%s%s\n", head, pad
        }
    }'
}
# blocks FILE TAG: how many lines of FILE hold a pattern block with TAG. The NUL bytes go first: the images are
# mostly zeros, which busybox grep reads as very long lines, 30 times slower.
blocks() { tr -d '\0' <"$1" | LC_ALL=C grep $ga -c "SWIFTLET-PATTERN $2 block="; }
# block_numbers FILE TAG: "ALL/DIFFERENT": how many pattern blocks with TAG FILE holds, and how many different
# block numbers among them (equal when none is there twice).
block_numbers() {
    tr -d '\0' <"$1" | LC_ALL=C grep $ga -o "SWIFTLET-PATTERN $2 block=[0-9]*" >"$WORK/numbers"
    echo "$(wc -l <"$WORK/numbers" | tr -d ' ')/$(sort -u "$WORK/numbers" | wc -l | tr -d ' ')"
    rm -f "$WORK/numbers"
}
# tag_counts FILE TAG...: blocks FILE TAG for each TAG, joined by /.
tag_counts() {
    _tf=$1 _tc=''
    shift
    for _tt in "$@"; do _tc=$_tc/$(blocks "$_tf" "$_tt"); done
    echo "${_tc#/}"
}
# blocks_at FILE SKIP_64K TAG: pattern blocks with TAG in the 64 KiB at SKIP_64K * 64 KiB of FILE.
blocks_at() { dd if="$1" bs=64k skip="$2" count=1 2>/dev/null | tr -d '\0' | LC_ALL=C grep $ga -c "SWIFTLET-PATTERN $3 block="; }
# put FILE SKIP_64K TAG COUNT: COUNT pattern blocks at SKIP_64K * 64 KiB of FILE, which keeps its size.
put() { pattern "$3" 0 "$4" | dd of="$1" bs=64k seek="$2" iflag=fullblock conv=notrunc 2>/dev/null; }
# allocated_kib FILE
allocated_kib() { echo $(($(stat -c %b "$1") * $(stat -c %B "$1") / 1024)); }
# check_eq NAME GOT WANT
check_eq() { if [ "$2" = "$3" ]; then test_pass "$1"; else test_fail "$1" "got $2, want $3"; fi; }
# expect NAME WANT COMMAND...: check_eq on COMMAND's output. Image scans take seconds in the lab: run it under
# heartbeat.
expect() { _en=$1 _ew=$2; shift 2; check_eq "$_en" "$("$@")" "$_ew"; }

# vm NAME GUEST_PARAMETERS DISK...: boots the guest with the disks (swiftlet's --disk syntax:
# PATH[,readonly=on][,id=SERIAL]) and turns its results into TEST-RESULT lines $t.NAME.*.
vm() {
    _name=$1 _params=$2
    shift 2
    _log=$WORK/$_name.console
    if [ "$vmm" = swiftlet ]; then
        for _disk in "$@"; do set -- "$@" --disk "$_disk"; shift; done
        HEARTBEAT_LOG=$_log heartbeat swiftlet_boot "$_log" --kernel "$GUEST/bzImage" \
            --initrd "$INITRD" --memory 256M --cmdline "$SWIFTLET_CMDLINE_BASE $_params" "$@"
    else
        _n=0
        for _disk in "$@"; do
            set -- "$@" $(qemu_disk_args $_n "$_disk")
            shift
            _n=$((_n + 1))
        done
        HEARTBEAT_LOG=$_log heartbeat qemu_boot "$_log" 256 1 "$GUEST/bzImage" "$QEMU_CMDLINE_BASE $_params" "$@"
    fi
    expect_status "$t.$_name.exit" $? 0 "stderr: $(tail -c 400 "$_log.err")"
    guest_results "$t.$_name" "$_log"
}
# qemu_disk_args N PATH[,readonly=on][,id=SERIAL]: QEMU's options for that disk. Same caching as Swiftlet (the
# host page cache: cache=writeback, I/O threads); discard=unmap so that discard punches holes as Swiftlet does.
qemu_disk_args() {
    _path=${2%%,*} _drive='' _dev=''
    case ",$2," in *,readonly=on,*) _drive=,readonly=on ;; esac
    _id=$(echo ",$2," | sed -n 's/.*,id=\([^,]*\),.*/\1/p')
    [ -z "$_id" ] || _dev=,serial=$_id
    echo "-drive id=d$1,file=$_path,format=raw,if=none,cache=writeback,aio=threads,discard=unmap$_drive" \
        "-device virtio-blk-device,drive=d$1$_dev"
}

# --- ext4: mkfs, a 64 MiB file of pattern blocks, read back, e2fsck; every block is in the image -------------------
img=$WORK/ext4.img
truncate -s 128M "$img"
vm ext4 "swiftlet.test=blk-ext4 swiftlet.blk.mib=64" "$img"
heartbeat expect "$t.ext4.image-blocks" 16384/16384 block_numbers "$img" ext4
rm -f "$img"

# --- read-only: reads work, writes fail, the image does not change ---------------------------------------------
img=$WORK/ro.img
truncate -s 16M "$img"
put "$img" 0 ro 256
sum=$(md5sum <"$img")
vm ro "swiftlet.test=blk-ro" "$img,readonly=on"
check_eq "$t.ro.image-unchanged" "$(md5sum <"$img")" "$sum"
rm -f "$img"

# --- discard: 48 MiB written, the first 32 MiB discarded: about 16 MiB stay allocated -----------------------------
img=$WORK/discard.img
truncate -s 64M "$img"
vm discard "swiftlet.test=blk-discard" "$img"
kib=$(allocated_kib "$img")
echo "step: discard image: $kib KiB allocated"
if [ "$kib" -ge $((16 * 1024)) ] && [ "$kib" -le $((18 * 1024)) ]; then test_pass "$t.discard.image-shrank"; else
    test_fail "$t.discard.image-shrank" "$kib KiB allocated after writing 48 MiB and discarding 32 MiB, want 16-18 MiB"
fi
heartbeat expect "$t.discard.image-kept" 4096/4096 block_numbers "$img" discard
rm -f "$img"

# --- two disks: /dev/vda and /dev/vdb in order, sizes, own contents; writes land in the right image --------------
a=$WORK/a.img b=$WORK/b.img
truncate -s 64M "$a"
truncate -s 32M "$b"
put "$a" 0 diska 16
put "$b" 0 diskb 16
vm two "swiftlet.test=blk-two swiftlet.expect.vda_mib=64 swiftlet.expect.vdb_mib=32" "$a" "$b"
check_eq "$t.two.a-at-1m" "$(blocks_at "$a" 16 wrotea)" 16
check_eq "$t.two.a-at-end" "$(blocks_at "$a" 1023 wrotea)" 16
check_eq "$t.two.b-at-1m" "$(blocks_at "$b" 16 wroteb)" 16
check_eq "$t.two.b-at-end" "$(blocks_at "$b" 511 wroteb)" 16
heartbeat expect "$t.two.a-only-a" 0/0/16/32 tag_counts "$a" wroteb diskb diska wrotea
heartbeat expect "$t.two.b-only-b" 0/0/16/32 tag_counts "$b" wrotea diska diskb wroteb
rm -f "$a" "$b"

# --- serial: GET_ID returns the disk's id (20 bytes, the most virtio-blk has room for) -----------------------------
img=$WORK/id.img
truncate -s 16M "$img"
vm id "swiftlet.test=blk-id swiftlet.expect.serial=swiftlet-serial-0020" "$img,id=swiftlet-serial-0020"

# --- lock: while one VMM has the image open for writing, a second one must refuse it ------------------------------
log=$WORK/hold.console
if [ "$vmm" = swiftlet ]; then
    "$SWIFTLET" run --console "$log" --kernel "$GUEST/bzImage" --initrd "$INITRD" --memory 256M \
        --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=hold swiftlet.hold=60" --disk "$img" 2>"$log.err" &
else
    "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -nodefaults -no-user-config -display none \
        -serial "file:$log" -no-reboot -L "$QEMU_FIRMWARE" -kernel "$GUEST/bzImage" -initrd "$INITRD" \
        -append "$QEMU_CMDLINE_BASE swiftlet.test=hold swiftlet.hold=60" $(qemu_disk_args 0 "$img") 2>"$log.err" &
fi
holder=$!
echo "step: lock: first $vmm (pid $holder) holds $img"
i=0
while [ $i -lt 300 ] && kill -0 $holder 2>/dev/null && ! grep -q '^hold: ' "$log" 2>/dev/null; do
    sleep 0.2
    i=$((i + 1))
    [ $((i % 15)) -ne 0 ] || echo "step: ... lock: waiting for the first $vmm's guest ($((i / 5)) s)"
done
if grep -q '^hold: ' "$log" 2>/dev/null; then
    echo "step: lock: second $vmm on the same image"
    err=$WORK/second.err
    if [ "$vmm" = swiftlet ]; then
        timeout 60 "$SWIFTLET" run --console none --kernel "$GUEST/bzImage" --initrd "$INITRD" \
            --memory 256M --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=ready" --disk "$img" 2>"$err"
        rc=$?
    else
        timeout 60 "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -nodefaults -no-user-config \
            -display none -serial none -no-reboot -L "$QEMU_FIRMWARE" -kernel "$GUEST/bzImage" \
            -initrd "$INITRD" -append "$QEMU_CMDLINE_BASE swiftlet.test=ready" \
            $(qemu_disk_args 0 "$img") 2>"$err"
        rc=$?
    fi
    echo "step: lock: second $vmm exited $rc"
    expect_error "$t.lock.second-writer-refused" $rc "$err" "[Ll]ock"
else
    test_fail "$t.lock.holder-started" "the first $vmm did not start its guest: $(tail -c 300 "$log.err" 2>/dev/null)"
fi
kill -TERM $holder 2>/dev/null
wait $holder
echo "step: lock: first $vmm stopped"
rm -f "$img"
