#!/bin/sh
# Lab job: the hostile guest under QEMU's microvm, with the devices Swiftlet's suite gives it (virtio-blk, virtio-net
# on a TAP with the peer 10.0.2.2, vhost-vsock with echo listeners on host ports 5000-5005, virtio-balloon), for the
# per-case comparison in the appendix of docs/SECURITY.md. A reference, not a test: nothing here passes or fails.
#
#   Tests/Integration/lab/lab.py run --payload .build/lab-payload --script Tests/Integration/hostile/qemu-reference.sh
# (the payload of `make lab`, which carries guest/hostile.elf). reference-job.sh runs it after a Swiftlet run of the
# same guest, into one log for reference-table.py.
#
# QEMU's devices stop serving ("broken") or QEMU exits on some malformed rings. The guest prints "HOSTILE begin
# <case>" before each case (hostile.trace=1), so when QEMU exits before the summary line, the case it died in is the
# last one begun: it is reported ("qemu-ref: exited in case=...") and the run starts again with it skipped, up to
# ATTEMPTS times (a QEMU still running after QEMU_TIMEOUT is killed, and that case skipped the same way). Waits are
# shorter than in Swiftlet's suite (hostile.wait=WAIT, default 40000 polls): a broken QEMU device makes many waits
# run out, and every poll is a VM exit to QEMU. QEMU's own messages (stderr) go into the same stream as the console, so they follow the case that
# caused them. Every output line of the guest and QEMU is printed here with the prefix "qemu-ref: ".
ELF=${ELF:-/job/guest/hostile.elf}
VSOCKPEER=${VSOCKPEER:-/job/bin/vsockpeer}
ATTEMPTS=${ATTEMPTS:-12}
TAP=hostile0
W=/tmp/qemu-hostile
mkdir -p "$W"
[ -f "$ELF" ] || { echo "qemu-ref: no $ELF"; exit 2; }

skip=${SKIP:-}
attempt=0
while [ $attempt -lt "$ATTEMPTS" ]; do
    attempt=$((attempt + 1))
    dd if=/dev/urandom of="$W/disk.img" bs=1M count=8 2>/dev/null
    ip link set "$TAP" down 2>/dev/null; tunctl -d "$TAP" >/dev/null 2>&1
    tunctl -t "$TAP" >/dev/null && ip addr add 10.0.2.2/24 dev "$TAP" && ip link set "$TAP" up
    peers=
    for p in 5000 5001 5002 5003 5004 5005; do
        "$VSOCKPEER" listen "vsock:$p" echo >/dev/null 2>&1 &
        peers="$peers $!"
    done
    lab-step "qemu-hostile attempt $attempt${skip:+ (skipping $skip)}"
    : >"$W/out"
    timeout "${QEMU_TIMEOUT:-1200}" qemu-system-x86_64 \
        -M microvm,acpi=off,auto-kernel-cmdline=on -enable-kvm -cpu host -m 256 -smp 1 \
        -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot -L /usr/share/qemu \
        -global virtio-mmio.force-legacy=false \
        -kernel "$ELF" -append "hostile.host=1 hostile.trace=1 hostile.ram=256M hostile.wait=${WAIT:-40000}${skip:+ hostile.skip=$skip}" \
        -drive id=d0,file="$W/disk.img",format=raw,if=none -device virtio-blk-device,drive=d0 \
        -netdev tap,id=n0,ifname="$TAP",script=no,downscript=no,vhost=off \
        -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56 \
        -device vhost-vsock-device,guest-cid=3 -device virtio-balloon-device >"$W/out" 2>&1 &
    qemu=$!
    # The console goes to a file: a heartbeat with its last line keeps the lab's silence watchdog content.
    n=0
    while kill -0 "$qemu" 2>/dev/null; do
        sleep 3
        n=$((n + 3))
        echo "LAB-HEARTBEAT qemu-hostile ${n}s: $(tail -n 1 "$W/out" | tr -d '\r' | cut -c1-100)"
    done
    wait "$qemu"
    rc=$?
    # shellcheck disable=SC2086  # a list of pids
    kill $peers 2>/dev/null
    tr -d '\r' <"$W/out" | sed 's/^/qemu-ref: /'
    echo "qemu-ref: attempt=$attempt exit=$rc"
    grep -q '^HOSTILE done ' "$W/out" && break
    last=$(tr -d '\r' <"$W/out" | sed -n 's/^HOSTILE begin //p' | tail -n 1)
    if [ -z "$last" ]; then echo "qemu-ref: exited before any case (exit $rc)"; break; fi
    if grep -q 'terminating on signal 15' "$W/out"; then
        echo "qemu-ref: timed out in case=$last (killed after ${QEMU_TIMEOUT:-1200} s)"
    else
        echo "qemu-ref: exited in case=$last (exit $rc)"
    fi
    skip=${skip:+$skip,}$last
done
ip link set "$TAP" down 2>/dev/null; tunctl -d "$TAP" >/dev/null 2>&1
echo "qemu-ref: finished after $attempt attempt(s)${skip:+; skipped: $skip}"
exit 0
