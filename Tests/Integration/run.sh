#!/bin/sh
# Runs the integration tests on this machine, which must have a /dev/kvm that boots guests (the lab's L1, or a
# real host). Usage: run.sh [PATTERN]  (tests whose file name contains PATTERN; default all)
# Each test is tests/NAME.sh; it prints TEST-RESULT lines (see lib.sh). A test that exceeds TEST_TIMEOUT seconds
# is killed and reported as a failure.
INTEGRATION=$(cd "$(dirname "$0")" && pwd)
export INTEGRATION
: "${SWIFTLET:?set SWIFTLET to the swiftlet binary}"
: "${GUEST:?set GUEST to the directory with bzImage, vmlinux and initramfs.cpio}"
: "${QEMU:=qemu-system-x86_64}" "${QEMU_FIRMWARE:=/usr/share/qemu}" "${TEST_TIMEOUT:=300}"
export SWIFTLET GUEST QEMU QEMU_FIRMWARE
pattern=${1:-}
status=0
for test in "$INTEGRATION"/tests/*.sh; do
    name=$(basename "$test" .sh)
    case $name in *"$pattern"*) ;; *) continue ;; esac
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-it.XXXXXX")
    export WORK
    echo "TEST-BEGIN $name"
    timeout "$TEST_TIMEOUT" sh "$test"
    rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 143 ]; then
        echo "TEST-RESULT $name.timeout fail killed after ${TEST_TIMEOUT}s"
        status=1
    elif [ $rc -ne 0 ]; then
        echo "TEST-RESULT $name.script fail the test script exited $rc"
        status=1
    fi
    echo "TEST-END $name"
    rm -rf "$WORK"
done
exit $status
