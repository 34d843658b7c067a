# test-timeout: 900
# virtio-blk with the io_uring engine: the swiftlet-blk suite again (its scenarios and host checks: ext4 with a
# 64 MiB file of pattern blocks, read-only, discard, two disks, the serial, the image lock) with engine=io_uring on
# every --disk, so that up to Block.ringDepth requests are in flight at once and complete out of order. Results are
# named io_uring.swiftlet-blk.*. One more boot checks that the disk did run io_uring (its --stats line says
# engine=io_uring: no fallback to the synchronous engine), and that fio's random writes at iodepth 32 come back.
#
# The suites run unchanged through a wrapper in front of swiftlet that appends ",engine=io_uring" to each run's --disk
# (a restore's disks keep the engine the snapshot saved). URING_SUITES (default: swiftlet-blk) picks suites;
# swiftlet-snapshot under it snapshots a VM whose disk has requests in flight (they complete before the pause ends).
. "$INTEGRATION/lib.sh"

wrapper=$WORK/swiftlet-io_uring
cat >"$wrapper" <<EOF2
#!/bin/sh
# swiftlet with every disk on the io_uring engine (tests/swiftlet-io_uring.sh).
prev=
for arg do
    shift
    # run's --disk PATH[,...]; not restore's --disk INDEX=PATH (a restored disk keeps the snapshot's engine).
    case \$prev:\$arg in --disk:[0-9]*=*) ;; --disk:*) arg="\$arg,engine=io_uring" ;; esac
    prev=\$arg
    set -- "\$@" "\$arg"
done
exec "$SWIFTLET" "\$@"
EOF2
chmod +x "$wrapper"

described=$("$wrapper" describe --kernel "$GUEST/bzImage" --disk "$WORK/none.img" 2>&1)
case $described in
    *"backend blk0 $WORK/none.img readonly=off serial=- event-idx=on engine=io_uring packed=on"*) test_pass io_uring.wrapper ;;
    *) test_fail io_uring.wrapper "describe said: $described" ;;
esac

# The engine in use, and fio at iodepth 32 (random 4 KiB writes, then reads) on it.
img=$WORK/fio.img
dd if=/dev/zero of="$img" bs=1M count=64 2>/dev/null
log=$WORK/engine.console
HEARTBEAT_LOG=$log heartbeat swiftlet_boot "$log" --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" \
    --memory 256M --stats --disk "$img,engine=io_uring" \
    --cmdline "$SWIFTLET_CMDLINE_BASE swiftlet.test=fio swiftlet.fio=randwrite,randread swiftlet.fio.runtime=2 swiftlet.fio.ramp=0 swiftlet.fio.iodepth=32"
rc=$?
stats=$(grep '^swiftlet: stats device=blk0 ' "$log.err" | tail -n 1)
case $stats in
    *" engine=io_uring"*) test_pass io_uring.engine-in-use ;;
    *) test_fail io_uring.engine-in-use "exit $rc; stats line: ${stats:-none}; stderr: $(head -c 300 "$log.err")" ;;
esac
if grep -q 'io_uring is not available' "$log.err"; then test_fail io_uring.no-fallback "$(grep io_uring "$log.err" | head -n 2)"; else test_pass io_uring.no-fallback; fi
errors=$(field "$stats" guest_errors)
if [ "$errors" = 0 ]; then test_pass io_uring.no-request-errors; else test_fail io_uring.no-request-errors "stats: $stats"; fi
guest_results io_uring.fio "$log"
for job in randwrite randread; do
    value=$(guest_value "$log" "${job}_iops")
    if [ -n "$value" ]; then test_pass "io_uring.fio-$job"; else test_fail "io_uring.fio-$job" "no figure; console tail: $(tail -c 300 "$log")"; fi
done
rm -f "$img"

for suite in ${URING_SUITES:-swiftlet-blk}; do
    mkdir -p "$WORK/$suite"
    echo "step: $suite with the io_uring engine"
    RESULT_PREFIX=io_uring. SWIFTLET=$wrapper WORK=$WORK/$suite sh "$INTEGRATION/tests/$suite.sh"
    rm -rf "${WORK:?}/$suite"
done
