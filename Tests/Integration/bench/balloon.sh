# Balloon benchmark, run where guests boot (the lab's L1 or a KVM host).
#
# balloon_reclaim_mib_s: how fast inflating gives memory back to the host. Swiftlet (--balloon, its control socket)
# and QEMU's microvm with virtio-balloon-device (driven through QMP on a loopback TCP port) boot the same kernel,
# initramfs and command line (256 MiB, 1 vCPU); the guest (guest/scenarios/balloon-inflate.sh) writes 180 MiB to a
# tmpfs and frees it, so that its free memory is resident in the host, then the host asks for a 128 MiB balloon
# and samples the VMM's resident set (/proc/PID/statm, read by the shell without forking) every 20 ms or so.
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

# now_cs: /proc/uptime in centiseconds, with shell builtins only.
# (The uptime of a machine running guests is past 1 s: no leading zero to read as octal.)
now_cs() { read -r _up _ </proc/uptime; echo "${_up%.*}${_up#*.}"; }
qmp() { # JSON...: sends qmp_capabilities and the commands to QEMU's QMP; prints the replies
    { echo '{"execute":"qmp_capabilities"}'; for _c in "$@"; do echo "$_c"; done; sleep 0.5; } |
        nc 127.0.0.1 $qmp_port 2>/dev/null
}

# measure VMM PID LOG SET_COMMAND...: waits for the guest's "touched" line, runs SET_COMMAND, samples the resident
# set; prints BENCH-SAMPLE balloon_reclaim_mib_s. Then deflates (DEFLATE_COMMAND in $deflate) so the guest ends.
measure() {
    _vmm=$1 _pid=$2 _log=$3
    shift 3
    _i=0
    while [ $_i -lt 600 ] && ! grep -q "balloon: touched " "$_log" 2>/dev/null; do sleep 0.2; _i=$((_i + 1)); done
    grep -q "balloon: touched " "$_log" || { echo "balloon bench: $_vmm: the guest never touched its memory"; return 1; }
    sleep 1
    read -r _ _res0 _ <"/proc/$_pid/statm"
    "$@" >/dev/null
    _first= _done= _n=0
    while [ $_n -lt 3000 ]; do
        read -r _ _res _ <"/proc/$_pid/statm" || break
        _freed=$(((_res0 - _res) * 4))   # KiB
        if [ -z "$_first" ] && [ $_freed -ge 1024 ]; then _first=$(now_cs); fi
        if [ $_freed -ge $((120 * 1024)) ]; then _done=$(now_cs); break; fi
        [ $((_n % 100)) -ne 0 ] || echo "step: $_vmm: released $((_freed / 1024)) MiB"
        sleep 0.02
        _n=$((_n + 1))
    done
    if [ -n "$_done" ] && [ -n "$_first" ]; then
        _cs=$((_done - _first))
        [ $_cs -gt 0 ] || _cs=1
        echo "step: $_vmm: 119 MiB released in $_cs cs"
        echo "BENCH-SAMPLE metric=balloon_reclaim_mib_s vmm=$_vmm value=$(awk -v cs=$_cs 'BEGIN { printf "%.1f", 119 * 100 / cs }') unit=MiB/s"
    else
        echo "balloon bench: $_vmm released only $((_freed / 1024)) MiB"
    fi
}

swiftlet_round() {
    _log=$work/swiftlet.console
    rm -f "$_log" "$work/ctl"
    "$SWIFTLET" run --kernel "$GUEST/bzImage" --initrd "$INITRD" --memory 256M --cpus 1 --console "$_log" \
        --balloon on --balloon-socket "$work/ctl" --cmdline "$cmdline" 2>"$_log.err" &
    _vm=$!
    sleep 0.5
    measure swiftlet $_vm "$_log" "$SWIFTLET" balloon "$work/ctl" set 128
    "$SWIFTLET" balloon "$work/ctl" set 0 >/dev/null 2>&1
    HEARTBEAT_LOG=$_log heartbeat wait $_vm
    echo "step: swiftlet exited $?"
}

qemu_round() {
    _log=$work/qemu.console
    rm -f "$_log"
    "$QEMU" -M microvm,acpi=off -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none \
        -serial "file:$_log" -no-reboot -L "$QEMU_FIRMWARE" -device virtio-balloon-device \
        -qmp "tcp:127.0.0.1:$qmp_port,server=on,wait=off" \
        -kernel "$GUEST/bzImage" -initrd "$INITRD" -append "$cmdline" 2>"$_log.err" &
    _vm=$!
    sleep 0.5
    # QEMU's "balloon" takes the guest's new logical size: 256 - 128 MiB.
    measure qemu $_vm "$_log" qmp "{\"execute\":\"balloon\",\"arguments\":{\"value\":$((128 << 20))}}"
    qmp "{\"execute\":\"balloon\",\"arguments\":{\"value\":$((256 << 20))}}" >/dev/null
    HEARTBEAT_LOG=$_log heartbeat wait $_vm
    echo "step: qemu exited $?"
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
        --balloon "$2" --cmdline "console=ttyS0 reboot=t panic=-1 quiet swiftlet.test=balloon-free swiftlet.balloon.alloc=200 swiftlet.balloon.after=14" \
        2>"$_log.err" &
    _vm=$!
    _i=0
    while [ $_i -lt 600 ] && ! grep -q "balloon: freed " "$_log" 2>/dev/null; do sleep 0.2; _i=$((_i + 1)); done
    sleep 10
    _rss=$(awk -v want=$((512 * 1024)) '/^[0-9a-f]+-[0-9a-f]+ / { cur = 0; next }
        $1 == "Size:" { cur = ($2 == want) } cur && $1 == "Rss:" { print $2; exit }' "/proc/$_vm/smaps" 2>/dev/null)
    [ -z "$_rss" ] || echo "BENCH-SAMPLE metric=$1 vmm=swiftlet value=$((_rss / 1024)) unit=MiB"
    HEARTBEAT_LOG=$_log heartbeat wait $_vm
    echo "step: swiftlet exited $? (free page reporting ${2#free-page-reporting=})"
}
round=0
while [ $round -lt "$runs" ]; do
    fpr_run fpr_rss_after_free_mib free-page-reporting=on
    fpr_run fpr_rss_after_free_mib_off free-page-reporting=off
    round=$((round + 1))
done
