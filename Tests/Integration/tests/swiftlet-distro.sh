# test-timeout: 1500
# A stock distribution, end to end (README, "Booting a distribution"): the Debian 12 image of
# tools/build-distro-image.sh (systemd, udev, Debian's stock cloud kernel with its initramfs-tools initrd, the guest
# agent as a systemd service) boots on Swiftlet through ACPI alone to systemd's multi-user target, with 2 vCPUs, a
# NIC on a TAP and a vsock device. Through the agent (`swiftlet exec --attach`, as a user would) it checks that
# systemd is running (or degraded, with the failed units named), the 2 CPUs, /dev/vda as the root, eth0's MAC and a
# ping of the host; then `systemctl poweroff` and, in a second boot, `systemctl reboot` end the VMM with status 0;
# and Firecracker's SendCtrlAltDel, through `swiftlet firecracker`'s API, reboots it too.
# QEMU's microvm with acpi=on (and vhost-vsock-device, reached with agentexec) runs the same checks on the same
# kernel, initrd and image as the reference.
# Each boot gets a fresh copy of the image: in the lab, one of the disks $DISTRO_DISKS that lab.py attaches to L1
# with snapshot=on (the image is too big for L1's initramfs); natively, a sparse copy in $WORK.
. "$INTEGRATION/lib.sh"
t=swiftlet-distro
K=$GUEST/distro-vmlinuz
I=$GUEST/distro-initrd.img
if [ ! -f "$K" ] || [ ! -f "$I" ]; then
    test_skip "$t" "no stock Debian kernel staged ($K): make guest runs tools/build-distro-image.sh, which needs the Debian mirror"
    exit 0
fi
if [ -z "${DISTRO_DISKS:-}" ] && [ ! -f "$GUEST/distro-debian.raw" ]; then
    test_skip "$t" "no Debian image ($GUEST/distro-debian.raw): make guest runs tools/build-distro-image.sh, which needs the Debian mirror"
    exit 0
fi
if [ -n "${DISTRO_DISKS:-}" ]; then
    # lab.py attached them and L1's init loaded virtio_blk before the job began; udev-less devtmpfs may lag a little.
    n=0
    while [ ! -b "${DISTRO_DISKS%% *}" ] && [ $n -lt 10 ]; do echo "step: waiting for ${DISTRO_DISKS%% *}"; sleep 1; n=$((n + 1)); done
    if [ ! -b "${DISTRO_DISKS%% *}" ]; then
        test_fail "$t.disks" "DISTRO_DISKS names ${DISTRO_DISKS%% *}, which is not a block device in L1 (did its init load /etc/lab/modules.disks? the console's 'lab:' line says)"
        exit 0
    fi
fi
MAC=52:54:00:12:34:77
HOST_IP=10.0.9.1
GUEST_IP=10.0.9.2
CID=7
CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet"
check() { if [ "$2" = "$3" ]; then test_pass "$t.$1"; else test_fail "$t.$1" "got '$2', want '$3'; $4"; fi; }
TAP=distro0
tap_del() { ip link set "$TAP" down 2>/dev/null; tunctl -d "$TAP" >/dev/null 2>&1 || ip tuntap del dev "$TAP" mode tap 2>/dev/null; }
if command -v tunctl >/dev/null 2>&1; then tunctl -t "$TAP" >/dev/null; else ip tuntap add dev "$TAP" mode tap; fi
ip addr add "$HOST_IP/24" dev "$TAP"
ip link set "$TAP" up
vm=
cleanup() { [ -z "$vm" ] || { kill -9 "$vm" 2>/dev/null; wait "$vm" 2>/dev/null; }; tap_del; }
trap cleanup EXIT

# take_disk NAME: a fresh copy of the image for one boot, in $disk.
disks_used=0
take_disk() {
    # Shift the positional list by the disks used so far (sh has no arrays).
    # shellcheck disable=SC2086
    set -- ${DISTRO_DISKS:-} x x x x x x x x
    shift $disks_used
    disks_used=$((disks_used + 1))
    if [ -n "${DISTRO_DISKS:-}" ]; then
        [ "$1" != x ] || { echo "step: no disk left in DISTRO_DISKS ($DISTRO_DISKS)"; return 1; }
        disk=$1
    else
        disk=$WORK/$2.raw
        cp --sparse=always "$GUEST/distro-debian.raw" "$disk"
    fi
}

# start VMM NAME [CMDLINE [DISK]]: boot the image in the background ($vm), on the next fresh disk (DISK "none":
# none) with CMDLINE; console in $WORK/NAME.console, the VMM's messages in $WORK/NAME.err.
start() {
    _vmm=$1 _name=$2 _cmdline=${3:-$CMDLINE}
    if [ "${4:-}" = none ]; then
        _disk_swiftlet= _disk_qemu=
        echo "step: $_vmm: boot $_name with no disk"
    else
        take_disk "$_name" || return 1
        _disk_swiftlet="--disk $disk"
        _disk_qemu="-drive id=root,file=$disk,format=raw,if=none,cache=none,aio=threads -device virtio-blk-device,drive=root"
        echo "step: $_vmm: boot $_name from $disk"
    fi
    if [ "$_vmm" = swiftlet ]; then
        rm -f "$WORK/$_name.sock"
        # shellcheck disable=SC2086  # the disk option: two words or none
        "$SWIFTLET" run --kernel "$K" --initrd "$I" --cpus 2 --memory 512M $_disk_swiftlet \
            --net "tap=$TAP,mac=$MAC" --vsock "socket=$WORK/$_name.sock" --cmdline "$_cmdline" \
            --console "$WORK/$_name.console" </dev/null 2>"$WORK/$_name.err" &
    else
        # pvpanic (ISA, in microvm's DSDT) with -action panic=exit-failure: QEMU's report of a guest panic.
        # shellcheck disable=SC2086
        qemu-system-x86_64 -M microvm,acpi=on,pic=off,pit=off,rtc=off -enable-kvm -cpu host -smp 2 -m 512 \
            -no-reboot -nodefaults -no-user-config -nographic -L "$QEMU_FIRMWARE" -serial "file:$WORK/$_name.console" \
            -kernel "$K" -initrd "$I" -append "$_cmdline" $_disk_qemu \
            -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device "virtio-net-device,netdev=n0,mac=$MAC" \
            -device "vhost-vsock-device,guest-cid=$CID" -device pvpanic -action panic=exit-failure \
            </dev/null >"$WORK/$_name.err" 2>&1 &
    fi
    vm=$!
}

# wait_marker NAME: until the image's marker unit says multi-user.target is reached (0), or the VMM ends or 300 s
# (times SPEED_FACTOR) pass (1). A step line every 2 s with the console's last line, so that the lab's watchdog sees
# progress; the loop is kept light (a check a second), because two busy guest vCPUs leave L1's one CPU little time.
wait_marker() {
    _i=0
    while ! grep -q '^SWIFTLET-MULTIUSER' "$WORK/$1.console" 2>/dev/null; do
        kill -0 "$vm" 2>/dev/null || return 1
        [ $_i -lt $((300 * ${SPEED_FACTOR:-1})) ] || return 1
        _i=$((_i + 1))
        [ $((_i % 2)) -ne 0 ] || echo "step: ... $_i s: $(tail -n 1 "$WORK/$1.console" 2>/dev/null | tr -d '\r' | cut -c1-100)"
        sleep 1
    done
}

# guest VMM NAME COMMAND...: run COMMAND in the guest through its agent; the agent starts with multi-user.target,
# so the first connection is retried for up to 20 s.
guest() {
    _vmm=$1 _name=$2
    shift 2
    if [ "$_vmm" = swiftlet ]; then
        _try=0
        while :; do
            "$SWIFTLET" exec --attach "$WORK/$_name.sock" --timeout 120 -- "$@" 2>"$WORK/$_name.exec.err" && return 0
            _rc=$?
            grep -q "agent" "$WORK/$_name.exec.err" && [ $_try -lt 20 ] || { cat "$WORK/$_name.exec.err" >&2; return $_rc; }
            _try=$((_try + 1))
            sleep 1
        done
    else
        "$AGENTEXEC" --wait 20 "vsock:$CID:1024" -- "$@"
    fi
}

# wait_gone NAME SECONDS: wait up to SECONDS (times SPEED_FACTOR) for the VMM to end by itself; false if it still runs.
wait_gone() {
    _i=0
    while kill -0 "$vm" 2>/dev/null; do
        [ $_i -lt $(($2 * ${SPEED_FACTOR:-1})) ] || return 1
        _i=$((_i + 1))
        [ $((_i % 2)) -ne 0 ] || echo "step: ... $_i s: $(tail -n 1 "$WORK/$1.console" 2>/dev/null | tr -d '\r' | cut -c1-100)"
        sleep 1
    done
}

# finish NAME: wait for the VMM to end by itself (up to 120 s, times SPEED_FACTOR); its status in
# $WORK/NAME.status, "timeout" if it had to be killed. (Not under heartbeat: only this shell can wait for $vm.)
finish() {
    if ! wait_gone "$1" 120; then
        kill -9 "$vm" 2>/dev/null
        wait "$vm" 2>/dev/null
        echo timeout >"$WORK/$1.status"
    else
        wait "$vm"
        echo $? >"$WORK/$1.status"
    fi
    vm=
}

REPORT='state=$(systemctl is-system-running --wait 2>/dev/null)
echo "STATE $state"
echo "FAILED $(systemctl list-units --failed --plain --no-legend 2>/dev/null | cut -d" " -f1 | tr "\n" " ")"
echo "CPUS $(nproc)"
echo "LNRO $(ls -d /sys/bus/platform/drivers/virtio-mmio/LNRO0005:* 2>/dev/null | wc -l)"
echo "VIRTIO $(ls /sys/bus/virtio/devices | wc -l)"
echo "PVPANIC $(ls -d /sys/bus/platform/drivers/pvpanic-mmio/QEMU0001:* 2>/dev/null | wc -l)"
echo "ROOT $(findmnt -n -o SOURCE /)"
echo "ETH0 $(cat /sys/class/net/eth0/address)"
ip addr add '"$GUEST_IP"'/24 dev eth0 && ip link set eth0 up
echo "PING $(ping -c 2 -W 5 '"$HOST_IP"' 2>&1 | grep -c "bytes from")"
echo "KERNEL $(uname -r)"
echo "ACPI $(ls /sys/firmware/acpi/tables | tr "\n" " ")"'
value() { sed -n "s/^$2 //p" "$1" | tr -d '\r' | head -n 1; }
# end_with VMM NAME COMMAND...: the guest ends itself with COMMAND (systemctl poweroff, reboot), asked through its
# agent, and the VMM's status goes to $WORK/NAME.status (finish). The exec itself may fail either way (the guest can
# go down before the agent answers), so its status only goes to $WORK/NAME.end (with its errors, for the failure's
# message). Where the VMM still runs a minute after the request, systemd is asked what it is doing
# (is-system-running: "stopping" is a shutdown on its way; "running" is a request that did not reach it, seen with
# QEMU in the lab both after an exec that failed and after one that said 0): unless it is stopping, the request is
# made again, at most 3 times in all, and a step line says what systemd said and how many requests it took.
end_with() {
    _vmm=$1 _n=$2
    shift 2
    : >"$WORK/$_n.end"
    _req=1
    while :; do
        guest "$_vmm" "$_n" "$@" >>"$WORK/$_n.end" 2>&1
        _rc=$?
        echo "request $_req: exec status $_rc" >>"$WORK/$_n.end"
        if [ $_req -ge 3 ] || wait_gone "$_n" 60; then break; fi
        _state=$(guest "$_vmm" "$_n" systemctl is-system-running 2>>"$WORK/$_n.end" | tr -d '\r' | head -n 1)
        echo "request $_req: the VMM still runs a minute later; systemd says '$_state'" >>"$WORK/$_n.end"
        echo "step: $_vmm: the VMM still runs a minute after $* (exec status $_rc); systemd says '$_state'"
        if [ "$_state" = stopping ]; then break; fi
        kill -0 "$vm" 2>/dev/null || break
        _req=$((_req + 1))
        echo "step: $_vmm: $* again (request $_req)"
    done
    finish "$_n"
    [ $_req -eq 1 ] || echo "step: $_vmm: $* took $_req requests"
}

console_tail() { tail -c "${2:-400}" "$WORK/$1.console" 2>/dev/null | tr -d '\r'; }

for vmm in swiftlet qemu; do
    if [ $vmm = qemu ]; then
        if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then test_skip "$t.qemu" "no qemu-system-x86_64"; continue; fi
        if ! [ -c /dev/vhost-vsock ]; then test_skip "$t.qemu" "no /dev/vhost-vsock here (modprobe vhost_vsock)"; continue; fi
    fi
    # 1. Multi-user, what the guest sees, and systemd's poweroff.
    n=$vmm-poweroff
    start $vmm $n || { test_fail "$t.$vmm.start" "no disk to boot"; continue; }
    if wait_marker $n; then
        test_pass "$t.$vmm.multi-user"
        guest $vmm $n sh -c "$REPORT" >"$WORK/$n.report" 2>"$WORK/$n.report.err"
        check "$vmm.exec" $? 0 "$(tail -c 300 "$WORK/$n.report.err")"
        echo "step: $vmm: $(tr '\n' ';' <"$WORK/$n.report")"
        state=$(value "$WORK/$n.report" STATE)
        case "$state" in
            running|degraded) test_pass "$t.$vmm.system-running" ;;
            *) test_fail "$t.$vmm.system-running" "systemctl is-system-running said '$state'" ;;
        esac
        [ "$state" != degraded ] || echo "step: $vmm: failed units: $(value "$WORK/$n.report" FAILED)"
        check "$vmm.cpus" "$(value "$WORK/$n.report" CPUS)" 2
        # The disk, the NIC and vsock: each an LNRO0005 device of the DSDT, bound by virtio_mmio.
        check "$vmm.lnro-devices" "$(value "$WORK/$n.report" LNRO)" 3
        check "$vmm.virtio-devices" "$(value "$WORK/$n.report" VIRTIO)" 3
        check "$vmm.pvpanic" "$(value "$WORK/$n.report" PVPANIC)" 1
        check "$vmm.root" "$(value "$WORK/$n.report" ROOT)" /dev/vda
        check "$vmm.eth0-mac" "$(value "$WORK/$n.report" ETH0)" "$MAC"
        check "$vmm.ping-host" "$(value "$WORK/$n.report" PING)" 2
        end_with $vmm $n systemctl poweroff
        check "$vmm.poweroff-exit" "$(cat "$WORK/$n.status")" 0 "$(tail -c 300 "$WORK/$n.err") exec: $(tail -c 300 "$WORK/$n.end") console: $(console_tail $n)"
        # A disk whose system shut down cleanly boots again as a stock image would: the SendCtrlAltDel boot (4.) takes it.
        [ $vmm != swiftlet ] || [ "$(cat "$WORK/$n.status")" != 0 ] || clean_disk=$disk
    else
        test_fail "$t.$vmm.multi-user" "no SWIFTLET-MULTIUSER on the console: $(tail -c 300 "$WORK/$n.err") console: $(console_tail $n 600)"
        finish $n
    fi

    # 2. systemd's reboot.
    n=$vmm-reboot
    start $vmm $n || { test_fail "$t.$vmm.start" "no disk to boot"; continue; }
    if wait_marker $n; then
        end_with $vmm $n systemctl reboot
        check "$vmm.reboot-exit" "$(cat "$WORK/$n.status")" 0 "$(tail -c 300 "$WORK/$n.err") exec: $(tail -c 300 "$WORK/$n.end") console: $(console_tail $n)"
    else
        test_fail "$t.$vmm.reboot-exit" "no SWIFTLET-MULTIUSER on the console: $(tail -c 300 "$WORK/$n.err") console: $(console_tail $n 600)"
        finish $n
    fi

    # 3. A kernel panic: init=/bin/false exits at once, and the kernel panics ("Attempted to kill init"); its
    # pvpanic notifier (pvpanic-mmio, loaded by the initrd) tells the VMM. Swiftlet ends with status 2 and says so;
    # QEMU (-action panic=exit-failure) with status 1.
    n=$vmm-panic
    start $vmm $n "$CMDLINE init=/bin/false" || { test_fail "$t.$vmm.start" "no disk to boot"; continue; }
    finish $n
    if [ $vmm = swiftlet ]; then want=2; else want=1; fi
    check "$vmm.panic-exit" "$(cat "$WORK/$n.status")" $want "$(tail -c 300 "$WORK/$n.err") console: $(console_tail $n)"
    check "$vmm.panic-console" "$(grep -c 'Kernel panic - not syncing: Attempted to kill init' "$WORK/$n.console")" 1 "$(console_tail $n)"
    [ $vmm = qemu ] ||
        check "$vmm.panic-message" "$(grep -c '^swiftlet: error: the guest kernel panicked (pvpanic event 0x1); its console output says why$' "$WORK/$n.err")" 1 \
            "$(tail -c 300 "$WORK/$n.err")"
done

# 4. Firecracker's SendCtrlAltDel, through `swiftlet firecracker`'s API (curl, as a Firecracker user would): the
# i8042's keyboard presses Ctrl+Alt+Del, the kernel's AT keyboard driver passes it to systemd, which reboots, and the
# VMM ends with 0. Swiftlet only (QEMU has no Firecracker API).
n=swiftlet-ctrl-alt-del
# (The keyboard needs the DSDT's PNP0303 device: without it, a hardware-reduced kernel has no IRQ 1 to give the
# i8042 driver, whose probe failed with -EINVAL, and the keys reached nothing.)
# It boots from the disk of Swiftlet's poweroff boot, after its clean shutdown: a 7th disk on L1 made QEMU's own
# `systemctl reboot` above hang after "reboot: Restarting system" in both lab runs with 7 (never with 6).
# Natively each boot has a fresh copy anyway.
clean_disk=${clean_disk:-}
if [ -z "${DISTRO_DISKS:-}" ]; then take_disk $n; else disk=$clean_disk; fi
if [ -z "$disk" ]; then
    test_fail "$t.ctrl-alt-del.start" "no disk to boot: Swiftlet's poweroff boot did not end cleanly (above), and its disk is the one this boot reuses"
else
    S=$WORK/$n.api
    rm -f "$S" "$WORK/$n.sock"
    echo "step: swiftlet: boot $n through the Firecracker API from $disk"
    "$SWIFTLET" firecracker --api-sock "$S" >"$WORK/$n.console" 2>"$WORK/$n.err" </dev/null &
    vm=$!
    _i=0
    while [ ! -S "$S" ] && [ $_i -lt 100 ]; do sleep 0.1; _i=$((_i + 1)); done
    fc() { curl -sS --unix-socket "$S" -X PUT "http://localhost$1" -H 'Content-Type: application/json' -d "$2" -o "$WORK/$n.body" -w '%{http_code}' 2>&1; }
    codes=
    codes="$codes $(fc /boot-source "{\"kernel_image_path\": \"$K\", \"initrd_path\": \"$I\", \"boot_args\": \"$CMDLINE\"}")"
    codes="$codes $(fc /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$disk\", \"is_root_device\": false, \"is_read_only\": false}")"
    codes="$codes $(fc /machine-config '{"vcpu_count": 2, "mem_size_mib": 512}')"
    codes="$codes $(fc /network-interfaces/eth0 "{\"iface_id\": \"eth0\", \"host_dev_name\": \"$TAP\", \"guest_mac\": \"$MAC\"}")"
    codes="$codes $(fc /vsock "{\"guest_cid\": $CID, \"uds_path\": \"$WORK/$n.sock\"}")"
    codes="$codes $(fc /actions '{"action_type": "InstanceStart"}')"
    check ctrl-alt-del.api-start "$codes" " 204 204 204 204 204 204" "$(cat "$WORK/$n.body") $(tail -c 300 "$WORK/$n.err")"
    if wait_marker $n; then
        # The keyboard the guest found: atkbd on the i8042's keyboard port, in scan code set 2 untranslated.
        check ctrl-alt-del.keyboard "$(guest swiftlet $n grep -c 'AT Raw Set 2 keyboard' /proc/bus/input/devices)" 1
        check ctrl-alt-del.send "$(fc /actions '{"action_type": "SendCtrlAltDel"}')" 204 "$(cat "$WORK/$n.body")"
        finish $n
        check ctrl-alt-del.exit "$(cat "$WORK/$n.status")" 0 "$(tail -c 300 "$WORK/$n.err") console: $(console_tail $n)"
        check ctrl-alt-del.rebooted "$(grep -c 'reboot: Restarting system' "$WORK/$n.console")" 1 "$(console_tail $n)"
    else
        test_fail "$t.ctrl-alt-del.multi-user" "no SWIFTLET-MULTIUSER on the console: $(tail -c 300 "$WORK/$n.err") console: $(console_tail $n 600)"
        finish $n
    fi
fi

# 5. root= naming a disk that does not exist: the initrd's own message. initramfs-tools waits 30 s for the device,
# says the device does not exist and, with panic=-1, reboots (its script, not a kernel panic: the VMM sees a reboot
# and ends with 0; without panic= it would wait at its shell on the console). Swiftlet only: QEMU runs the same script.
n=swiftlet-missing-root
start swiftlet $n "root=/dev/vdz rw console=ttyS0 net.ifnames=0 panic=-1 quiet" none
finish $n
check missing-root.exit "$(cat "$WORK/$n.status")" 0 "$(tail -c 300 "$WORK/$n.err") console: $(console_tail $n)"
check missing-root.guest-message "$(grep -c 'ALERT!  /dev/vdz does not exist' "$WORK/$n.console")" 1 "$(console_tail $n 600)"
exit 0
