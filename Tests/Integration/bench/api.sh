# API benchmark, lab side: api_instance_start_to_init_ms, from the start request on the control socket to the
# guest's SWIFTLET-READY console line, RUNS rounds, alternating. Swiftlet: `swiftlet firecracker --api-sock`, the
# tiny guest configured through the API (boot-source, machine-config: 1 vCPU, 256 MiB), then InstanceStart (which
# builds the VM, loads kernel and initrd, and runs it). QEMU: microvm with the same kernel, initrd, command line and
# memory, started with -S (built and loaded, paused), then QMP `cont`. ctlstart sends the request and stamps it
# (CLOCK_MONOTONIC); vmmbench stamps the fork and the marker: the figure is marker - request.
# The host-side API figures (socket ready, request round trip) come from Tests/Integration/host/bench_api.py.
. "$INTEGRATION/lib.sh"
runs=${RUNS:-10}
mem=256
cmdline="console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=ready"
CURL=${CURL:-curl}
S=$WORK/api.sock
Q=$WORK/qmp.sock

# sample VMM VMMBENCH_FILE CTLSTART_FILE
sample() {
    _m=$(sed -n 's/.*marker_ms=\(-*[0-9]*\).*start_ns=\(-*[0-9]*\).*/\1 \2/p' "$2")
    _s=$(sed -n 's/^ctlstart: sent_ns=\([0-9]*\) .*/\1/p' "$3")
    set -- "$1" $_m $_s
    if [ $# -lt 4 ] || [ "$2" -lt 0 ]; then
        echo "api bench: $1 run failed: $(cat "$WORK/vmmbench.out" "$WORK/ctlstart.out" 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
        return 1
    fi
    echo "BENCH-SAMPLE metric=api_instance_start_to_init_ms vmm=$1 value=$(awk "BEGIN { printf \"%.2f\", ($3 + $2 * 1000000 - $4) / 1000000 }") unit=ms"
}
api() {
    "$CURL" -sS --unix-socket "$S" -X PUT "http://localhost$1" -H 'Content-Type: application/json' -d "$2" \
        -o /dev/null -w '%{http_code}'
}

status=0
i=1
while [ $i -le "$runs" ]; do
    echo "step: api benchmark round $i/$runs"
    rm -f "$S" "$Q"
    "$VMMBENCH" --guest-mib $mem --timeout 60 -- "$SWIFTLET" firecracker --api-sock "$S" >"$WORK/vmmbench.out" 2>&1 &
    bench=$!
    n=0
    while [ ! -S "$S" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    c1=$(api /boot-source "{\"kernel_image_path\": \"$GUEST/bzImage\", \"initrd_path\": \"$GUEST/initramfs.cpio\", \"boot_args\": \"$cmdline\"}")
    c2=$(api /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": $mem}")
    [ "$c1 $c2" = "204 204" ] || echo "api bench: configuring swiftlet answered $c1 $c2"
    "$CTLSTART" --firecracker "$S" >"$WORK/ctlstart.out" 2>&1
    wait $bench
    sample swiftlet "$WORK/vmmbench.out" "$WORK/ctlstart.out" || status=1

    "$VMMBENCH" --guest-mib $mem --timeout 60 -- "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m $mem \
        -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -L "$QEMU_FIRMWARE" -S \
        -qmp "unix:$Q,server=on,wait=off" -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs.cpio" \
        -append "$cmdline" >"$WORK/vmmbench.out" 2>&1 &
    bench=$!
    "$CTLSTART" --qmp "$Q" >"$WORK/ctlstart.out" 2>&1
    wait $bench
    sample qemu "$WORK/vmmbench.out" "$WORK/ctlstart.out" || status=1
    i=$((i + 1))
done
exit $status
