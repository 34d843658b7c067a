# The lab's peer: QEMU's microvm boots the bundled guest to its ready marker and the guest sees what it was given.
. "$INTEGRATION/lib.sh"
if ! [ -x "$(command -v "$QEMU")" ]; then test_skip qemu-boot "no $QEMU here"; exit 0; fi
log=$WORK/console
HEARTBEAT_LOG=$log heartbeat qemu_boot "$log" 256 1 "$GUEST/bzImage" \
    "$QEMU_CMDLINE_BASE swiftlet.test=sysinfo swiftlet.expect.cpus=1 swiftlet.expect.mem_mib=256"
expect_status qemu-boot.exit $? 0 "$(tail -c 300 "$log.err")"
guest_results qemu-boot "$log"
