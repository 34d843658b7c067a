# vsock benchmark, run where guests boot (the lab's L1 or a KVM host). The same guest (the full initramfs, 256 MiB,
# 1 vCPU, its agent on vsock port 1024) runs under
#   swiftlet   --vsock socket=S --agent: the userspace device; the host end is the hybrid Unix socket S
#   qemu       -device vhost-vsock-device,guest-cid=3: the kernel's vhost-vsock; the host end is AF_VSOCK
# and vsockpeer (Tests/Integration/tools/vsockpeer.c, in the guest and here) moves VSOCK_MIB (default 256) MiB each
# way and runs commands through the agent (its `exec` speaks the agent protocol over either transport).
# Per round, alternating the order, with the stream's checksum compared at both ends:
#   vsock_g2h_mbps      guest -> host stream, the host receiver's rate, Mbit/s
#   vsock_h2g_mbps      host -> guest stream, the guest receiver's rate, Mbit/s
#   exec_roundtrip_ms   `true` through the agent on a running VM: connect, EXEC, EXIT; median of 100 (vsockpeer)
#   exec_cli_ms         `swiftlet exec --attach S -- true`, process start to exit (swiftlet only; 10 per round)
#   sandbox_cold_ms     `swiftlet exec -- true` (boot, run, tear down; tiny initramfs) against QEMU booting the
#                       same kernel and tiny initramfs to init and powering off; 3 each per round
. "$INTEGRATION/lib.sh"
runs=${RUNS:-3}
size=${VSOCK_MIB:-256}M
work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-bench-vsock.XXXXXX") || exit 1
S=$work/v.sock
trap 'kill $vmpid 2>/dev/null; rm -rf "$work"' EXIT
status=0
vmpid=

start_vm() { # swiftlet|qemu
    case $1 in
        swiftlet)
            "$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs-full.cpio" --memory 256M --cpus 1 \
                --console "$work/$1.console" --cmdline "$SWIFTLET_CMDLINE_BASE" --vsock "socket=$S" --agent 2>"$work/$1.err" &
            agent=hybrid:$S:1024 g2h_listen=unix:${S}_5000 h2g_connect=hybrid:$S:6000 ;;
        qemu)
            "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none \
                -serial "file:$work/$1.console" -no-reboot -L "$QEMU_FIRMWARE" -device vhost-vsock-device,guest-cid=3 \
                -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs-full.cpio" \
                -append "$QEMU_CMDLINE_BASE swiftlet.agent=1024" 2>"$work/$1.err" &
            agent=vsock:3:1024 g2h_listen=vsock:5000 h2g_connect=vsock:3:6000 ;;
    esac
    vmpid=$!
    _i=0
    while ! "$VSOCKPEER" connect "$agent" exec -- true 2>/dev/null; do
        _i=$((_i + 1))
        if [ $_i -ge 150 ] || ! kill -0 "$vmpid" 2>/dev/null; then
            echo "vsock bench: $1: the agent never answered: $(tail -c 300 "$work/$1.console") $(tail -c 300 "$work/$1.err")"
            return 1
        fi
        sleep 0.2
    done
}

stop_vm() {
    "$VSOCKPEER" connect "$agent" exec -- reboot -f >/dev/null 2>&1
    _i=0
    while kill -0 "$vmpid" 2>/dev/null && [ $_i -lt 100 ]; do sleep 0.1; _i=$((_i + 1)); done
    kill "$vmpid" 2>/dev/null
    wait "$vmpid" 2>/dev/null
    vmpid=
}

# field LINE NAME: the value of NAME=... in a vsockpeer line
field() { echo "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p"; }

streams() { # VMM
    echo "step: $1: guest -> host, $size"
    "$VSOCKPEER" listen "$g2h_listen" recv >"$work/g2h.host" 2>&1 &
    _peer=$!
    sleep 0.3
    _guest=$("$VSOCKPEER" connect "$agent" exec -- vsockpeer connect vsock:2:5000 send "$size" 2>&1)
    wait "$_peer"
    _host=$(cat "$work/g2h.host")
    if [ -n "$(field "$_host" fnv)" ] && [ "$(field "$_host" fnv)" = "$(field "$_guest" fnv)" ] && [ "$(field "$_host" bytes)" = "$(field "$_guest" bytes)" ]; then
        echo "BENCH-SAMPLE metric=vsock_g2h_mbps vmm=$1 value=$(field "$_host" mbps) unit=Mbit/s"
    else
        echo "vsock bench: $1 g2h: the ends disagree: guest '$_guest' host '$_host'"; status=1
    fi

    echo "step: $1: host -> guest, $size"
    "$VSOCKPEER" connect "$agent" exec -- vsockpeer listen vsock:6000 recv >"$work/h2g.guest" 2>&1 &
    _listener=$!
    _i=0
    while :; do
        "$VSOCKPEER" connect "$h2g_connect" send "$size" >"$work/h2g.host" 2>"$work/h2g.err" && break
        _i=$((_i + 1))
        [ $_i -lt 100 ] && grep -q refused "$work/h2g.err" || break
        sleep 0.1
    done
    wait "$_listener"
    _guest=$(cat "$work/h2g.guest") _host=$(cat "$work/h2g.host")
    if [ -n "$(field "$_host" fnv)" ] && [ "$(field "$_host" fnv)" = "$(field "$_guest" fnv)" ] && [ "$(field "$_host" bytes)" = "$(field "$_guest" bytes)" ]; then
        echo "BENCH-SAMPLE metric=vsock_h2g_mbps vmm=$1 value=$(field "$_guest" mbps) unit=Mbit/s"
    else
        echo "vsock bench: $1 h2g: the ends disagree: guest '$_guest' host '$_host' $(cat "$work/h2g.err")"; status=1
    fi

    echo "step: $1: 100 execs of true"
    _line=$("$VSOCKPEER" connect "$agent" exec -n 100 -- true 2>&1)
    _ms=$(field "$_line" median_ms)
    if [ -n "$_ms" ]; then echo "BENCH-SAMPLE metric=exec_roundtrip_ms vmm=$1 value=$_ms unit=ms"; else
        echo "vsock bench: $1 exec: $_line"; status=1
    fi
    if [ "$1" = swiftlet ]; then
        _j=0
        while [ $_j -lt 10 ]; do
            _line=$("$VMMBENCH" --marker NEVER-PRINTED --timeout 30 -- "$SWIFTLET" exec --attach "$S" -- true 2>&1 | grep '^vmmbench:')
            _ms=$(echo "$_line" | sed -n 's/.*exit_ms=\([0-9]*\).*status=0.*/\1/p')
            if [ -n "$_ms" ]; then echo "BENCH-SAMPLE metric=exec_cli_ms vmm=swiftlet value=$_ms unit=ms"; else
                echo "vsock bench: swiftlet exec --attach: $_line"; status=1
            fi
            _j=$((_j + 1))
        done
    fi
}

cold() { # VMM
    case $1 in
        swiftlet) _line=$("$VMMBENCH" --marker NEVER-PRINTED --guest-mib 256 --timeout 60 -- "$SWIFTLET" exec \
                      --kernel "$GUEST/bzImage" --initrd "$GUEST/initramfs.cpio" --memory 256M -- true 2>&1 | grep '^vmmbench:') ;;
        qemu) _line=$("$VMMBENCH" --guest-mib 256 --timeout 60 -- "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host \
                  -m 256 -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -L "$QEMU_FIRMWARE" \
                  -kernel "$GUEST/bzImage" -initrd "$GUEST/initramfs.cpio" \
                  -append "console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=ready" 2>&1 | grep '^vmmbench:') ;;
    esac
    _ms=$(echo "$_line" | sed -n 's/.*exit_ms=\([0-9]*\).*status=0.*/\1/p')
    if [ -n "$_ms" ]; then echo "BENCH-SAMPLE metric=sandbox_cold_ms vmm=$1 value=$_ms unit=ms"; else
        echo "vsock bench: $1 cold: $_line"; status=1
    fi
}

round=1
while [ $round -le "$runs" ]; do
    if [ $((round % 2)) = 1 ]; then order="swiftlet qemu"; else order="qemu swiftlet"; fi
    for vmm in $order; do
        echo "step: vsock bench round $round/$runs: $vmm"
        if start_vm "$vmm"; then streams "$vmm"; else status=1; fi
        stop_vm
        for k in 1 2 3; do cold "$vmm"; done
    done
    round=$((round + 1))
done
exit $status
