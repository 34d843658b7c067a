# Swiftlet boots the bundled guest: bzImage and ELF vmlinux, 1 and 2 vCPUs, 64 MiB and 3.5 GiB; the guest checks
# what it sees (swiftlet.expect.*), and its reboot makes swiftlet exit 0.
. "$INTEGRATION/lib.sh"

# boot NAME KERNEL CPUS MEMORY_MIB
boot() {
    _log=$WORK/$1.console
    HEARTBEAT_LOG=$_log heartbeat swiftlet_boot "$_log" --kernel "$2" --initrd "$GUEST/initramfs.cpio" --cpus "$3" --memory "${4}M" \
        --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=sysinfo swiftlet.expect.cpus=$3 swiftlet.expect.mem_mib=$4"
    expect_status "$1.exit" $? 0 "stderr: $(tail -c 400 "$_log.err")"
    guest_results "$1" "$_log"
}

boot swiftlet-bzimage "$GUEST/bzImage" 1 256
boot swiftlet-vmlinux "$GUEST/vmlinux" 1 256
boot swiftlet-smp2 "$GUEST/bzImage" 2 256
boot swiftlet-mem64m "$GUEST/bzImage" 1 64
boot swiftlet-mem3584m "$GUEST/bzImage" 1 3584

# A console file stops at its cap (--console file=PATH,max-size=SIZE): a boot without `quiet` writes far more than
# 4 KiB; the file holds 4 KiB and one line saying the rest was dropped, and --stats counts what was dropped.
log=$WORK/capped.console
echo "step: swiftlet run --console file=$log,max-size=4K (a verbose boot)"
capped_boot() {
    "$SWIFTLET" run --console "file=$log,max-size=4K" --stats --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" \
        --cmdline "console=ttyS0 reboot=k panic=-1 swiftlet.test=hello" 2>"$log.err"
}
HEARTBEAT_LOG=$log heartbeat capped_boot
expect_status swiftlet-console-cap.exit $? 0 "stderr: $(tail -c 400 "$log.err")"
size=$(wc -c <"$log")
dropped=$(sed -n 's/^swiftlet: stats console written=[0-9]* dropped=\([0-9]*\)$/\1/p' "$log.err")
if [ "$size" -gt 4096 ] && [ "$size" -lt 4300 ] && tail -n 1 "$log" | grep -q "^\[swiftlet: the console file reached its cap of 4096 bytes"; then
    test_pass swiftlet-console-cap.file
else
    test_fail swiftlet-console-cap.file "size $size, last line: $(tail -n 1 "$log" | cut -c1-120)"
fi
check_ge swiftlet-console-cap.dropped-counted "$dropped" 1 "stats: $(grep 'stats console' "$log.err")"
