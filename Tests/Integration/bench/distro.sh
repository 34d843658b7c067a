# Distribution boot benchmark, run where guests boot (the lab's L1 or a KVM host): the Debian 12 image of
# tools/build-distro-image.sh, with Debian's stock cloud kernel and its initrd, 2 vCPUs, 512 MiB, a disk, a NIC on a
# TAP and a vsock device, on Swiftlet (ACPI) and on QEMU's microvm (acpi=on), alternating, RUNS times each, each
# boot from a fresh copy of the image (in the lab, the disks $DISTRO_DISKS that lab.py attaches with snapshot=on).
# vmmbench measures both the same way: from fork to the image's SWIFTLET-MULTIUSER console line, which a unit
# ordered after multi-user.target prints (distro_boot_to_multiuser). Then, through the guest agent (a systemd
# service), the guest's own `systemd-analyze time` once the boot has finished (distro_guest_kernel, which includes
# the initramfs-tools initrd, and distro_guest_userspace) and `systemd-analyze blame`, and `systemctl poweroff`.
. "$INTEGRATION/lib.sh"
runs=${RUNS:-5}
K=$GUEST/distro-vmlinuz
I=$GUEST/distro-initrd.img
if [ ! -f "$K" ] || [ ! -f "$I" ] || { [ -z "${DISTRO_DISKS:-}" ] && [ ! -f "$GUEST/distro-debian.raw" ]; }; then
    echo "distro bench: no Debian image staged ($GUEST/distro-debian.raw): make guest runs tools/build-distro-image.sh, which needs the Debian mirror"
    exit 1
fi
mem=512
CID=7
MAC=52:54:00:12:34:88
CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet"
TAP=dbench0
tap_del() { ip link set "$TAP" down 2>/dev/null; tunctl -d "$TAP" >/dev/null 2>&1 || ip tuntap del dev "$TAP" mode tap 2>/dev/null; }
if command -v tunctl >/dev/null 2>&1; then tunctl -t "$TAP" >/dev/null; else ip tuntap add dev "$TAP" mode tap; fi
ip link set "$TAP" up
trap tap_del EXIT

# pick_disk N: the Nth fresh copy of the image (0-based), in $disk. The lab's disks are used in turn (again from
# the first if there are fewer than boots); natively, a new sparse copy.
pick_disk() {
    if [ -n "${DISTRO_DISKS:-}" ]; then
        _index=$1
        # shellcheck disable=SC2086
        set -- $DISTRO_DISKS
        shift $((_index % $#))
        disk=$1
    else
        disk=$WORK/bench.raw
        cp --sparse=always "$GUEST/distro-debian.raw" "$disk"
    fi
}

# agent VMM COMMAND...: COMMAND in the guest through its agent (Swiftlet: swiftlet exec --attach; QEMU: agentexec
# over vhost-vsock).
agent() {
    _vmm=$1
    shift
    if [ "$_vmm" = swiftlet ]; then
        "$SWIFTLET" exec --attach "$WORK/bench.sock" --timeout 300 -- "$@"
    else
        "$AGENTEXEC" --wait 20 "vsock:$CID:1024" -- "$@"
    fi
}

# The guest's systemd-analyze time line as "kernel MS", "initrd MS", "userspace MS" lines (its figures come as
# 890ms, 1.234s or 1min 2.345s).
split_analyze() {
    awk '/Startup finished in/ {
        line = $0; sub(/.*Startup finished in /, "", line); sub(/ = .*/, "", line)
        n = split(line, parts, / \+ /)
        for (i = 1; i <= n; i++) {
            p = parts[i]
            if (!match(p, /\([a-z]+\)/)) continue
            what = substr(p, RSTART + 1, RLENGTH - 2)
            value = p; sub(/ \(.*/, "", value)
            ms = 0
            m = split(value, tokens, " ")
            for (j = 1; j <= m; j++) {
                t = tokens[j]
                if (t ~ /min$/) ms += t * 60000
                else if (t ~ /ms$/) ms += t + 0
                else if (t ~ /s$/) ms += t * 1000
            }
            printf "%s %d\n", what, ms
        }
    }'
}

# boot VMM INDEX: one measured boot; prints the BENCH-SAMPLE lines.
boot() {
    _vmm=$1
    pick_disk "$2"
    rm -f "$WORK/bench.sock" "$WORK/bench.out" "$WORK/analyze" "$WORK/bench.ready"
    if [ "$_vmm" = swiftlet ]; then
        "$VMMBENCH" --marker SWIFTLET-MULTIUSER --marker-file "$WORK/bench.ready" --guest-mib $mem --timeout 900 -- "$SWIFTLET" run --kernel "$K" \
            --initrd "$I" --cpus 2 --memory ${mem}M --disk "$disk" --net "tap=$TAP,mac=$MAC" \
            --vsock "socket=$WORK/bench.sock" --cmdline "$CMDLINE" --console stdio >"$WORK/bench.out" 2>&1 &
    else
        "$VMMBENCH" --marker SWIFTLET-MULTIUSER --marker-file "$WORK/bench.ready" --guest-mib $mem --timeout 900 -- "$QEMU" \
            -M microvm,acpi=on,pic=off,pit=off,rtc=off -enable-kvm -cpu host -smp 2 -m $mem -no-reboot -nodefaults \
            -no-user-config -display none -serial stdio -L "$QEMU_FIRMWARE" -kernel "$K" -initrd "$I" -append "$CMDLINE" \
            -drive "id=root,file=$disk,format=raw,if=none,cache=none,aio=threads" -device virtio-blk-device,drive=root \
            -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device "virtio-net-device,netdev=n0,mac=$MAC" \
            -device "vhost-vsock-device,guest-cid=$CID" >"$WORK/bench.out" 2>&1 &
    fi
    _bench=$!
    # Once vmmbench has seen the marker (the agent started with multi-user.target, before it), ask the agent for
    # the guest's own account of the boot, when systemd has finished it, then power off. Nothing reaches the guest
    # before the marker, from either VMM's side. (A step line every 2 s: the lab's watchdog takes 10 s of silence
    # for a hung L1.)
    _t=0
    while kill -0 $_bench 2>/dev/null && [ ! -f "$WORK/bench.ready" ] && [ $_t -lt 900 ]; do
        sleep 2
        _t=$((_t + 2))
        echo "step: ... $_vmm booting ($_t s)"
    done
    agent "$_vmm" sh -c 'systemctl is-system-running --wait >/dev/null; systemd-analyze time; systemd-analyze blame | head -n 8' \
        >"$WORK/analyze" 2>/dev/null &
    _agent=$!
    while kill -0 $_agent 2>/dev/null; do sleep 2; _t=$((_t + 2)); echo "step: ... $_vmm asking the agent ($_t s)"; done
    wait $_agent || echo "distro bench: $_vmm: the agent did not answer"
    agent "$_vmm" systemctl poweroff >/dev/null 2>&1
    while kill -0 $_bench 2>/dev/null; do sleep 2; _t=$((_t + 2)); echo "step: ... $_vmm powering off ($_t s)"; done
    wait $_bench
    _line=$(grep '^vmmbench:' "$WORK/bench.out")
    set -- $(echo "$_line" | sed -n 's/.*marker_ms=\(-*[0-9]*\) exit_ms=\(-*[0-9]*\).*status=\(-*[0-9]*\).*/\1 \2 \3/p')
    if [ $# -lt 3 ] || [ "$1" -lt 0 ]; then
        echo "distro bench: $_vmm run failed: ${_line:-no vmmbench line}; $(tail -c 300 "$WORK/bench.out" | tr '\n' ' ')"
        return 1
    fi
    echo "BENCH-SAMPLE metric=distro_boot_to_multiuser vmm=$_vmm value=$1 unit=ms"
    split_analyze <"$WORK/analyze" | while read -r what ms; do
        echo "BENCH-SAMPLE metric=distro_guest_$what vmm=$_vmm value=$ms unit=ms"
    done
    sed "s/^/distro bench: $_vmm systemd-analyze: /" "$WORK/analyze"
}

status=0
i=0
while [ $i -lt "$runs" ]; do
    echo "step: distro benchmark round $((i + 1))/$runs"
    boot swiftlet $((2 * i)) || status=1
    boot qemu $((2 * i + 1)) || status=1
    i=$((i + 1))
done
exit $status
