# test-timeout: 600
# ACPI (docs/ARCHITECTURE.md, "ACPI"): Debian's stock cloud kernel, which has no virtio_mmio.device= support and no
# MP table parser, boots with its own initramfs-tools initrd and finds everything through Swiftlet's ACPI tables
# alone: 2 vCPUs from the MADT, the disk and the NIC as LNRO0005 devices from the DSDT, root on /dev/vda. Its
# `poweroff -f` and `reboot -f` go through the FADT's sleep and reset registers and end the VMM with status 0.
# The tiny kernel (no ACPI) keeps booting from the command line and MP table with the same defaults: the rest of the
# suite is that test. QEMU's microvm with acpi=on boots the same kernel, initrd and disk as the reference.
. "$INTEGRATION/lib.sh"
t=swiftlet-acpi
K=$GUEST/distro-vmlinuz
I=$GUEST/distro-initrd.img
if [ ! -f "$K" ] || [ ! -f "$I" ] || [ ! -f "$GUEST/acpi-root.img" ]; then
    test_skip "$t" "no stock Debian kernel staged ($K): make guest runs tools/build-distro-image.sh, which needs the Debian mirror"
    exit 0
fi
MAC=52:54:00:12:34:56
check() { if [ "$2" = "$3" ]; then test_pass "$t.$1"; else test_fail "$t.$1" "got '$2', want '$3'; $4"; fi; }
value() { sed -n "s/^$2 //p" "$1" | tr -d '\r' | head -n 1; }
TAP=acpi0
tap_del() { ip link set "$TAP" down 2>/dev/null; tunctl -d "$TAP" >/dev/null 2>&1 || ip tuntap del dev "$TAP" mode tap 2>/dev/null; }
if command -v tunctl >/dev/null 2>&1; then tunctl -t "$TAP" >/dev/null; else ip tuntap add dev "$TAP" mode tap; fi
ip link set "$TAP" up
trap tap_del EXIT

# boot VMM NAME ACTION: the stock kernel with the small root disk, then poweroff or reboot; the console in
# $WORK/NAME.console, the exit status in $WORK/NAME.status.
boot() {
    _vmm=$1 _name=$2 _action=$3
    cp "$GUEST/acpi-root.img" "$WORK/$_name.img"
    _cmdline="root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 quiet swiftlet.acpi=$_action"
    echo "step: $_vmm: the stock kernel, $_action"
    if [ "$_vmm" = swiftlet ]; then
        timeout $((240 * ${SPEED_FACTOR:-1})) "$SWIFTLET" run --kernel "$K" --initrd "$I" --cpus 2 --memory 512M \
            --disk "$WORK/$_name.img" --net "tap=$TAP,mac=$MAC" --cmdline "$_cmdline" --console "$WORK/$_name.console" \
            </dev/null 2>"$WORK/$_name.err"
    else
        timeout $((240 * ${SPEED_FACTOR:-1})) qemu-system-x86_64 -M microvm,acpi=on,pic=off,pit=off,rtc=off -enable-kvm -cpu host \
            -smp 2 -m 512 -no-reboot -nodefaults -nographic -serial "file:$WORK/$_name.console" -kernel "$K" -initrd "$I" \
            -append "$_cmdline" -drive "id=root,file=$WORK/$_name.img,format=raw,if=none" -device virtio-blk-device,drive=root \
            -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device "virtio-net-device,netdev=n0,mac=$MAC" \
            </dev/null >"$WORK/$_name.err" 2>&1
    fi
    echo $? >"$WORK/$_name.status"
}

for vmm in swiftlet qemu; do
    if [ $vmm = qemu ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        test_skip "$t.qemu" "no qemu-system-x86_64"
        continue
    fi
    HEARTBEAT_LOG=$WORK/$vmm-poweroff.console heartbeat boot $vmm "$vmm-poweroff" poweroff
    c=$WORK/$vmm-poweroff.console
    check "$vmm.poweroff-exit" "$(cat "$WORK/$vmm-poweroff.status")" 0 "$(tail -c 300 "$WORK/$vmm-poweroff.err") console: $(tail -c 400 "$c")"
    check "$vmm.cpus" "$(value "$c" ACPI-CPUS)" 2 "$(tail -c 400 "$c")"
    check "$vmm.lnro-devices" "$(grep -c '^ACPI-DEVICE LNRO0005:.* virtio-mmio' "$c")" 2 "$(grep '^ACPI-' "$c" | tr '\n' ';')"
    check "$vmm.virtio-devices" "$(value "$c" ACPI-VIRTIO)" 2
    check "$vmm.root" "$(value "$c" ACPI-ROOT)" /dev/vda
    check "$vmm.eth0-mac" "$(value "$c" ACPI-ETH0)" "$MAC"
    echo "step: $vmm: $(grep '^ACPI-' "$c" | tr -d '\r' | tr '\n' ';')"
    HEARTBEAT_LOG=$WORK/$vmm-reboot.console heartbeat boot $vmm "$vmm-reboot" reboot
    check "$vmm.reboot-exit" "$(cat "$WORK/$vmm-reboot.status")" 0 "$(tail -c 300 "$WORK/$vmm-reboot.err") console: $(tail -c 400 "$WORK/$vmm-reboot.console")"
    check "$vmm.reboot-reached" "$(value "$WORK/$vmm-reboot.console" ACPI-DONE)" reboot
done
exit 0
