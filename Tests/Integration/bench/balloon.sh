# Balloon benchmark, run where guests boot (the lab's L1 or a KVM host).
#
# balloon_reclaim_mib_s: how fast inflating gives memory back to the host. Swiftlet (--balloon, its control socket)
# and QEMU's microvm with virtio-balloon-device (driven through QMP on a loopback TCP port) boot the same kernel,
# initramfs and command line (256 MiB, 1 vCPU); the guest (guest/scenarios/balloon-inflate.sh) writes 180 MiB to a
# tmpfs and frees it, so that its free memory is resident in the host, then the host asks for a 128 MiB balloon
# and Tests/Integration/tools/rsswatch samples the VMM's resident set (/proc/PID/statm) every millisecond.
# The figure is 119 MiB over the time from the first MiB released to the 120th: the device's release path (the
# driver's requests, the VMM's handling, madvise), without the control path's start-up (swiftlet's client process,
# nc for QMP). RUNS rounds, the VMMs' order alternating.
#
# fpr_rss_after_free_mib (Swiftlet only): the resident memory of a 512 MiB guest's RAM (its smaps mapping) 10 s
# after the guest wrote 200 MiB to a tmpfs and removed it, with free page reporting on and, as
# fpr_rss_after_free_mib_off, off.
. "$INTEGRATION/lib.sh"
runs=${RUNS:-3}
cmdline="console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=balloon-inflate swiftlet.balloon.touch=180"
qmp_port=4444
work=$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-bench-balloon.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
WORK=$work
INITRD=$GUEST/initramfs.cpio

RSSWATCH=$(dirname "$VMMBENCH")/rsswatch
qmp() { # JSON...: sends qmp_capabilities and the commands to QEMU's QMP (busybox nc on loopback TCP)
    { echo '{"execute":"qmp_capabilities"}'; for _c in "$@"; do echo "$_c"; done; sleep 0.5; } |
        nc 127.0.0.1 $qmp_port 2>/dev/null
}
# wait_line LOG PATTERN SECONDS: waits for a console line, printing a step line every 2 s (the lab's watchdog).
wait_line() {
    _i=0
    while [ $_i -lt $(($3 * 5)) ] && ! grep -q "$2" "$1" 2>/dev/null; do
        sleep 0.2
        _i=$((_i + 1))
        [ $((_i % 10)) -ne 0 ] || echo "step: waiting for '$2' ($((_i / 5)) s): $(tail -n 1 "$1" 2>/dev/null | tr -d '\r' | cut -c1-80)"
    done
    grep -q "$2" "$1" 2>/dev/null
}
# stop_vm PID: ends the VM (SIGTERM: Swiftlet stops cleanly and removes its socket; QEMU exits) and waits for it.
stop_vm() {
    kill "$1" 2>/dev/null
    wait "$1"
    echo "step: VMM stopped ($?)"
}

# measure VMM PID LOG SET_COMMAND...: waits for the guest's "touched" line, starts rsswatch on the VMM, runs
# SET_COMMAND, and prints BENCH-SAMPLE balloon_reclaim_mib_s from rsswatch's times.
measure() {
    _vmm=$1 _pid=$2 _log=$3
    shift 3
    wait_line "$_log" "balloon: touched " 180 || { echo "balloon bench: $_vmm: the guest never touched its memory"; return 1; }
    sleep 1
    "$RSSWATCH" "$_pid" 1024 $((120 * 1024)) 8 >"$work/watch" &
    _watch=$!
    while ! grep -q ready "$work/watch" 2>/dev/null; do sleep 0.05; done
    "$@" >/dev/null
    wait $_watch
    _line=$(grep first_ms "$work/watch")
    echo "step: $_vmm: $_line"
    _first=$(echo "$_line" | sed -n 's/.*first_ms=\([0-9.-]*\).*/\1/p')
    _done=$(echo "$_line" | sed -n 's/.*done_ms=\([0-9.-]*\).*/\1/p')
    case $_done in
        -1|"") echo "balloon bench: $_vmm released too little: $_line" ;;
        *) echo "BENCH-SAMPLE metric=balloon_reclaim_mib_s vmm=$_vmm value=$(awk -v a="$_first" -v b="$_done" 'BEGIN { d = b - a; if (d < 1) d = 1; printf "%.1f", 119 * 1000 / d }') unit=MiB/s" ;;
    esac
}

swiftlet_round() {
    _log=$work/swiftlet.console
    rm -f "$_log" "$work/ctl"
    "$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$INITRD" --memory 256M --cpus 1 --console "$_log" \
        --balloon on --balloon-socket "$work/ctl" --cmdline "$cmdline" 2>"$_log.err" &
    _vm=$!
    measure swiftlet $_vm "$_log" "$SWIFTLET" balloon "$work/ctl" set 128
    stop_vm $_vm
}

qemu_round() {
    _log=$work/qemu.console
    rm -f "$_log"
    "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none \
        -serial "file:$_log" -no-reboot -L "$QEMU_FIRMWARE" -device virtio-balloon-device \
        -qmp "tcp:127.0.0.1:$qmp_port,server=on,wait=off" \
        -kernel "$GUEST/bzImage" -initrd "$INITRD" -append "$cmdline" 2>"$_log.err" &
    _vm=$!
    # QEMU's "balloon" takes the guest's new logical size: 256 - 128 MiB.
    measure qemu $_vm "$_log" qmp "{\"execute\":\"balloon\",\"arguments\":{\"value\":$((128 << 20))}}"
    stop_vm $_vm
}

round=0
while [ $round -lt "$runs" ]; do
    if [ $((round % 2)) -eq 0 ]; then swiftlet_round; qemu_round; else qemu_round; swiftlet_round; fi
    round=$((round + 1))
done

# --- free page reporting: resident memory after the guest frees 200 MiB ------------------------------------------------
fpr_run() { # METRIC BALLOON_OPTIONS
    _log=$work/fpr.console
    rm -f "$_log"
    "$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$INITRD" --memory 512M --cpus 1 --console "$_log" \
        --balloon "$2" --cmdline "console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=balloon-free swiftlet.balloon.alloc=200 swiftlet.balloon.after=30" \
        2>"$_log.err" &
    _vm=$!
    wait_line "$_log" "balloon: freed " 180
    _i=0
    while [ $_i -lt 10 ]; do sleep 1; _i=$((_i + 1)); echo "step: fpr: ${_i}s after the free"; done
    _rss=$(awk -v want=$((512 * 1024)) '/^[0-9a-f]+-[0-9a-f]+ / { cur = 0; next }
        $1 == "Size:" { cur = ($2 == want) } cur && $1 == "Rss:" { print $2; exit }' "/proc/$_vm/smaps" 2>/dev/null)
    [ -z "$_rss" ] || echo "BENCH-SAMPLE metric=$1 vmm=swiftlet value=$((_rss / 1024)) unit=MiB"
    stop_vm $_vm
}
round=0
while [ $round -lt "$runs" ]; do
    fpr_run fpr_rss_after_free_mib free-page-reporting=on
    fpr_run fpr_rss_after_free_mib_off free-page-reporting=off
    round=$((round + 1))
done
