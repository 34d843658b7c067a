#!/bin/sh
# Lab job: boot the Swiftlet guest (L2) with QEMU's microvm machine on L1's KVM, N times,
# and check its SWIFTLET-* markers. A reference for the lab itself (does nested KVM work,
# how long does an L2 boot take), independent of Swiftlet's own VMM.
#
#   lab.py run --file BZIMAGE=bzImage --file INITRAMFS=initramfs.cpio \
#       --env BOOTS=5 --script Tests/Integration/lab/jobs/qemu-microvm-boot.sh
#
# Environment: BOOTS (default 1), TEST (guest scenario, default sysinfo), MEM (MiB, 256),
# KERNEL (default bzImage), INITRD (default initramfs.cpio), all relative to /job.
# Prints per boot: "L2-BOOT n=I ms=T ready_ms=R status=ok|fail", then a summary line
# "L2-SUMMARY boots=N ok=K min_ms=… median_ms=… max_ms=…". Exit 0 when every boot passed.

BOOTS=${BOOTS:-1}
TEST=${TEST:-sysinfo}
MEM=${MEM:-256}
KERNEL=${KERNEL:-bzImage}
INITRD=${INITRD:-initramfs.cpio}

for f in "$KERNEL" "$INITRD"; do
    [ -f "$f" ] || { echo "qemu-microvm-boot: /job/$f missing (stage it with --file)"; exit 2; }
done
[ -c /dev/kvm ] || { echo "qemu-microvm-boot: no /dev/kvm in L1"; exit 2; }

ok=0
times=""
i=1
while [ "$i" -le "$BOOTS" ]; do
    lab-step "L2 boot $i/$BOOTS (qemu microvm, test=$TEST)"
    t0=$(monotime)
    qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu host -m "$MEM" -smp 1 \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot -L /usr/share/qemu \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 reboot=t quiet swiftlet.test=$TEST swiftlet.expect.cpus=1 swiftlet.expect.mem_mib=$MEM" \
        2>&1 | monotime stamp "$t0" | tee /tmp/l2.log
    ms=$(monotime since "$t0")
    ready=$(awk '/SWIFTLET-READY/ { sub(/^\[\+/, ""); sub(/\].*/, ""); print int($0 * 1000 + 0.5); exit }' /tmp/l2.log)
    if grep -q "SWIFTLET-DONE test=$TEST status=0" /tmp/l2.log &&
       ! grep -q 'SWIFTLET-RESULT .* fail' /tmp/l2.log; then
        status=ok
        ok=$((ok + 1))
        times="$times $ms"
    else
        status=fail
    fi
    echo "L2-BOOT n=$i ms=$ms ready_ms=${ready:-none} status=$status"
    i=$((i + 1))
done

# shellcheck disable=SC2086  # $times is a list of numbers
sorted=$(printf '%s\n' $times | sort -n)
n=$(echo "$sorted" | grep -c .)
if [ "$n" -gt 0 ]; then
    min=$(echo "$sorted" | sed -n 1p)
    max=$(echo "$sorted" | sed -n "${n}p")
    med=$(echo "$sorted" | sed -n "$(((n + 1) / 2))p")
    echo "L2-SUMMARY boots=$BOOTS ok=$ok min_ms=$min median_ms=$med max_ms=$max"
else
    echo "L2-SUMMARY boots=$BOOTS ok=0"
fi
[ "$ok" -eq "$BOOTS" ]
