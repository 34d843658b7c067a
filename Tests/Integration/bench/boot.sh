# Boot benchmark, run where guests boot (the lab's L1 or a KVM host). Swiftlet and QEMU's microvm boot the same
# kernel, initramfs, command line and memory, alternating, RUNS times each. vmmbench measures both the same way:
# from fork to the guest's SWIFTLET-READY console line (boot_to_init), and the VMM's resident memory outside the
# guest-RAM mapping at that moment (vmm_overhead_rss).
. "$INTEGRATION/lib.sh"
runs=${RUNS:-10}
mem=256
# reboot=t: both VMMs end on the guest's triple fault, so the command line is identical.
cmdline="console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=ready"

sample() { # VMM LINE
    set -- "$1" $(echo "$2" | sed -n 's/.*marker_ms=\(-*[0-9]*\) exit_ms=\(-*[0-9]*\) rss_kib=\(-*[0-9]*\).*status=\(-*[0-9]*\).*/\1 \2 \3 \4/p')
    if [ $# -lt 5 ] || [ "$2" -lt 0 ] || [ "$5" != 0 ]; then
        echo "boot bench: $1 run failed: marker_ms=$2 exit_status=$5"
        return 1
    fi
    echo "BENCH-SAMPLE metric=boot_to_init vmm=$1 value=$2 unit=ms"
    echo "BENCH-SAMPLE metric=boot_to_exit vmm=$1 value=$3 unit=ms"
    echo "BENCH-SAMPLE metric=vmm_overhead_rss vmm=$1 value=$(awk "BEGIN { printf \"%.2f\", $4 / 1024 }") unit=MiB"
}

status=0
i=1
while [ $i -le "$runs" ]; do
    echo "step: boot benchmark round $i/$runs"
    line=$("$VMMBENCH" --guest-mib $mem --timeout 60 -- "$SWIFTLET" run --kernel "$GUEST/bzImage" \
        --initrd "$GUEST/initramfs.cpio" --memory ${mem}M --console stdio --cmdline "$cmdline" 2>&1 | grep '^vmmbench:')
    sample swiftlet "$line" || status=1
    line=$("$VMMBENCH" --guest-mib $mem --timeout 60 -- "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m $mem \
        -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -L "$QEMU_FIRMWARE" \
        -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs.cpio" -append "$cmdline" 2>&1 | grep '^vmmbench:')
    sample qemu "$line" || status=1
    i=$((i + 1))
done
exit $status
