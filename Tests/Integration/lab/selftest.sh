#!/bin/bash
# Self-test of the nested lab: builds the L1 image and checks, each in its own L1 run, that
#   kvm        L1 has /dev/kvm, svm and kvm_amd
#   status     a job's exit status comes back (exit 3 -> 3)
#   hang       a silent job is detected as a hang, retried, and ends with 124
#   heartbeat  a long quiet command wrapped in lab-heartbeat is not mistaken for a hang
#   l2         QEMU microvm boots the Swiftlet guest in L1 (guest/build-kernel.sh,
#              guest/mkinitramfs.sh; skipped with --no-l2)
# About a minute with a cached L1 image and guest kernel. Exit 0 when all pass.
#
# Usage: Tests/Integration/lab/selftest.sh [--no-l2] [--boots N]
set -uo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../../.." && pwd)
LAB="$LAB_DIR/lab.py"
L2=1
BOOTS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --no-l2) L2=0 ;;
        --boots) BOOTS=$2; shift ;;
        -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "selftest: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-lab-selftest.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=()
failed=()
result() { # result NAME OK(0/1) DETAIL
    if [ "$2" = 0 ]; then passed+=("$1"); echo "selftest: PASS $1 $3" >&2
    else failed+=("$1"); echo "selftest: FAIL $1 $3" >&2; fi
}

echo "selftest: building the L1 image (cached after the first time)" >&2
t0=$(date +%s.%N)
if ! IMAGE=$("$LAB_DIR/build-l1.sh" | tail -1); then
    echo "selftest: FAIL build-l1.sh" >&2
    exit 1
fi
echo "selftest: L1 image $IMAGE ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s)" >&2
export SWIFTLET_LAB_L1=$IMAGE

"$LAB" run -q --label selftest-kvm --retries 1 -- \
    'grep -q svm /proc/cpuinfo && [ -c /dev/kvm ] && grep -q "^kvm_amd " /proc/modules'
rc=$?; result kvm $((rc != 0)) "(exit $rc)"

"$LAB" run -q --label selftest-status --retries 1 -- 'echo about to exit 3; exit 3'
rc=$?; result status $((rc != 3)) "(exit $rc, want 3)"

"$LAB" run -q --label selftest-hang --quiet-timeout 4 --retries 1 -- \
    'lab-step quiet sleep; sleep 60; echo not reached' 2>"$TMP/hang.err"
rc=$?
grep -q "retry 1/1" "$TMP/hang.err" && grep -q "gave up after 2 attempts" "$TMP/hang.err"
msgs=$?
result hang $((rc != 124 || msgs != 0)) "(exit $rc, want 124; retry and give-up messages: $([ $msgs = 0 ] && echo yes || echo no))"
if [ $rc != 124 ] || [ $msgs != 0 ]; then cat "$TMP/hang.err" >&2; fi

"$LAB" run -q --label selftest-heartbeat --quiet-timeout 4 --retries 0 -- \
    'lab-heartbeat -i 2 -n quiet-sleep sleep 9'
rc=$?; result heartbeat $((rc != 0)) "(exit $rc)"

if [ "$L2" = 1 ]; then
    if "$REPO/guest/build-kernel.sh" "$TMP/guest" >&2 &&
       "$REPO/guest/mkinitramfs.sh" "$TMP/guest/initramfs.cpio" >&2; then
        "$LAB" run --label selftest-l2 --result "$TMP/l2.json" \
            --file "$TMP/guest/bzImage=bzImage" --file "$TMP/guest/initramfs.cpio=initramfs.cpio" \
            --env BOOTS="$BOOTS" --script "$LAB_DIR/jobs/qemu-microvm-boot.sh" | tee "$TMP/l2.out"
        rc=${PIPESTATUS[0]}
        result l2 $((rc != 0)) "(exit $rc; $(grep -o 'L2-SUMMARY.*' "$TMP/l2.out" | tr -d '\r'))"
    else
        result l2 1 "(building the guest kernel or initramfs failed)"
    fi
fi

echo "selftest: ${#passed[@]} passed${passed[*]:+ (${passed[*]})}, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}" >&2
[ ${#failed[@]} = 0 ]
