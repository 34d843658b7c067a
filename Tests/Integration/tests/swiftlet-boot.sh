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
