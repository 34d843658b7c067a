#!/bin/sh
# Runs the integration tests on this machine, which must have a /dev/kvm that boots guests (the lab's L1, or a
# real host). Usage: run.sh [PATTERN]  (tests whose file name contains PATTERN; default all)
# TESTS="a b c" (names of tests/NAME.sh, in order) runs exactly those instead: the harness resumes a run that L1
# stalled in at the test that stalled, without rerunning the tests that had finished.
#
# Each test is tests/NAME.sh; it prints TEST-RESULT lines (see lib.sh). A test that exceeds its time limit is killed
# and reported as a failure. The limit is TEST_TIMEOUT seconds (default: the test's own "# test-timeout: N" line, or
# 600), times the machine's slowness: SPEED_FACTOR, measured here first (a fixed shell loop against the time it took
# on the development machine, at least 1) unless given. The limit is a backstop for a test that goes on printing but
# never ends; a machine that stops (L1 stalls) is caught by the lab's silence watchdog within seconds.
INTEGRATION=$(cd "$(dirname "$0")" && pwd)
export INTEGRATION
: "${SWIFTLET:?set SWIFTLET to the swiftlet binary}"
: "${GUEST:?set GUEST to the directory with bzImage, vmlinux and initramfs.cpio}"
: "${QEMU:=qemu-system-x86_64}" "${QEMU_FIRMWARE:=/usr/share/qemu}"
export SWIFTLET GUEST QEMU QEMU_FIRMWARE
pattern=${1:-}

# The reference: 20000 rounds of this loop took 281-282 ms in the lab's L1 on the development machine (2 cores,
# QEMU 7.2 TCG, quiet; 2026-12-01); the limits were set for that speed. A native host takes a few ms: factor 1.
if [ -z "${SPEED_FACTOR:-}" ]; then
    # monotime (the lab's L1 has it; busybox date has no %N), else date's nanoseconds (a native host).
    if command -v monotime >/dev/null 2>&1; then now() { monotime; }; scale=1; else now() { date +%s%N; }; scale=1000000; fi
    t0=$(now)
    i=0
    while [ $i -lt 20000 ]; do i=$((i + 1)); done
    ms=$((($(now) - t0) / scale))
    SPEED_FACTOR=$(((ms + 299) / 300))
    [ "$SPEED_FACTOR" -ge 1 ] 2>/dev/null || SPEED_FACTOR=1
    echo "TEST-INFO speed calibration: ${ms} ms for the reference loop (about 280 ms in the development machine's lab):" \
        "time limits x$SPEED_FACTOR"
fi
export SPEED_FACTOR

# TESTS_DIR: the folder of tests (default tests; selftest holds the harness's own checks of the resume).
dir=$INTEGRATION/${TESTS_DIR:-tests}
if [ -n "${TESTS:-}" ]; then
    list=
    for name in $TESTS; do list="$list $dir/$name.sh"; done
else
    list=$dir/*.sh
fi
status=0
for test in $list; do
    name=$(basename "$test" .sh)
    case $name in *"$pattern"*) ;; *) continue ;; esac
    if [ ! -f "$test" ]; then
        echo "TEST-RESULT $name.script fail no such test: $test"
        status=1
        continue
    fi
    limit=${TEST_TIMEOUT:-$(sed -n 's/^# test-timeout: *\([0-9][0-9]*\).*/\1/p' "$test" | head -n 1)}
    limit=$((${limit:-600} * SPEED_FACTOR))
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-it.XXXXXX")
    export WORK
    echo "TEST-BEGIN $name (limit ${limit}s)"
    timeout "$limit" sh "$test"
    rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 143 ]; then
        echo "TEST-RESULT $name.timeout fail killed after ${limit}s"
        status=1
    elif [ $rc -ne 0 ]; then
        echo "TEST-RESULT $name.script fail the test script exited $rc"
        status=1
    fi
    echo "TEST-END $name"
    rm -rf "$WORK"
done
exit $status
